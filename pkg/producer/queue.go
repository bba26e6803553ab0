package producer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
)

// How records reach Kafka. Each partition has a queue. Each broker that
// leads a partition has a sender, a goroutine that runs while its
// partitions have records: it takes every batch that is ready from the
// queues of the partitions that broker leads, sends them in one produce
// request, and answers their records when Kafka has answered. A queue has
// at most one batch in flight, so records keep their order. Records that
// arrive while a request is in flight go out together in the next one, so
// batches grow with the load, and a request carries as many partitions as
// have records: a batch is ready once linger.ms has passed since its
// first record, or at once when it is full (batch.num.messages,
// batch.size) or the producer is closing.

// topicPartition names one partition's queue.
type topicPartition struct {
	topic     string
	partition int
}

// queued is a record waiting in its partition's queue, and its place in
// the call that queued it.
type queued struct {
	key, value []byte
	headers    []kafka.Header
	time       time.Time
	call       *call
	index      int // in the call's results
	size       int
}

// partitionQueue holds one partition's records until they are sent.
type partitionQueue struct {
	tp topicPartition

	mu       sync.Mutex
	leader   int32 // the broker that leads the partition, as metadata last said
	recs     []queued
	bytes    int
	first    time.Time // when recs[0] was queued
	inFlight bool
	// retry is a batch that failed with an error that may pass: it goes
	// again, alone and first, after notBefore.
	retry     []queued
	attempts  int
	notBefore time.Time
}

// brokerSender sends the batches of the partitions one broker leads.
type brokerSender struct {
	leader  int32
	wake    chan struct{} // a batch may be ready
	running bool          // guarded by Producer.mu
}

// add queues recs (all of tp), which the caller no longer uses, and wakes
// the sender of tp's leader.
func (p *Producer) add(tp topicPartition, leader int32, recs []queued) {
	p.mu.Lock()
	q, ok := p.queues[tp]
	if !ok {
		q = &partitionQueue{tp: tp}
		p.queues[tp] = q
	}
	p.mu.Unlock()

	q.mu.Lock()
	q.leader = leader
	if len(q.recs) == 0 {
		q.first = time.Now()
	}
	if len(q.recs) == 0 {
		q.recs = recs // the caller's, given up: no copy
	} else {
		q.recs = append(q.recs, recs...)
	}
	for _, r := range recs {
		q.bytes += r.size
	}
	q.mu.Unlock()
	p.wake(leader)
}

