// Package drain carries buffered records from the JetStream buffer to
// Kafka: the forwarder drains the written-ahead records continuously, the
// resender drains the spilled ones every period while Kafka is healthy. A
// message is acknowledged only after Kafka acknowledged its record; a
// record Kafka will never accept, for a fault in the record itself
// (record.Reason.InRecord), goes to the dead-letter subject with its
// reason, and is counted. For any other failure (Kafka unavailable, slow,
// refusing Spillway's credentials, a missing topic) the record stays
// buffered and is tried again with backoff, and the topic shows as blocked
// until Kafka takes its records again.
package drain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// Producer writes records to Kafka and reports each one's outcome.
type Producer interface {
	breaker.Kafka
}

// Options configure a Drainer.
type Options struct {
	JS   jetstream.JetStream
	WAL  config.WAL
	Kind spill.Kind // spill.WriteAhead (forwarder) or spill.Spilled (resender)
	// DeadLetter is where records Kafka will never accept go; default
	// spill.DeadLetter. ReasonPrefix starts their Spillway-Reason.
	DeadLetter   spill.Kind
	ReasonPrefix string
	Consumer     string // the durable consumer's name, shared by the replicas
	Producer     Producer
	// RateLimit is records per second to Kafka; 0 is no limit.
	RateLimit float64
	// Period is the time between drain rounds; 0 drains continuously.
	Period time.Duration
	// Breaker guards Kafka: while it is open no round starts, and a
	// half-open breaker lets one record probe.
	Breaker   config.Breaker
	BatchSize int
	// Workers is how many batches are in flight at once (default 4).
	Workers int
	// Ordered keeps each partition's order (producer.order partition):
	// one batch per partition in flight, failures retried in place, one
	// replica draining at a time (the holder of the consumer's lease).
	// Period is then unused: the drain reads the buffer whenever the
	// breaker lets it.
	Ordered bool
	// Holder names this replica in the lease (ordered only).
	Holder  string
	Metrics *Metrics
	Logger  *slog.Logger
	// TracerProvider and Propagators trace each record's hop; none when nil.
	TracerProvider trace.TracerProvider
	Propagators    propagation.TextMapPropagator
}

// Drainer drains one durable consumer into Kafka.
type Drainer struct {
	opts     Options
	tracer   trace.Tracer
	consMu   sync.Mutex
	consumer jetstream.Consumer // made again when the ordered drain takes its lease
	lease    *lease             // ordered only
	stream   jetstream.Stream
	subjects spill.Subjects
	limiter  *rate.Limiter
	kafka    *breaker.Producer // the producer, behind the drain's breaker
	blocked  *blocked
}

// New creates or updates the durable consumer and returns its Drainer.
func New(ctx context.Context, o Options) (*Drainer, error) {
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.DeadLetter == "" {
		o.DeadLetter = spill.DeadLetter
	}
	if o.TracerProvider == nil {
		o.TracerProvider = noop.NewTracerProvider()
	}
	if o.Propagators == nil {
		o.Propagators = propagation.TraceContext{}
	}
	subjects := spill.Subjects{Prefix: o.WAL.SubjectPrefix}
	stream, err := o.JS.Stream(ctx, o.WAL.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", o.WAL.Stream, err)
	}
	d0 := &Drainer{opts: o, subjects: subjects}
	consumer, err := stream.CreateOrUpdateConsumer(ctx, d0.consumerConfig())
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", o.Consumer, err)
	}
	var l *lease
	if o.Ordered {
		if o.Holder == "" {
			o.Holder = o.Consumer
		}
		if l, err = openLease(ctx, o.JS, o.WAL, o.Consumer, o.Holder); err != nil {
			return nil, err
		}
	}
	limit, burst := rate.Inf, o.BatchSize
	if o.RateLimit > 0 {
		limit = rate.Limit(o.RateLimit)
		burst = max(1, min(o.BatchSize, int(o.RateLimit/10))) // batches of about 100 ms of the rate
	}
	d := &Drainer{
		opts:     o,
		tracer:   o.TracerProvider.Tracer("github.com/spillway/spillway/pkg/drain"),
		consumer: consumer,
		lease:    l,
		stream:   stream,
		subjects: subjects,
		limiter:  rate.NewLimiter(limit, burst),
	}
	// Every series a dashboard or alert reads exists from the start, at 0.
	o.Metrics.breakerState.WithLabelValues(o.Consumer).Set(0)
	o.Metrics.pending.WithLabelValues(o.Consumer)
	o.Metrics.ackPending.WithLabelValues(o.Consumer)
	o.Metrics.oldestSeconds.WithLabelValues(o.Consumer)
	for _, r := range []record.Reason{record.ReasonInvalid, record.ReasonTooLarge} {
		o.Metrics.deadLettered.WithLabelValues(o.Consumer, string(r))
	}
	for _, r := range []record.Reason{record.ReasonUnavailable, record.ReasonTimeout, record.ReasonNotAuthorized, record.ReasonUnknownTopic} {
		o.Metrics.retried.WithLabelValues(o.Consumer, string(r))
	}
	d.blocked = newBlocked(o.Consumer, o.Metrics, o.Logger)
	d.kafka = breaker.New(o.Producer, breaker.Options{
		Name:     "kafka",
		Settings: o.Breaker,
		Logger:   o.Logger,
		OnStateChange: func(_, to breaker.State) {
			o.Metrics.breakerState.WithLabelValues(o.Consumer).Set(float64(to))
		},
	})
	return d, nil
}

