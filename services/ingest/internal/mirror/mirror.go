// Package mirror copies the records of configured topics to a second Kafka
// cluster, off the primary path: a record is handed over once the primary
// path acknowledged it, and the client never waits for the mirror. Each
// mirror has its own producer and circuit breaker; the records it cannot
// take go to their own JetStream subject (PREFIX.mirror.NAME.TOPIC), which
// the resender drains to the mirror.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// QueueBatches is how many batches (one per request and mirror) may wait
// for a mirror; beyond it, copies are dropped and counted rather than
// slowing the primary path.
const QueueBatches = 4096

// closeGrace is how long Close lets a mirror take what is queued before
// it spills the rest.
const closeGrace = 2 * time.Second

// workers is how many batches each mirror sends at once.
const workers = 2

// Producer writes records to the mirror cluster.
type Producer interface {
	breaker.Kafka
	Close() error
}

// Buffer stores records in JetStream.
type Buffer interface {
	Publish(ctx context.Context, kind spill.Kind, recs []record.Record, reason string) []record.Result
	// Fill is how full the stream is, from 0 to 1.
	Fill(ctx context.Context) float64
}

// MaxStreamShare is how full the JetStream stream may be for a mirror to
// spill into it: beyond it, copies are dropped and counted, so that a long
// mirror outage cannot fill the stream the primary cluster's records need
// (a full stream refuses them with 507).
const MaxStreamShare = 0.5

// The outcomes of mirrored records, as metric labels.
const (
	OutcomeMirrored     = "mirrored"      // the mirror acknowledged it
	OutcomeSpilled      = "spilled"       // stored in JetStream for the resender to carry
	OutcomeDeadLettered = "dead_lettered" // the mirror will never take it (too large, invalid topic): in the dead-letter subject
	OutcomeDropped      = "dropped"       // the queue was full, or neither the mirror nor JetStream took it
)

// Metrics are the mirrors' metrics, one series per mirror.
type Metrics struct {
	records *prometheus.CounterVec
	queued  *prometheus.GaugeVec
	oldest  *prometheus.GaugeVec
	breaker *prometheus.GaugeVec
}

// NewMetrics registers the mirror metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		records: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_mirror_records_total",
			Help: "Records copied to a mirror cluster, per mirror and outcome: mirrored, spilled (to JetStream, for the resender), dead_lettered or dropped.",
		}, []string{"mirror", "outcome"}),
		queued: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_mirror_queued_records",
			Help: "Records acknowledged to clients and not yet mirrored or spilled, per mirror (the mirror's lag in this ingest).",
		}, []string{"mirror"}),
		oldest: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_mirror_lag_seconds",
			Help: "How long the last batch taken for the mirror had waited in this ingest; 0 when none waits.",
		}, []string{"mirror"}),
		breaker: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_mirror_breaker_state",
			Help: "The mirror's circuit breaker: 0 closed, 1 half-open, 2 open.",
		}, []string{"mirror"}),
	}
}

type batch struct {
	recs []record.Record
	at   time.Time
}

// Mirror copies records to one mirror cluster.
type Mirror struct {
	cfg      config.Mirror
	producer Producer
	buffer   Buffer            // nil: nothing to spill to
	kafka    *breaker.Producer // the producer, behind the mirror's breaker
	m        *Metrics
	logger   *slog.Logger
	timeout  time.Duration

	queue   chan batch
	closeMu sync.RWMutex
	closed  bool
	done    sync.WaitGroup
	// stopping ends at Close: a produce in flight stops waiting for the
	// mirror, and what is queued goes straight to JetStream.
	stopping context.Context
	stop     context.CancelFunc
}

// New starts a mirror's workers. The breaker settings are producer.cb's.
func New(cfg config.Mirror, producer Producer, buffer Buffer, cb config.Breaker, m *Metrics, logger *slog.Logger) *Mirror {
	mr := &Mirror{
		cfg: cfg, producer: producer, buffer: buffer, m: m, timeout: cfg.Kafka.MessageTimeout,
		logger: logger.With("mirror", cfg.Name), queue: make(chan batch, QueueBatches),
	}
	for _, o := range []string{OutcomeMirrored, OutcomeSpilled, OutcomeDeadLettered, OutcomeDropped} {
		m.records.WithLabelValues(cfg.Name, o)
	}
	m.queued.WithLabelValues(cfg.Name).Set(0)
	m.oldest.WithLabelValues(cfg.Name).Set(0)
	m.breaker.WithLabelValues(cfg.Name).Set(0)
	mr.kafka = breaker.New(producer, breaker.Options{
		Name:     "mirror",
		Settings: cb,
		Logger:   mr.logger,
		OnStateChange: func(_, to breaker.State) {
			m.breaker.WithLabelValues(cfg.Name).Set(float64(to))
		},
	})
	mr.stopping, mr.stop = context.WithCancel(context.Background())
	for range workers {
		mr.done.Add(1)
		go mr.work()
	}
	return mr
}

// Name is the mirror's name.
func (mr *Mirror) Name() string { return mr.cfg.Name }

// Matches says whether the records of topic (a Kafka topic) are mirrored.
func (mr *Mirror) Matches(topic string) bool { return config.MatchTopic(mr.cfg.Topics, topic) }