// wake starts leader's sender, or tells the running one to look again.
func (p *Producer) wake(leader int32) {
	p.mu.Lock()
	s, ok := p.senders[leader]
	if !ok {
		s = &brokerSender{leader: leader, wake: make(chan struct{}, 1)}
		p.senders[leader] = s
	}
	start := !s.running
	s.running = true
	p.mu.Unlock()
	if start {
		p.running.Add(1)
		go p.send(s)
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// ready is one partition's batch, taken for a request.
type ready struct {
	q       *partitionQueue
	batch   []queued
	attempt int
}

// take takes the batches ready to go to s's broker. When none is, it
// returns how long until the first one will be, or 0 when none is queued:
// s is then marked stopped, and its goroutine ends.
func (p *Producer) take(s *brokerSender) ([]ready, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var (
		wait       time.Duration
		waiting    bool
		now        = time.Now()
		closing    = p.closing.Load()
		send       = closing // a batch is full, a retry is due, or linger passed
		oldest     time.Time
		candidates []*partitionQueue
	)
	soonest := func(d time.Duration) {
		if !waiting || d < wait {
			wait, waiting = d, true
		}
	}
	// The queues of s's broker that have records and none in flight; the
	// request goes when one of them is full or due, or linger.ms after
	// the oldest record of them all, and then takes them all: the
	// partitions of a broker go together, not each at its own linger.
	for _, q := range p.queues {
		q.mu.Lock()
		switch {
		case q.leader != s.leader || q.inFlight || (len(q.recs) == 0 && q.retry == nil):
		case q.retry != nil && now.Before(q.notBefore) && !closing:
			soonest(q.notBefore.Sub(now))
		default:
			candidates = append(candidates, q)
			if q.retry != nil || len(q.recs) >= p.batchSize || q.bytes >= p.batchBytes {
				send = true
			}
			if len(q.recs) > 0 && (oldest.IsZero() || q.first.Before(oldest)) {
				oldest = q.first
			}
		}
		q.mu.Unlock()
	}
	if len(candidates) > 0 && !send {
		if age := now.Sub(oldest); age < p.linger {
			soonest(p.linger - age)
		} else {
			send = true
		}
	}
	var out []ready
	if send {
		for _, q := range candidates {
			q.mu.Lock()
			if q.retry != nil && !q.inFlight {
				if batch := unexpired(q.retry); len(batch) > 0 {
					out = append(out, ready{q: q, batch: batch, attempt: q.attempts})
					q.inFlight = true
				}
				q.retry = nil
			}
			for !q.inFlight && len(q.recs) > 0 {
				if batch := q.takeBatch(p.batchSize, p.batchBytes); len(batch) > 0 {
					out = append(out, ready{q: q, batch: batch})
					q.inFlight = true
				}
			}
			q.mu.Unlock()
		}
	}
	if len(out) == 0 && !waiting {
		s.running = false
		return nil, 0
	}
	return out, max(wait, time.Microsecond)
}

// takeBatch takes the first records of q, up to a batch's bounds, less
// those whose call has expired.
func (q *partitionQueue) takeBatch(maxRecords, maxBytes int) []queued {
	return unexpired(q.takeRecords(maxRecords, maxBytes))
}

func (q *partitionQueue) takeRecords(maxRecords, maxBytes int) []queued {
	n, size := 0, 0
	for n < len(q.recs) && n < maxRecords && (n == 0 || size+q.recs[n].size <= maxBytes) {
		size += q.recs[n].size
		n++
	}
	var batch []queued
	if n == len(q.recs) { // all of them, as mostly: no copy
		batch, q.recs = q.recs, nil
	} else {
		batch = make([]queued, n)
		copy(batch, q.recs)
		rest := copy(q.recs, q.recs[n:])
		clear(q.recs[rest:])
		q.recs = q.recs[:rest]
	}
	q.bytes -= size
	q.first = time.Now()
	return batch
}

// send is s's goroutine: it runs until none of its partitions has records.
func (p *Producer) send(s *brokerSender) {
	defer p.running.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batches, wait := p.take(s)
		if len(batches) > 0 {
			p.produce(batches)
			continue
		}
		if wait == 0 {
			return
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
		case <-p.closed:
			timer.Stop()
		}
	}
}

// produce sends batches in one request per broker that leads them (one,
// unless a leader moved since they were queued), and answers each batch's
// records, or queues it again when its error may pass and it has attempts
// left (retries, retry.backoff.ms, retry.backoff.max.ms).
func (p *Producer) produce(batches []ready) {
	groups := p.byLeader(batches)
	if len(groups) == 1 {
		p.produceTo(batches)
		return
	}
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Go(func() { p.produceTo(g) })
	}
	wg.Wait()
}

// byLeader splits batches by the broker that leads their partition now,
// as the transport's metadata says.
func (p *Producer) byLeader(batches []ready) [][]ready {
	leaders := map[int32][]ready{}
	layouts := map[string]layout{}
	for _, b := range batches {
		l, ok := layouts[b.q.tp.topic]
		if !ok {
			cached, _ := p.cachedLayout(b.q.tp.topic) // never a wait on the sender
			l = cached.layout
			layouts[b.q.tp.topic] = l
		}
		leader := int32(-1)
		if b.q.tp.partition < len(l.leaders) {
			leader = l.leaders[b.q.tp.partition]
		}
		leaders[leader] = append(leaders[leader], b)
	}
	out := make([][]ready, 0, len(leaders))
	for _, g := range leaders {
		out = append(out, g)
	}
	return out
}

