package spill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// InProcess is a NATS server running in this process, which clients reach
// without a socket: the ingest's embedded one (package embeddednats, whose
// *server.Server has these methods). An interface, so that this package,
// which the forwarder and resender link, does not link the NATS server.
type InProcess interface {
	nats.InProcessConnProvider
	ClientURL() string
}

// Connect connects to the embedded server (in-process, when embedded is
// not nil) or to the external JetStream in c.NATS, and creates or updates
// the stream, trying each again (Retry) while no NATS server answers or
// JetStream does not, until ctx ends; a configuration error (IsConfigError)
// ends it at once. The connection reconnects forever.
func Connect(ctx context.Context, c config.WAL, embedded InProcess, name string, logger *slog.Logger) (nc *nats.Conn, js jetstream.JetStream, err error) {
	r := Retry{Step: "connect to NATS", Logger: logger}
	if err := r.Run(ctx, func(context.Context) (err error) {
		nc, js, err = Dial(c, embedded, name, logger)
		return err
	}); err != nil {
		return nil, nil, err
	}
	r = Retry{Step: "stream " + c.Stream, Logger: logger}
	if err := r.Run(ctx, func(ctx context.Context) error { return EnsureStream(ctx, js, c) }); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// Dial is one try of Connect without touching the stream: for a tool that
// reads the buffer the services made, and must not change its settings,
// and for a service that tries it again itself (Retry). When no server
// answers it fails at once (connection refused) or after nats.go's dial
// timeout (2 s a server); IsConfigError says whether the error is one that
// no retry can change (credentials refused, a credentials or TLS file that
// cannot be used).
//
// It signs in with the credentials of the embedded server
// (EmbeddedCredentials: the ingest's in-process connection, and the
// forwarder, resender and dead-letters command over producer.wal.listen),
// or with producer.wal.nats.credentials for an external JetStream.
func Dial(c config.WAL, embedded InProcess, name string, logger *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: we closed the connection
				logger.Warn("disconnected from NATS", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { logger.Info("reconnected to NATS", "url", nc.ConnectedUrl()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			logger.Warn("NATS connection error", "error", err)
		}),
	}
	var url string
	creds := c.NATS.Credentials
	switch {
	case embedded != nil:
		url = embedded.ClientURL()
		opts = append(opts, nats.InProcessServer(embedded))
		creds = EmbeddedCredentials(c)
	case len(c.NATS.URLs) > 0:
		url = strings.Join(c.NATS.URLs, ",")
		if c.NATS.TLS.CAFile != "" || c.NATS.TLS.CertFile != "" {
			tc, err := c.NATS.TLS.ClientConfig()
			if err != nil {
				return nil, nil, configError{fmt.Errorf("producer.wal.nats.tls: %w", err)}
			}
			opts = append(opts, nats.Secure(tc))
		}
	default: // the ingest's embedded server, from the same machine
		url = "nats://" + c.Listen
		creds = EmbeddedCredentials(c)
	}
	if creds != "" {
		opt, err := credentialsOption(creds)
		if err != nil {
			return nil, nil, configError{err}
		}
		opts = append(opts, opt)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// Buffer publishes records to the stream and answers each once JetStream
// acknowledged it.
type Buffer struct {
	js       jetstream.JetStream
	pub      *publisher
	stream   string
	subjects Subjects
	timeout  time.Duration

	fillMu      sync.Mutex
	fill        float64
	fillChecked time.Time
}

// NewBuffer returns a Buffer publishing through js.
func NewBuffer(js jetstream.JetStream, c config.WAL) *Buffer {
	return &Buffer{js: js, pub: newPublisher(js.Conn()), stream: c.Stream, subjects: Subjects{Prefix: c.SubjectPrefix}, timeout: c.PublishTimeout}
}

// Fill is how full the stream is, from 0 to 1 of its byte limit, as
// JetStream said at most a second ago; 0 when it cannot say.
func (b *Buffer) Fill(ctx context.Context) float64 {
	b.fillMu.Lock()
	defer b.fillMu.Unlock()
	if time.Since(b.fillChecked) < time.Second {
		return b.fill
	}
	b.fillChecked = time.Now()
	b.fill = 0
	if s, err := b.js.Stream(ctx, b.stream); err == nil {
		if info, err := s.Info(ctx); err == nil && info.Config.MaxBytes > 0 {
			b.fill = float64(info.State.Bytes) / float64(info.Config.MaxBytes)
		}
	}
	return b.fill
}

// Subjects is the buffer's subject naming.
func (b *Buffer) Subjects() Subjects { return b.subjects }

// Publish stores recs as kind, each with its ID as the JetStream message
// id, and returns one result per record: Buffered once JetStream
// acknowledged it, else Failed (buffer_full when the stream is at its
// limit, unavailable otherwise). reason says why they are buffered.
func (b *Buffer) Publish(ctx context.Context, kind Kind, recs []record.Record, reason string) []record.Result {
	results := make([]record.Result, len(recs))
	batch := newBatch(len(recs))
	defer b.pub.finish(batch)
	msgs := make([]nats.Msg, len(recs))
	// One allocation holds the whole batch's encodings: each message's
	// data is a part of it, kept until its publish is acknowledged.
	size := 0
	for i := range recs {
		size += encodedSize(&recs[i], reason)
	}
	arena := make([]byte, 0, size)
	// Records of a batch mostly share a topic: its subject and header
	// value are made once per run of records of one topic.
	var topic string
	var topicHeader, reasonHeader []string
	dead := kind.deadLetter()
	if dead {
		reasonHeader = []string{reason}
	}
	for i := range recs {
		r := &recs[i]
		start := len(arena)
		var err error
		if arena, err = appendRecord(arena, r, reason); err != nil {
			results[i] = record.Fail(r.Topic, &record.Error{Reason: record.ReasonInvalid, Message: "cannot encode the record for the buffer", Err: err})
			batch.answer(i, errNotSent)
			continue
		}
		if r.Topic != topic || topicHeader == nil {
			topic, topicHeader = r.Topic, []string{r.Topic}
		}
		subject := b.subjects.ForRecord(kind, r)
		// The message id makes a publish retried within the stream's
		// duplicate window count once.
		h := nats.Header{nats.MsgIdHdr: []string{msgID(kind, r.ID)}}
		if dead {
			// For a person reading the dead letters, and the
			// spillway-dead-letters command; the record holds them too.
			// A record on its way to Kafka carries its message id alone:
			// its topic and trace context are in the record, where the
			// drain reads them. Each header is work for the NATS server
			// on every message (it looks through them for its own ones,
			// and makes a map of them all when one is a sampled
			// traceparent, for its message tracing): with the topic and
			// traceparent as headers too, the ingest took a fifth more
			// CPU per record spilled from NDJSON batches (25.8 against
			// 21.4 us, medians of 3).
			h[HeaderTopic] = topicHeader
			h[HeaderReason] = reasonHeader
			copyTraceContext(r, h)
		}
		msgs[i] = nats.Msg{Subject: subject, Data: arena[start:len(arena):len(arena)], Header: h}
		b.pub.publish(batch, i, &msgs[i])
	}
	// Half-way to the deadline, what JetStream has not acknowledged is
	// published again under the same message id: if JetStream stored it
	// and its acknowledgement was lost or is late, it drops the copy and
	// acknowledges it, and the record is answered buffered, where a 503
	// would make its client send it again and store a second copy under
	// another spillway-id.
	start := time.Now()
	half := time.NewTimer(b.timeout / 2)
	defer half.Stop()
	select {
	case <-batch.done:
	case <-half.C:
		b.pub.repeat(batch)
		deadline := time.NewTimer(b.timeout - time.Since(start))
		defer deadline.Stop()
		select {
		case <-batch.done:
		case <-deadline.C:
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	// An answer that came by the deadline still counts.
	batch.mu.Lock()
	defer batch.mu.Unlock()
	for i := range recs {
		e := &batch.entries[i]
		switch {
		case e.err == errNotSent:
		case !e.answered:
			results[i] = record.Fail(recs[i].Topic, &record.Error{Reason: record.ReasonUnavailable, Message: ErrOutcomeUnknown})
		case e.err != nil:
			results[i] = record.Fail(recs[i].Topic, classify(e.err))
		default:
			results[i] = record.Result{Outcome: record.Buffered, Topic: recs[i].Topic, Partition: record.AnyPartition, Offset: -1, Timestamp: recs[i].Timestamp}
		}
	}
	return results
}

// ErrOutcomeUnknown is the message of a record whose publish, and its
// repeat under the same message id, JetStream did not acknowledge by
// producer.wal.publish_timeout: it may be stored or not.
const ErrOutcomeUnknown = "the buffer (JetStream) acknowledged neither the record nor its repeat under the same id in time (producer.wal.publish_timeout): it may be stored or not, the outcome is unknown; a retry may store it twice"

// errNotSent answers a record Publish could not encode: its result is set.
var errNotSent = errors.New("not sent")

// msgID is the JetStream message id of a record of kind: for a record
// written ahead or spilled, its id, which makes a publish retried within
// the stream's duplicate window count once (a record is either written
// ahead or spilled, never both). Any other kind (a mirror's copy, a dead
// letter) is another message for the same record and gets its own id, or
// JetStream would take it for a duplicate and not store it.
func msgID(kind Kind, id string) string {
	if kind == WriteAhead || kind == Spilled {
		return id
	}
	return string(kind) + ":" + id
}

// traceHeaders are the W3C trace context headers a record carries.
var traceHeaders = []string{"traceparent", "tracestate", "baggage"}

// copyTraceContext puts the record's trace context headers on a dead
// letter's NATS message too, for a person reading it.
func copyTraceContext(r *record.Record, h nats.Header) {
	for _, h2 := range r.Headers {
		for _, name := range traceHeaders {
			if strings.EqualFold(h2.Key, name) {
				h.Set(name, string(h2.Value))
			}
		}
	}
}

// classify turns a JetStream publish error into a record.Error.
func classify(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && strings.Contains(strings.ToLower(apiErr.Description), "maximum") {
		return &record.Error{Reason: record.ReasonBufferFull, Message: "the buffer is full (producer.wal.max_bytes): the record was not stored", Err: err}
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return &record.Error{Reason: record.ReasonTooLarge, Message: "the record is over the NATS server's max_payload and cannot be buffered", Err: err}
	}
	if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
		return &record.Error{Reason: record.ReasonUnavailable, Message: "the buffer is overloaded: retry later", Err: err}
	}
	return &record.Error{Reason: record.ReasonUnavailable, Message: "the buffer (JetStream) cannot take the record now", Err: err}
}
