package spill

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// publisher publishes batches of messages to JetStream and waits for
// their acknowledgements as jetstream's PublishMsgAsync and its futures
// do, with the same limits: at most maxPending messages unacknowledged, a
// publish waits at most stallWait for room, "no responders" (no stream
// leader yet) is tried again twice 250 ms apart, and a reconnect fails
// what waits. It reads an acknowledgement without encoding/json, which
// took 10% of the ingest's CPU while spilling, and answers a whole batch
// through one channel instead of two per message.
type publisher struct {
	nc *nats.Conn

	mu      sync.Mutex
	prefix  string // reply subjects are prefix + a token; "" until the first publish
	next    uint64
	pending map[uint64]*pubEntry
	room    chan struct{} // closed when pending falls below maxPending
}

// The limits, as jetstream's defaults.
const (
	maxPending    = 4000
	stallWait     = 200 * time.Millisecond
	noResponders  = 2
	noRespondWait = 250 * time.Millisecond
)

// pubBatch is one Publish call's messages and their answers.
type pubBatch struct {
	entries []pubEntry

	mu        sync.Mutex
	remaining int
	done      chan struct{}
}

type pubEntry struct {
	batch    *pubBatch
	index    int
	msg      *nats.Msg
	token    uint64
	again    *nats.Msg // the publish repeated under the same message id (repeat)
	token2   uint64    // its reply token
	retries  int
	answered bool
	err      error
}

func newPublisher(nc *nats.Conn) *publisher {
	return &publisher{nc: nc, pending: map[uint64]*pubEntry{}}
}

// start subscribes to the acknowledgements at the first publish, and
// fails what waits when the connection is lost.
func (p *publisher) start() error {
	if p.prefix != "" {
		return nil
	}
	prefix := p.nc.NewInbox() + "."
	if _, err := p.nc.Subscribe(prefix+"*", p.ack); err != nil {
		return err
	}
	p.prefix = prefix
	status := p.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	go func() {
		for s := range status {
			err := nats.ErrDisconnected
			if s == nats.CLOSED {
				err = nats.ErrConnectionClosed
			}
			p.failAll(err)
			if s == nats.CLOSED {
				return
			}
		}
	}()
	return nil
}

// newBatch makes a batch of n messages, none sent yet.
func newBatch(n int) *pubBatch {
	b := &pubBatch{entries: make([]pubEntry, n), remaining: n, done: make(chan struct{})}
	for i := range b.entries {
		b.entries[i].batch, b.entries[i].index = b, i
	}
	if n == 0 {
		close(b.done)
	}
	return b
}

// answer gives message i of the batch its outcome, once.
func (b *pubBatch) answer(i int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := &b.entries[i]
	if e.answered {
		return
	}
	e.answered, e.err = true, err
	b.remaining--
	if b.remaining == 0 {
		close(b.done)
	}
}

// publish sends msg as message i of the batch, with a reply subject of
// the publisher's; an error answers it at once.
func (p *publisher) publish(b *pubBatch, i int, msg *nats.Msg) {
	e := &b.entries[i]
	e.msg = msg
	if err := p.register(e); err != nil {
		b.answer(i, err)
		return
	}
	if err := p.nc.PublishMsg(msg); err != nil {
		p.forget(e)
		b.answer(i, err)
	}
}

// register gives e a token and its reply subject, waiting up to stallWait
// while maxPending messages wait for their acknowledgements.
func (p *publisher) register(e *pubEntry) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		p.mu.Lock()
		if err := p.start(); err != nil {
			p.mu.Unlock()
			return err
		}
		if len(p.pending) < maxPending {
			e.token = p.next
			p.next++
			p.pending[e.token] = e
			e.msg.Reply = p.prefix + strconv.FormatUint(e.token, 36)
			p.mu.Unlock()
			return nil
		}
		if p.room == nil {
			p.room = make(chan struct{})
		}
		room := p.room
		p.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(stallWait)
		}
		select {
		case <-room:
		case <-timer.C:
			return jetstream.ErrTooManyStalledMsgs
		}
	}
}

// forget stops waiting for e's acknowledgement.
func (p *publisher) forget(e *pubEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removeEntry(e)
}

// removeEntry deletes e's tokens from pending; p.mu is held.
func (p *publisher) removeEntry(e *pubEntry) {
	if p.pending[e.token] == e {
		p.remove(e.token)
	}
	if e.again != nil && p.pending[e.token2] == e {
		p.remove(e.token2)
	}
}

