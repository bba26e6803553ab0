// Package deadletter reads the buffer's dead letters (the records Kafka
// will never accept as they are, kept under PREFIX.dlq.TOPIC with their
// reason) and moves them back into the buffer once their cause is fixed,
// so that the resender delivers them. It backs the resender's dead-letters
// command and its spillway_dead_letters gauge.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// Letter is one dead letter.
type Letter struct {
	Seq     uint64 // its sequence in the stream
	Subject string
	Topic   string // the Kafka topic
	Mirror  string // the mirror cluster it was for; "" for the primary
	Reason  string // the reason code (too_large, invalid, ...)
	Detail  string // the whole Spillway-Reason header
	Time    time.Time
	// Record is the stored record; zero when Err says it cannot be read.
	Record record.Record
	Err    error

	data []byte // the message as stored
}

// Filter selects dead letters; an empty field selects all.
type Filter struct {
	Topic  string
	Reason string
	// Mirror selects one mirror's dead letters; Primary only the primary
	// cluster's; "" both.
	Mirror string
}

// Primary is the Filter.Mirror value that selects the primary cluster's
// dead letters only.
const Primary = "-"

func (f Filter) match(l *Letter) bool {
	switch {
	case f.Topic != "" && f.Topic != l.Topic:
		return false
	case f.Reason != "" && f.Reason != l.Reason:
		return false
	case f.Mirror == Primary && l.Mirror != "":
		return false
	case f.Mirror != "" && f.Mirror != Primary && f.Mirror != l.Mirror:
		return false
	}
	return true
}

// Store reads and moves the dead letters of one stream.
type Store struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	name     string
	subjects spill.Subjects
}

// Open returns the Store of the stream c names.
func Open(ctx context.Context, js jetstream.JetStream, c config.WAL) (*Store, error) {
	s, err := js.Stream(ctx, c.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", c.Stream, err)
	}
	return &Store{js: js, stream: s, name: c.Stream, subjects: spill.Subjects{Prefix: c.SubjectPrefix}}, nil
}

// filterSubject is the narrowest subject filter for f.
func (s *Store) filterSubject(f Filter) string {
	switch {
	case f.Mirror == Primary && f.Topic != "":
		return s.subjects.For(spill.DeadLetter, f.Topic)
	case f.Mirror != "" && f.Mirror != Primary && f.Topic != "":
		return s.subjects.For(spill.MirrorDeadLetter(f.Mirror), f.Topic)
	case f.Mirror != "" && f.Mirror != Primary:
		return s.subjects.All(spill.MirrorDeadLetter(f.Mirror))
	}
	return s.subjects.All(spill.DeadLetter)
}

// Walk calls fn with each dead letter f selects, oldest first, until fn
// returns false or an error. The stream is a work queue, where a consumer
// that overlaps another is refused, so it reads messages by sequence.
func (s *Store) Walk(ctx context.Context, f Filter, fn func(*Letter) (bool, error)) error {
	filter := s.filterSubject(f)
	for seq := uint64(1); ; {
		m, err := s.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read dead letter at or after sequence %d: %w", seq, err)
		}
		seq = m.Sequence + 1
		l := s.letter(m)
		if !f.match(l) {
			continue
		}
		more, err := fn(l)
		if err != nil || !more {
			return err
		}
	}
}

// letter reads a dead-letter message.
func (s *Store) letter(m *jetstream.RawStreamMsg) *Letter {
	l := &Letter{Seq: m.Sequence, Subject: m.Subject, Time: m.Time, Detail: m.Header.Get(spill.HeaderReason), data: m.Data}
	var token string
	token, l.Mirror = s.parseSubject(m.Subject)
	l.Record, l.Err = spill.Decode(m.Data)
	l.Topic = m.Header.Get(spill.HeaderTopic)
	if l.Topic == "" {
		l.Topic = l.Record.Topic
	}
	if l.Topic == "" {
		l.Topic = token // spill.NoTopic when the drain did not know it
	}
	l.Reason = ReasonCode(l.Detail, l.Mirror)
	return l
}

// parseSubject returns a dead letter's topic (from its subject) and its
// mirror: PREFIX.dlq.TOPIC or PREFIX.dlq.mirror.NAME.TOPIC. A topic's dots
// are "%2E" in a subject, so the topic is always the last token.
func (s *Store) parseSubject(subject string) (topic, mirror string) {
	rest := strings.TrimPrefix(subject, s.subjects.Prefix+"."+string(spill.DeadLetter)+".")
	if m, ok := strings.CutPrefix(rest, "mirror."); ok {
		if name, t, ok := strings.Cut(m, "."); ok && !strings.Contains(t, ".") {
			return strings.ReplaceAll(t, "%2E", "."), name
		}
	}
	return strings.ReplaceAll(rest, "%2E", "."), ""
}

