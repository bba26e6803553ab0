package drain

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// The ordered drain (producer.order partition) keeps each partition's
// order. Records are read from the consumer in buffer order and queued per
// lane: a topic's partition, or, for a record whose partition the
// partitioner chooses at delivery, a hash of its key (the partitioner
// places a key by its hash, so a key's records share a lane). A lane has
// at most one batch in flight; a record Kafka could not take now stays at
// the head of its lane and is tried again there, with backoff, and only
// its lane waits; a dead letter leaves its place. Records are never sent
// back to JetStream (a nak would put a record behind the ones that
// followed it): those held are kept from redelivery with in-progress
// acknowledgements. One replica drains a consumer at a time (its lease);
// on taking the lease it makes the consumer again, so that delivery
// restarts from the first record not acknowledged, in buffer order.

// laneKey names a lane: a topic and its lane token (spill.Lane).
type laneKey struct {
	topic string
	lane  string
}

func laneOf(r *record.Record) laneKey { return laneKey{topic: r.Topic, lane: spill.Lane(r)} }

// entry is one buffered record held by the ordered drain.
type entry struct {
	msg     jetstream.Msg
	rec     record.Record
	seq     uint64    // its stream sequence
	touched time.Time // last delivery or in-progress acknowledgement
}

// lane is the records of one lane, in buffer order.
type lane struct {
	key     laneKey
	q       []*entry
	busy    bool // its head is in flight
	retryAt time.Time
	fails   int
}

// inflight is one batch on its way to Kafka: the heads of some lanes.
type inflight struct {
	lanes   []*lane
	counts  []int // records taken from each lane's head
	msgs    []jetstream.Msg
	recs    []record.Record
	results []record.Result
	err     error
}

// orderer is the ordered drain's state; one goroutine owns it.
type orderer struct {
	d      *Drainer
	lanes  map[laneKey]*lane
	active []*lane // lanes with records, in no order
	seqs   map[uint64]*entry
	held   atomic.Int64 // entries held, read by the fetcher
	max    int64        // the most entries held before fetching waits
}

// runOrdered drains in partition order until ctx ends: it waits for the
// lease, makes the consumer again, and drains until ctx ends or the lease
// is lost.
func (d *Drainer) runOrdered(ctx context.Context) error {
	go d.observe(ctx)
	for ctx.Err() == nil {
		if err := d.lease.acquire(ctx); err != nil {
			return nil
		}
		if err := d.resetConsumer(ctx); err != nil {
			d.opts.Logger.Warn("cannot make the consumer again; trying later", "consumer", d.opts.Consumer, "error", err)
			d.lease.release()
			sleep(ctx, time.Second)
			continue
		}
		d.opts.Logger.Info("this replica drains the consumer, from its first record not acknowledged", "consumer", d.opts.Consumer)
		if lost := d.drainOrdered(ctx); lost {
			d.opts.Logger.Warn("lease lost: another replica may drain now", "consumer", d.opts.Consumer)
			continue
		}
		d.lease.release()
	}
	return nil
}

// resetConsumer deletes and makes again the durable consumer: on a work
// queue, a new consumer starts from the first message still stored, that
// is from the first record not acknowledged, where the old one would
// redeliver what a dead holder had been given only after ack_wait, behind
// newer records.
func (d *Drainer) resetConsumer(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := d.stream.DeleteConsumer(ctx, d.opts.Consumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return err
	}
	c, err := d.stream.CreateOrUpdateConsumer(ctx, d.consumerConfig())
	if err != nil {
		return err
	}
	d.setConsumer(c)
	return nil
}

// drainOrdered drains while this replica holds the lease; it returns true
// when the lease was lost, false when ctx ended. Batches in flight are
// finished before it returns.
func (d *Drainer) drainOrdered(parent context.Context) (lost bool) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	o := &orderer{d: d, lanes: map[laneKey]*lane{}, seqs: map[uint64]*entry{}, max: int64(d.maxHeld())}
	in := make(chan []jetstream.Msg)
	fetched := make(chan struct{})
	go func() { defer close(fetched); d.fetchOrdered(ctx, o, in) }()
	done := make(chan *inflight)
	renew := time.NewTicker(leaseTTL / 6)
	defer renew.Stop()
	wake := time.NewTicker(50 * time.Millisecond) // lanes whose backoff ended, a breaker half-open
	defer wake.Stop()
	progressEvery := max(d.opts.WAL.AckWait/4, 100*time.Millisecond)
	progress := time.NewTicker(progressEvery)
	defer progress.Stop()
	busy := 0
	for {
		for busy < d.opts.Workers {
			b := o.next()
			if b == nil {
				break
			}
			busy++
			go d.produceOrdered(parent, b, done)
		}
		select {
		case msgs := <-in:
			o.add(msgs)
		case b := <-done:
			busy--
			o.finish(b)
		case <-renew.C:
			if err := d.lease.renew(parent); err != nil {
				lost = true
				cancel()
			}
		case <-progress.C:
			o.progress(progressEvery)
		case <-wake.C:
		case <-ctx.Done():
			for busy > 0 {
				busy--
				o.finish(<-done)
			}
			<-fetched
			return lost
		}
	}
}