// repeat publishes again, under the same message id and a reply token of
// its own, each message of the batch that was sent and is not answered
// yet: when JetStream stored the first and its acknowledgement was lost
// or is late, it drops the copy as a duplicate (within the stream's
// duplicate window) and acknowledges it; either acknowledgement answers
// the message. Each message is repeated once.
func (p *publisher) repeat(b *pubBatch) {
	var again []*pubEntry
	b.mu.Lock()
	for i := range b.entries {
		e := &b.entries[i]
		if !e.answered && e.msg != nil {
			again = append(again, e)
		}
	}
	b.mu.Unlock()
	for _, e := range again {
		p.mu.Lock()
		if p.pending[e.token] != e || e.again != nil { // answered, or repeated, meanwhile
			p.mu.Unlock()
			continue
		}
		e.token2 = p.next
		p.next++
		e.again = &nats.Msg{Subject: e.msg.Subject, Data: e.msg.Data, Header: e.msg.Header, Reply: p.prefix + strconv.FormatUint(e.token2, 36)}
		p.pending[e.token2] = e
		msg := e.again
		p.mu.Unlock()
		if err := p.nc.PublishMsg(msg); err != nil {
			p.mu.Lock()
			if p.pending[e.token2] == e {
				p.remove(e.token2)
			}
			p.mu.Unlock()
		}
	}
}

// remove deletes a token from pending; p.mu is held.
func (p *publisher) remove(token uint64) {
	delete(p.pending, token)
	if p.room != nil && len(p.pending) < maxPending {
		close(p.room)
		p.room = nil
	}
}

// finish stops waiting for the batch's messages still unanswered.
func (p *publisher) finish(b *pubBatch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range b.entries {
		e := &b.entries[i]
		if e.msg != nil {
			p.removeEntry(e)
		}
	}
}

// failAll answers every message waiting with err.
func (p *publisher) failAll(err error) {
	p.mu.Lock()
	var failed []*pubEntry
	for token, e := range p.pending {
		if p.pending[token] != e {
			continue // removed with its entry's other token
		}
		failed = append(failed, e)
		p.removeEntry(e)
	}
	p.mu.Unlock()
	for _, e := range failed {
		e.batch.answer(e.index, err)
	}
}

// ack takes an acknowledgement (or a no-responders status) from the
// server.
func (p *publisher) ack(m *nats.Msg) {
	token, err := strconv.ParseUint(m.Subject[min(len(p.prefix), len(m.Subject)):], 36, 64)
	if err != nil {
		return
	}
	p.mu.Lock()
	e := p.pending[token]
	if e == nil {
		p.mu.Unlock()
		return // answered already, or its batch stopped waiting
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		if e.retries < noResponders {
			e.retries++
			p.mu.Unlock()
			time.AfterFunc(noRespondWait, func() { p.resend(e, token) })
			return
		}
		p.removeEntry(e)
		p.mu.Unlock()
		e.batch.answer(e.index, jetstream.ErrNoStreamResponse)
		return
	}
	p.removeEntry(e)
	p.mu.Unlock()
	e.batch.answer(e.index, parseAck(m.Data))
}

// resend publishes e again after no responders, unless its batch stopped
// waiting meanwhile.
func (p *publisher) resend(e *pubEntry, token uint64) {
	p.mu.Lock()
	waiting := p.pending[token] == e
	p.mu.Unlock()
	if !waiting {
		return
	}
	msg := e.msg
	if e.again != nil && token == e.token2 {
		msg = e.again
	}
	if err := p.nc.PublishMsg(msg); err != nil {
		p.forget(e)
		e.batch.answer(e.index, err)
	}
}

// ackPrefix starts every successful acknowledgement: the server writes
// {"stream":"NAME","seq":N} (with a domain or "duplicate":true after the
// name, maybe); an error has "error" first.
var ackPrefix = []byte(`{"stream":"`)

// parseAck is nil for an acknowledgement, else the error it reports, as
// jetstream reads it: an *APIError, or ErrInvalidJSAck.
func parseAck(data []byte) error {
	if bytes.HasPrefix(data, ackPrefix) && len(data) > len(ackPrefix) && data[len(ackPrefix)] != '"' &&
		data[len(data)-1] == '}' && !bytes.Contains(data, []byte(`"error"`)) {
		return nil
	}
	var pa struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
	}
	if err := json.Unmarshal(data, &pa); err != nil {
		return jetstream.ErrInvalidJSAck
	}
	if pa.Error != nil {
		return pa.Error
	}
	if pa.Stream == "" {
		return jetstream.ErrInvalidJSAck
	}
	return nil
}