// produceTo sends batches, all led by one broker, in one request.
func (p *Producer) produceTo(batches []ready) {
	req := &produceapi.Request{
		Acks:    int16(p.acks),
		Timeout: int32(p.writeTimeout.Milliseconds()),
	}
	topicIndex := map[string]int{}
	for _, b := range batches {
		i, ok := topicIndex[b.q.tp.topic]
		if !ok {
			i = len(req.Topics)
			topicIndex[b.q.tp.topic] = i
			req.Topics = append(req.Topics, produceapi.RequestTopic{Topic: b.q.tp.topic})
		}
		req.Topics[i].Partitions = append(req.Topics[i].Partitions, produceapi.RequestPartition{
			Partition: int32(b.q.tp.partition),
			RecordSet: protocol.RecordSet{
				Attributes: protocol.Attributes(p.compression) & 0x7,
				Records:    &batchRecords{batch: b.batch},
			},
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.writeTimeout)
	resp, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, req)
	cancel()
	var unrouted *produceapi.Error
	if errors.As(err, &unrouted) {
		// The transport's metadata routes none of it as we grouped it (a
		// topic or partition gone, a leader moved or missing): nothing was
		// sent. Our layouts are read again, and each batch goes alone, so
		// that one partition's trouble is not its neighbours'.
		for _, b := range batches {
			p.forgetLayout(b.q.tp.topic)
		}
		if len(batches) > 1 {
			for _, b := range batches {
				p.produceTo([]ready{b})
			}
			return
		}
	}

	answers := map[topicPartition]*produceapi.ResponsePartition{}
	if r, ok := resp.(*produceapi.Response); ok && err == nil {
		for i := range r.Topics {
			for j := range r.Topics[i].Partitions {
				rp := &r.Topics[i].Partitions[j]
				answers[topicPartition{r.Topics[i].Topic, int(rp.Partition)}] = rp
			}
		}
	}
	for _, b := range batches {
		berr, offset := err, int64(-1)
		if err == nil && p.acks != kafka.RequireNone {
			switch rp := answers[b.q.tp]; {
			case rp == nil:
				berr = errors.New("kafka's answer did not name the partition")
			case rp.ErrorCode != 0:
				berr = kafka.Error(rp.ErrorCode)
			default:
				offset = rp.BaseOffset
			}
		}
		if berr != nil && retriable(berr) && b.attempt+1 < p.maxAttempts && !p.closing.Load() {
			p.logger.Debug("kafka produce failed; retrying", "topic", b.q.tp.topic, "partition", b.q.tp.partition,
				"records", len(b.batch), "attempt", b.attempt+1, "error", berr)
			b.q.mu.Lock()
			b.q.retry, b.q.attempts, b.q.inFlight = unexpired(b.batch), b.attempt+1, false
			if len(b.q.retry) == 0 {
				b.q.retry = nil
			}
			b.q.notBefore = time.Now().Add(backoff(b.attempt+1, p.backoffMin, p.backoffMax))
			b.q.mu.Unlock()
			p.wakeIfPending(b.q)
			continue
		}
		complete(b.q.tp, b.batch, offset, berr)
		b.q.mu.Lock()
		b.q.inFlight = false
		b.q.mu.Unlock()
		p.wakeIfPending(b.q)
	}
}

// wakeIfPending wakes the sender of q's leader when q has records: its
// leader may have changed while its batch was in flight, and the sender
// of the new one may have found it busy and stopped.
func (p *Producer) wakeIfPending(q *partitionQueue) {
	q.mu.Lock()
	pending, leader := len(q.recs) > 0 || q.retry != nil, q.leader
	q.mu.Unlock()
	if pending {
		p.wake(leader)
	}
}

// unexpired is batch without the records whose call has been answered
// already (message.timeout.ms passed): the caller spilled or failed them,
// and sending them too would deliver them twice.
func unexpired(batch []queued) []queued {
	kept := batch[:0:0]
	for i := range batch {
		if !batch[i].call.expired.Load() {
			kept = append(kept, batch[i])
		}
	}
	if len(kept) == len(batch) {
		return batch
	}
	return kept
}

// retriable is kafka-go's Writer's rule: Kafka errors it calls temporary,
// and connections that broke; and a partition without a leader.
func retriable(err error) bool {
	var temporary interface{ Temporary() bool }
	if errors.As(err, &temporary) && temporary.Temporary() {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, protocol.ErrNoLeader) // the transport knows no leader yet
}

// backoff doubles from min up to max, with jitter, as kafka-go's Writer.
func backoff(attempt int, minDelay, maxDelay time.Duration) time.Duration {
	d := minDelay << (attempt - 1)
	if d <= 0 || d > maxDelay {
		d = maxDelay
	}
	return d/2 + rand.N(d/2+1)
}

// batchRecords reads a batch's records into a produce request, without
// copying them (kafka-go's Writer does the same).
type batchRecords struct {
	batch  []queued
	index  int
	record kafka.Record
	key    bytesReadCloser
	value  bytesReadCloser
}

func (r *batchRecords) ReadRecord() (*kafka.Record, error) {
	if r.index >= len(r.batch) {
		return nil, io.EOF
	}
	m := &r.batch[r.index]
	r.index++
	r.record = kafka.Record{Time: m.time, Headers: m.headers}
	if m.key != nil {
		r.key.Reset(m.key)
		r.record.Key = &r.key
	}
	if m.value != nil {
		r.value.Reset(m.value)
		r.record.Value = &r.value
	}
	return &r.record, nil
}

type bytesReadCloser struct{ bytes.Reader }

func (*bytesReadCloser) Close() error { return nil }