// ReasonCode is the reason code that starts a Spillway-Reason header
// ("too_large: Kafka refused ..."), after the "mirror NAME: " of a
// mirror's dead letter; "unknown" when there is none.
func ReasonCode(header, mirror string) string {
	if mirror != "" {
		header = strings.TrimPrefix(header, "mirror "+mirror+": ")
	}
	code, _, _ := strings.Cut(header, ":")
	if code = strings.TrimSpace(code); code == "" || strings.ContainsAny(code, " \t") {
		return "unknown"
	}
	return code
}

// Count is how many dead letters one topic holds for one reason.
type Count struct {
	Topic  string `json:"topic"`
	Mirror string `json:"mirror,omitempty"`
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// Summary counts the dead letters f selects by topic, mirror and reason,
// in the order each group first appears.
func (s *Store) Summary(ctx context.Context, f Filter) ([]Count, error) {
	var out []Count
	index := map[Count]int{}
	err := s.Walk(ctx, f, func(l *Letter) (bool, error) {
		k := Count{Topic: l.Topic, Mirror: l.Mirror, Reason: l.Reason}
		i, ok := index[k]
		if !ok {
			i = len(out)
			index[k] = i
			out = append(out, k)
		}
		out[i].Count++
		return true, nil
	})
	return out, err
}

// List returns at most n (all when n <= 0) of the dead letters f selects,
// oldest first.
func (s *Store) List(ctx context.Context, f Filter, n int) ([]*Letter, error) {
	var out []*Letter
	err := s.Walk(ctx, f, func(l *Letter) (bool, error) {
		out = append(out, l)
		return n <= 0 || len(out) < n, nil
	})
	return out, err
}

// MoveResult is what Move did.
type MoveResult struct {
	Moved int `json:"moved"`
	// Skipped letters cannot go back: their record cannot be read, or
	// its topic is unknown. They stay where they are.
	Skipped int `json:"skipped"`
}

// Move puts at most n (all when n <= 0) of the dead letters f selects
// back into the buffer, oldest first: a primary cluster's on
// PREFIX.spill.TOPIC, which the resender drains, a mirror's on
// PREFIX.mirror.NAME.TOPIC. Each dead letter is deleted only after
// JetStream acknowledged its copy, so a failure or a crash mid-move loses
// nothing. The copy's message id is derived from the dead letter's
// sequence: a move run again within the stream's duplicate window
// (2 minutes) after a crash between the two steps stores the copy once;
// later, it is stored twice and Kafka may get the record twice, with the
// same spillway-id. Move stops at the first error, which it returns with
// what it did so far.
func (s *Store) Move(ctx context.Context, f Filter, n int) (MoveResult, error) {
	var res MoveResult
	err := s.Walk(ctx, f, func(l *Letter) (bool, error) {
		if l.Err != nil || l.Topic == "" || l.Topic == spill.NoTopic {
			res.Skipped++
			return true, nil
		}
		if err := s.move(ctx, l); err != nil {
			return false, err
		}
		res.Moved++
		return n <= 0 || res.Moved < n, nil
	})
	return res, err
}

func (s *Store) move(ctx context.Context, l *Letter) error {
	kind := spill.Spilled
	if l.Mirror != "" {
		kind = spill.Mirror(l.Mirror)
	}
	rec := l.Record
	rec.Topic = l.Topic
	subject := s.subjects.ForRecord(kind, &rec)
	if err := s.publishCopy(ctx, l, subject); err != nil {
		return fmt.Errorf("put dead letter %d back on %s (it stays a dead letter): %w", l.Seq, subject, err)
	}
	if err := s.stream.DeleteMsg(ctx, l.Seq); err != nil {
		return fmt.Errorf("dead letter %d is back on %s but could not be deleted (run the move again within 2 minutes, or it will be sent twice): %w", l.Seq, subject, err)
	}
	return nil
}

// publishCopy stores l's record on subject, with a message id derived
// from l's sequence, and returns once JetStream acknowledged it.
func (s *Store) publishCopy(ctx context.Context, l *Letter, subject string) error {
	msg := &nats.Msg{Subject: subject, Data: l.data, Header: nats.Header{spill.HeaderTopic: []string{l.Topic}}}
	msgID := l.Record.ID + ":moved-from-dlq-" + strconv.FormatUint(l.Seq, 10)
	_, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(s.name))
	return err
}

// Held is the number of dead letters held per subject, as the stream
// counts them (one request, whatever their number).
func (s *Store) Held(ctx context.Context) (map[string]uint64, error) {
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(s.subjects.All(spill.DeadLetter)))
	if err != nil {
		return nil, err
	}
	return info.State.Subjects, nil
}