// maxHeld is how many records the ordered drain holds at most: enough for
// a lane blocked for a while (a missing topic) not to stop the others.
func (d *Drainer) maxHeld() int { return max(20000, 4*d.opts.Workers*d.opts.BatchSize) }

// fetchOrdered reads the consumer in buffer order while there is room and
// the breaker is not open (records wait in JetStream, not in memory).
func (d *Drainer) fetchOrdered(ctx context.Context, o *orderer, in chan<- []jetstream.Msg) {
	for ctx.Err() == nil {
		room := o.max - o.held.Load()
		if room <= 0 || d.kafka.State() == breaker.Open {
			sleep(ctx, 50*time.Millisecond)
			continue
		}
		// What is there now, at once; when nothing is, wait up to a second
		// for the next record and take it as soon as it comes: a lane's
		// backlog must empty promptly for the ingest to hand it back to
		// Kafka, and a fetch of a whole batch would wait out its second.
		c := d.currentConsumer()
		batch, err := c.FetchNoWait(int(min(room, int64(d.opts.BatchSize))))
		if err == nil {
			var msgs []jetstream.Msg
			for m := range batch.Messages() {
				msgs = append(msgs, m)
			}
			if len(msgs) == 0 {
				batch, err = c.Fetch(1, jetstream.FetchMaxWait(time.Second))
			} else if !o.hand(ctx, in, msgs) {
				return
			} else {
				continue
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				d.opts.Logger.Warn("fetch from the buffer failed", "error", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if len(msgs) > 0 && !o.hand(ctx, in, msgs) {
			return
		}
	}
}

// hand gives fetched messages to the drain's loop; false when ctx ended
// first (they are not acknowledged: the next holder reads them again).
func (o *orderer) hand(ctx context.Context, in chan<- []jetstream.Msg, msgs []jetstream.Msg) bool {
	o.held.Add(int64(len(msgs)))
	select {
	case in <- msgs:
		return true
	case <-ctx.Done():
		return false
	}
}

// add queues fetched messages on their lanes, in buffer order. A message
// given again (its in-progress acknowledgement came late) replaces the
// one held; one given again after it was answered is answered again.
func (o *orderer) add(msgs []jetstream.Msg) {
	d := o.d
	now := time.Now()
	for _, msg := range msgs {
		md, err := msg.Metadata()
		if err != nil {
			o.held.Add(-1)
			continue
		}
		seq := md.Sequence.Stream
		if e, ok := o.seqs[seq]; ok {
			e.msg, e.touched = msg, now
			o.held.Add(-1)
			continue
		}
		if md.NumDelivered > 1 { // answered already; its ack was lost
			_ = msg.Ack()
			o.held.Add(-1)
			continue
		}
		r, err := spill.Decode(msg.Data())
		if err != nil {
			o.held.Add(-1)
			if !d.deadLetter(context.Background(), msg, "", record.ReasonInvalid, "the buffered message is not a Spillway record: "+err.Error(), false) {
				_ = msg.NakWithDelay(10 * time.Second) // no record, no order to keep
			}
			continue
		}
		e := &entry{msg: msg, rec: r, seq: seq, touched: now}
		o.seqs[seq] = e
		k := laneOf(&r)
		l := o.lanes[k]
		if l == nil {
			l = &lane{key: k}
			o.lanes[k] = l
		}
		if len(l.q) == 0 && !l.busy {
			o.active = append(o.active, l)
		}
		l.q = append(l.q, e)
	}
}

// next takes a batch from the heads of the lanes that are neither in
// flight nor backing off; nil when none is ready, or the breaker is open.
// A half-open breaker gets one record to probe Kafka.
func (o *orderer) next() *inflight {
	d := o.d
	limit := d.limiter.Burst()
	if d.limiter.Limit() == rate.Inf {
		// One batch per lane in flight: a deep lane (keyless records share
		// one per topic) goes at one batch per round trip, so its batches
		// are larger (26,000 records/s with 500, keyless, TestMeasureResend).
		limit = 4 * d.opts.BatchSize
	}
	switch d.kafka.State() {
	case breaker.Open:
		return nil
	case breaker.HalfOpen:
		limit = 1
	}
	now := time.Now()
	var b *inflight
	kept := o.active[:0]
	for _, l := range o.active {
		if len(l.q) == 0 && !l.busy {
			delete(o.lanes, l.key)
			continue
		}
		kept = append(kept, l)
		if l.busy || now.Before(l.retryAt) || (b != nil && len(b.recs) >= limit) {
			continue
		}
		if b == nil {
			b = &inflight{}
		}
		n := min(len(l.q), limit-len(b.recs))
		l.busy = true
		b.lanes = append(b.lanes, l)
		b.counts = append(b.counts, n)
		for _, e := range l.q[:n] {
			b.msgs = append(b.msgs, e.msg)
			b.recs = append(b.recs, e.rec)
		}
	}
	o.active = kept
	// Start the next scan elsewhere, so that lanes take turns.
	if len(o.active) > 1 {
		first := o.active[0]
		copy(o.active, o.active[1:])
		o.active[len(o.active)-1] = first
	}
	return b
}

// produceOrdered sends one batch at the rate limit and hands it back.
func (d *Drainer) produceOrdered(parent context.Context, b *inflight, done chan<- *inflight) {
	ctx := context.WithoutCancel(parent) // a batch begun is finished
	_ = d.limiter.WaitN(ctx, len(b.recs))
	spans := d.startSpans(ctx, b.msgs, b.recs)
	b.results, b.err = d.kafka.Produce(ctx, b.recs)
	if b.err == nil || !errors.Is(b.err, breaker.ErrOpen) {
		for i, r := range b.results {
			spans.result(i, r)
			// Acknowledged here, beside the drain's loop: the order of
			// acknowledgements does not matter, only that each follows
			// Kafka's.
			if r.Outcome == record.Delivered {
				if err := b.msgs[i].Ack(); err != nil {
					d.opts.Logger.Warn("ack failed; the record will be sent again", "id", b.recs[i].ID, "error", err)
				}
			}
		}
	}
	spans.end()
	done <- b
}

// finish answers a batch's records: those Kafka acknowledged are
// acknowledged, those it will never take are dead-lettered, and a lane
// whose record Kafka could not take now keeps it, and the ones after it,
// at its head and backs off.
func (o *orderer) finish(b *inflight) {
	d := o.d
	m := d.opts.Metrics
	open := errors.Is(b.err, breaker.ErrOpen) // Kafka was not tried
	drained := map[string]int{}
	held := map[string]error{}
	now := time.Now()
	i := 0
	for li, l := range b.lanes {
		n := b.counts[li]
		taken := l.q[:n]
		var keep []*entry
		failed := false
		for _, e := range taken {
			var r record.Result
			if !open && i < len(b.results) {
				r = b.results[i]
			} else {
				r = record.Fail(e.rec.Topic, record.Errorf(record.ReasonUnavailable, "circuit breaker open: Kafka not tried"))
			}
			i++
			reason := record.ReasonOf(r.Err)
			switch {
			case r.Outcome == record.Delivered: // acknowledged by produceOrdered
				drained[e.rec.Topic]++
				o.drop(e)
			case reason.InRecord() && d.deadLetter(context.Background(), e.msg, e.rec.Topic, reason, r.Err.Error(), false):
				o.drop(e) // it leaves its place
			default:
				failed = true
				keep = append(keep, e)
				if !open {
					m.retried.WithLabelValues(d.opts.Consumer, string(reason)).Inc()
					held[e.rec.Topic] = r.Err
				}
			}
		}
		l.q = append(keep, l.q[n:]...)
		l.busy = false
		if failed {
			l.fails++
			l.retryAt = now.Add(laneDelay(l.fails))
		} else {
			l.fails = 0
		}
	}
	for topic, n := range drained {
		m.drained.WithLabelValues(d.opts.Consumer, m.topics.Value(topic)).Add(float64(n))
	}
	d.blocked.update(drained, held)
}

// drop forgets an answered entry.
func (o *orderer) drop(e *entry) {
	delete(o.seqs, e.seq)
	o.held.Add(-1)
}

// progress tells JetStream the records held a while are still being
// worked on, so that it does not give them again.
func (o *orderer) progress(every time.Duration) {
	now := time.Now()
	for _, e := range o.seqs {
		if now.Sub(e.touched) >= every {
			_ = e.msg.InProgress()
			e.touched = now
		}
	}
}

// laneDelay backs a failing lane off: 100 ms, 200 ms, ... then every 5 s,
// so that its records are tried again soon after Kafka is back.
func laneDelay(fails int) time.Duration {
	return min(100*time.Millisecond<<min(fails-1, 6), 5*time.Second)
}