// consumerConfig is the durable consumer's configuration.
func (d *Drainer) consumerConfig() jetstream.ConsumerConfig {
	o := d.opts
	maxAckPending := 2 * o.Workers * o.BatchSize
	if o.Ordered {
		maxAckPending = d.maxHeld() + o.BatchSize
	}
	return jetstream.ConsumerConfig{
		Durable:       o.Consumer,
		Description:   "Spillway " + o.Consumer + ": carries buffered records to Kafka",
		FilterSubject: d.subjects.All(o.Kind),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.WAL.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: maxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

func (d *Drainer) currentConsumer() jetstream.Consumer {
	d.consMu.Lock()
	defer d.consMu.Unlock()
	return d.consumer
}

func (d *Drainer) setConsumer(c jetstream.Consumer) {
	d.consMu.Lock()
	defer d.consMu.Unlock()
	d.consumer = c
}

// Run drains until ctx ends. A batch already fetched is finished (its
// records produced and acknowledged) before Run returns.
func (d *Drainer) Run(ctx context.Context) error {
	if d.opts.Ordered {
		return d.runOrdered(ctx)
	}
	go d.observe(ctx)
	if d.opts.Period == 0 {
		d.drainConcurrently(ctx)
		return nil
	}
	ticker := time.NewTicker(d.opts.Period)
	defer ticker.Stop()
	for {
		if d.kafka.State() == breaker.Open {
			d.opts.Logger.Debug("round skipped: the Kafka breaker is open")
		} else {
			d.drainConcurrently(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// drainConcurrently runs Workers drain loops at once, so that fetching,
// producing and acknowledging overlap; they share the rate limit and the
// breaker. Buffered records have no order to keep.
func (d *Drainer) drainConcurrently(ctx context.Context) {
	var wg sync.WaitGroup
	for range d.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.drain(ctx)
		}()
	}
	wg.Wait()
}

// drain fetches and delivers batches until ctx ends; in periodic mode also
// until the consumer is empty or Kafka fails.
func (d *Drainer) drain(ctx context.Context) {
	periodic := d.opts.Period > 0
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		n := d.limiter.Burst()
		if d.kafka.State() == breaker.HalfOpen {
			n = 1 // one record probes Kafka
		}
		wait := time.Second
		if periodic {
			wait = 200 * time.Millisecond
		}
		// The server ends the pull request after wait. A deadline on the
		// client's side instead let messages the server sent just as it
		// passed go unread, and unacknowledged until ack_wait (up to 400
		// of 3000 records, 1 run in 6 under -race). Shutdown waits for at
		// most this one fetch.
		batch, err := d.currentConsumer().Fetch(n, jetstream.FetchMaxWait(wait))
		if err != nil {
			if ctx.Err() == nil {
				d.opts.Logger.Warn("fetch from the buffer failed", "error", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		msgs := make([]jetstream.Msg, 0, n)
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if len(msgs) == 0 {
			if periodic {
				return
			}
			continue
		}
		// The batch is finished even when ctx ends meanwhile: its records
		// may be in Kafka already, and their messages must be answered.
		ok := d.deliver(context.WithoutCancel(ctx), msgs)
		if ok {
			backoff = 100 * time.Millisecond
			continue
		}
		if periodic {
			return // Kafka failed: the next round tries again
		}
		sleep(ctx, backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}

// deliver produces one batch and answers each message. It returns false
// when Kafka failed some record with a retriable error.
func (d *Drainer) deliver(ctx context.Context, msgs []jetstream.Msg) bool {
	m := d.opts.Metrics
	recs := make([]record.Record, 0, len(msgs))
	live := make([]jetstream.Msg, 0, len(msgs))
	for _, msg := range msgs {
		r, err := spill.Decode(msg.Data())
		if err != nil {
			d.deadLetter(ctx, msg, "", record.ReasonInvalid, "the buffered message is not a Spillway record: "+err.Error(), true)
			continue
		}
		recs = append(recs, r)
		live = append(live, msg)
	}
	if len(recs) == 0 {
		return true
	}
	if err := d.limiter.WaitN(ctx, len(recs)); err != nil {
		for _, msg := range live {
			_ = msg.Nak()
		}
		return true
	}
	spans := d.startSpans(ctx, live, recs)
	defer spans.end()
	results, err := d.kafka.Produce(ctx, recs)
	if errors.Is(err, breaker.ErrOpen) { // Kafka was not tried
		for _, msg := range live {
			_ = msg.NakWithDelay(time.Second)
		}
		return false
	}
	drained := map[string]int{} // per topic: one metric update per topic, not per record
	held := map[string]error{}  // per topic: why Kafka did not take its records now
	defer func() {
		for topic, n := range drained {
			m.drained.WithLabelValues(d.opts.Consumer, m.topics.Value(topic)).Add(float64(n))
		}
		d.blocked.update(drained, held)
	}()
	for i, r := range results {
		msg := live[i]
		spans.result(i, r)
		reason := record.ReasonOf(r.Err)
		switch {
		case r.Outcome == record.Delivered:
			if err := msg.Ack(); err != nil {
				d.opts.Logger.Warn("ack failed; the record will be sent again", "id", recs[i].ID, "error", err)
			}
			drained[recs[i].Topic]++
		case reason.InRecord():
			d.deadLetter(ctx, msg, recs[i].Topic, reason, r.Err.Error(), true)
		default:
			// A condition that heals: the record stays buffered and is
			// tried again with backoff.
			_ = msg.NakWithDelay(retryDelay(msg))
			m.retried.WithLabelValues(d.opts.Consumer, string(reason)).Inc()
			held[recs[i].Topic] = r.Err
		}
	}
	return !errors.Is(err, breaker.ErrFailing)
}

// retryDelay backs off with the number of deliveries: 1s, 2s, 4s, 8s,
// then every 10s, so that a record is tried again soon after Kafka is back.
func retryDelay(msg jetstream.Msg) time.Duration {
	n := uint64(1)
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 0 {
		n = md.NumDelivered
	}
	d := time.Second << min(n-1, 4)
	return min(d, 10*time.Second)
}

// deadLetter moves msg to the dead-letter subject with its reason in a
// header, then acknowledges it, and says whether it did. If the dead
// letter cannot be stored nothing is dropped: with nak the message is
// sent again later, else the caller keeps it.
func (d *Drainer) deadLetter(ctx context.Context, msg jetstream.Msg, topic string, reason record.Reason, detail string, nak bool) bool {
	dl := &nats.Msg{
		Subject: d.subjects.For(d.opts.DeadLetter, topic),
		Data:    msg.Data(),
		Header: nats.Header{
			spill.HeaderReason: []string{d.opts.ReasonPrefix + string(reason) + ": " + detail},
			spill.HeaderTopic:  []string{topic},
		},
	}
	if id := msg.Headers().Get(nats.MsgIdHdr); id != "" {
		dl.Header.Set(nats.MsgIdHdr, id+"-dlq")
	}
	if _, err := d.opts.JS.PublishMsg(ctx, dl); err != nil {
		d.opts.Logger.Error("cannot store a dead letter; the record stays buffered", "topic", topic, "error", err)
		if nak {
			_ = msg.NakWithDelay(10 * time.Second)
		}
		return false
	}
	if err := msg.Ack(); err != nil {
		d.opts.Logger.Warn("ack of a dead-lettered record failed", "error", err)
	}
	d.opts.Metrics.deadLettered.WithLabelValues(d.opts.Consumer, string(reason)).Inc()
	d.opts.Logger.Warn("record dead-lettered", "topic", topic, "reason", reason, "detail", detail, "subject", dl.Subject)
	return true
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