// Offer hands recs over to be mirrored, without waiting: when the queue is
// full they are dropped and counted. recs must not be changed afterwards.
func (mr *Mirror) Offer(recs []record.Record) {
	if len(recs) == 0 {
		return
	}
	mr.closeMu.RLock()
	defer mr.closeMu.RUnlock()
	if mr.closed {
		mr.drop(len(recs), "the ingest is shutting down")
		return
	}
	select {
	case mr.queue <- batch{recs: recs, at: time.Now()}:
		mr.m.queued.WithLabelValues(mr.cfg.Name).Add(float64(len(recs)))
	default:
		mr.drop(len(recs), fmt.Sprintf("the mirror's queue is full (%d batches)", QueueBatches))
	}
}

func (mr *Mirror) drop(n int, why string) {
	mr.m.records.WithLabelValues(mr.cfg.Name, OutcomeDropped).Add(float64(n))
	mr.logger.Warn("mirror copies dropped", "records", n, "why", why)
}

func (mr *Mirror) work() {
	defer mr.done.Done()
	for b := range mr.queue {
		// The queue is first in, first out: the batch taken is the oldest.
		mr.m.oldest.WithLabelValues(mr.cfg.Name).Set(time.Since(b.at).Seconds())
		if mr.stopping.Err() != nil {
			mr.spill(spill.Mirror(mr.cfg.Name), b.recs, "shutdown")
		} else {
			mr.send(b.recs)
		}
		mr.m.queued.WithLabelValues(mr.cfg.Name).Sub(float64(len(b.recs)))
		if len(mr.queue) == 0 {
			mr.m.oldest.WithLabelValues(mr.cfg.Name).Set(0)
		}
	}
}

// send produces recs to the mirror behind its breaker; what the mirror
// could not take now is spilled, what it will never take (a fault in the
// record itself) dead-lettered.
func (mr *Mirror) send(recs []record.Record) {
	ctx, cancel := context.WithTimeout(mr.stopping, mr.timeout+time.Second)
	defer cancel()
	results, err := mr.kafka.Produce(ctx, recs)
	if errors.Is(err, breaker.ErrOpen) {
		mr.spill(spill.Mirror(mr.cfg.Name), recs, "mirror_breaker_open")
		return
	}
	var retry []record.Record
	never := map[string][]record.Record{} // by reason
	mirrored := 0
	reason := ""
	for i, r := range results {
		switch {
		case r.Outcome == record.Delivered:
			mirrored++
		case !record.ReasonOf(r.Err).InRecord() || mr.stopping.Err() != nil:
			// A condition that heals (the mirror unavailable, refusing
			// Spillway's credentials, the topic missing there): the
			// resender tries again.
			retry = append(retry, recs[i])
			reason = string(record.ReasonOf(r.Err))
		default:
			why := fmt.Sprintf("mirror %s: %s: %s", mr.cfg.Name, record.ReasonOf(r.Err), record.ClientMessage(r.Err))
			never[why] = append(never[why], recs[i])
			mr.logger.Warn("the mirror will never take a record; dead-lettering it", "topic", recs[i].Topic, "id", recs[i].ID, "error", record.ClientMessage(r.Err))
		}
	}
	mr.m.records.WithLabelValues(mr.cfg.Name, OutcomeMirrored).Add(float64(mirrored))
	if len(retry) > 0 {
		mr.spill(spill.Mirror(mr.cfg.Name), retry, "mirror_"+reason)
	}
	for why, recs := range never {
		mr.spill(spill.MirrorDeadLetter(mr.cfg.Name), recs, why)
	}
}

// spill stores recs as kind in JetStream and counts them.
func (mr *Mirror) spill(kind spill.Kind, recs []record.Record, reason string) {
	outcome := OutcomeSpilled
	if kind == spill.MirrorDeadLetter(mr.cfg.Name) {
		outcome = OutcomeDeadLettered
	}
	if mr.buffer == nil {
		mr.drop(len(recs), "the mirror failed and there is no JetStream buffer")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if fill := mr.buffer.Fill(ctx); outcome == OutcomeSpilled && fill >= MaxStreamShare {
		mr.drop(len(recs), fmt.Sprintf("the JetStream stream is %.0f%% full: the rest is kept for the primary cluster's records", 100*fill))
		return
	}
	stored := 0
	for _, r := range mr.buffer.Publish(ctx, kind, recs, reason) {
		if r.Outcome == record.Buffered {
			stored++
		}
	}
	mr.m.records.WithLabelValues(mr.cfg.Name, outcome).Add(float64(stored))
	if stored < len(recs) {
		mr.drop(len(recs)-stored, "neither the mirror nor JetStream took them")
	}
}

// Close stops taking records, stops waiting for the mirror, and spills
// what is queued to JetStream, until ctx ends; the copies still queued
// then are counted as dropped. It closes the producer.
func (mr *Mirror) Close(ctx context.Context) error {
	mr.closeMu.Lock()
	if !mr.closed {
		mr.closed = true
		close(mr.queue)
	}
	mr.closeMu.Unlock()
	// A healthy mirror gets a moment to take what is queued; then nothing
	// waits for it any more, and the rest goes to JetStream.
	grace := closeGrace
	if deadline, ok := ctx.Deadline(); ok {
		grace = min(grace, time.Until(deadline)/2)
	}
	stopAt := time.AfterFunc(grace, mr.stop)
	defer stopAt.Stop()
	defer mr.stop()
	finished := make(chan struct{})
	go func() {
		mr.done.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-ctx.Done():
		left := 0
		for b := range mr.queue { // closed: this ends, and the workers get no more
			left += len(b.recs)
		}
		mr.drop(left, "the ingest stopped before they could be spilled")
		return fmt.Errorf("mirror %s: %d copies still queued at the deadline: %w", mr.cfg.Name, left, ctx.Err())
	}
	return mr.producer.Close()
}
