// Package breaker produces to Kafka behind a circuit breaker. It is the one
// place that decides whether a produce counts as Kafka failing: the ingest's
// delivery path, each mirror and each drain produce through it, and each
// decides on its own what to do with the records Kafka did not take (spill
// them, dead-letter them, or leave them buffered).
//
// A produce counts as failed when Kafka fails a record with a reason that
// may pass, other than one topic's ACL refusing it (failing), and also
// when Kafka has not answered within Settings.SlowCall: a hung broker
// answers nothing, and waiting for its timeouts would keep the breaker
// closed while every client waits. The breaker opens after
// Settings.Fails failed produces in a row, or when the share of failed
// produces in its window (Settings.Interval) reaches Settings.FailureRate
// after Settings.MinCalls produces, as resilience4j's slow-call and failure
// rate thresholds do.
//
// The produce runs apart from the caller's wait: a caller that stops
// waiting (its client left, the wait passed Options.MaxWait, or the
// breaker opened) withdraws its records not yet sent, which Kafka then
// never gets, and leaves those on the wire to Kafka until it answers or
// the producer's own timeout passes, so that what the breaker learns is
// Kafka's answer, never the client's patience.
package breaker

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/sony/gobreaker/v2"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// State is a breaker's state. Its numbers are the ones the state gauges
// export: 0 closed, 1 half-open, 2 open.
type State int

// The breaker's states.
const (
	Closed   State = State(gobreaker.StateClosed)
	HalfOpen State = State(gobreaker.StateHalfOpen)
	Open     State = State(gobreaker.StateOpen)
)

// String is the state's name as the logs and metric labels spell it.
func (s State) String() string { return gobreaker.State(s).String() }

// ErrOpen is returned when Kafka was not tried: the breaker is open, or
// half-open with its probes already in flight.
var ErrOpen = errors.New("circuit breaker open: Kafka not tried")

// ErrFailing is returned when Kafka failed some record with a reason that
// may pass (unavailable, timeout): the produce counts against Kafka.
var ErrFailing = errors.New("kafka failed records with a retriable error")

// ErrStoppedWaiting is returned when the caller stopped waiting before
// Kafka answered: its context ended, Options.MaxWait passed, or the
// breaker opened. A record Kafka had not answered then fails with
// ReasonTimeout: withdrawn, never sent (its error wraps
// record.ErrWithdrawn), or on the wire, and Kafka may still take it: such a
// record spilled after this can arrive twice.
var ErrStoppedWaiting = errors.New("stopped waiting for Kafka; the records may still arrive")

// errSlow reports a produce not answered within Settings.SlowCall,
// errStopped one that ended because Options.Stop did, and errNotSent one
// whose records were all withdrawn: the first counts as a failure, the
// others as nothing.
var (
	errSlow    = errors.New("kafka did not answer within producer.cb.slow_call")
	errStopped = errors.New("produce stopped at shutdown")
	errNotSent = errors.New("every record was withdrawn before it was sent")
)

// Kafka is what the breaker guards (producer.Producer). Start queues recs
// and calls done once, with one result per record, when Kafka has answered
// each or the producer's own timeout passed. The withdraw it returns is
// for a caller that stops waiting, called at most once: it takes back the
// records not yet sent, which then fail with record.ErrWithdrawn and are
// never sent, and returns the results as they stand (those on the wire
// fail with ReasonTimeout), or nil when done was called already. done is
// still called once Kafka answered the records sent. StartNow is Start
// for records that are a batch already: they do not wait linger.ms for
// more (WithoutLinger).
type Kafka interface {
	Start(recs []record.Record, done func([]record.Result)) (withdraw func() []record.Result)
	StartNow(recs []record.Record, done func([]record.Result)) (withdraw func() []record.Result)
}

type withoutLingerKey struct{}

// WithoutLinger marks the produces made with ctx as batches already: the
// caller's records go to Kafka without waiting linger.ms for more
// (Kafka.StartNow). The Kafka listener gives it: a client's produce
// request is a batch the client lingered for, and the listener delivers
// one group of a connection's requests at a time, so nothing more from
// that connection reaches the producer while the group waits.
func WithoutLinger(ctx context.Context) context.Context {
	return context.WithValue(ctx, withoutLingerKey{}, true)
}

// Options configure a Producer.
type Options struct {
	// Name names the breaker in its logs ("kafka", "mirror NAME").
	Name     string
	Settings config.Breaker
	// MaxWait bounds a caller's wait for Kafka: after it, or as soon as
	// the breaker opens, Produce returns ErrStoppedWaiting. 0: the caller
	// waits for Kafka's answer (bounded by the producer's own timeout),
	// as a drain does, which has no client waiting.
	MaxWait time.Duration
	// Stop ends the waits still running (shutdown), and what Kafka then
	// answers is not counted; nil: never.
	Stop   context.Context
	Logger *slog.Logger
	// OnStateChange is called on every change of state, for the metrics.
	OnStateChange func(from, to State)
}

// Producer is a Kafka producer behind a circuit breaker.
type Producer struct {
	kafka   Kafka
	slow    time.Duration
	maxWait time.Duration
	stop    context.Context
	breaker *gobreaker.TwoStepCircuitBreaker[[]record.Result]
	notOpen atomic.Pointer[chan struct{}] // closed when the breaker opens
	mu      sync.Mutex                    // orders the swaps of notOpen
}

// New returns kafka behind a breaker (see the package comment): it opens
// on Settings.Fails failures in a row or Settings.FailureRate of the
// produces in its window, stays open for Settings.Timeout, then lets
// Settings.Requests produces probe Kafka.
func New(kafka Kafka, o Options) *Producer {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Stop == nil {
		o.Stop = context.Background()
	}
	s := o.Settings
	p := &Producer{kafka: kafka, slow: s.SlowCall, maxWait: o.MaxWait, stop: o.Stop}
	ch := make(chan struct{})
	p.notOpen.Store(&ch)
	var bucket time.Duration
	if s.Interval > 0 {
		bucket = max(s.Interval/10, time.Millisecond) // a rolling window of 10 buckets
	}
	p.breaker = gobreaker.NewTwoStepCircuitBreaker[[]record.Result](gobreaker.Settings{
		Name:         o.Name,
		MaxRequests:  s.Requests,
		Interval:     s.Interval,
		BucketPeriod: bucket,
		Timeout:      s.Timeout,
		ReadyToTrip:  func(c gobreaker.Counts) bool { return trips(s, c) },
		IsExcluded:   func(err error) bool { return errors.Is(err, errStopped) || errors.Is(err, errNotSent) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			p.changed(State(to))
			if o.OnStateChange != nil {
				o.OnStateChange(State(from), State(to))
			}
			o.Logger.Warn(o.Name+" circuit breaker changed state", "from", from.String(), "to", to.String())
		},
	})
	return p
}

// trips says whether counts, a closed breaker's window, open it.
func trips(s config.Breaker, c gobreaker.Counts) bool {
	if s.Fails > 0 && c.ConsecutiveFailures >= s.Fails {
		return true
	}
	done := c.TotalSuccesses + c.TotalFailures
	return s.FailureRate > 0 && done > 0 && done >= s.MinCalls &&
		float64(c.TotalFailures) >= s.FailureRate*float64(done)
}

// changed wakes the callers waiting when the breaker opens. It runs under
// gobreaker's lock, so the changes come in order.
func (p *Producer) changed(to State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := p.notOpen.Load()
	switch {
	case to == Open:
		close(*ch)
	case isClosed(*ch):
		fresh := make(chan struct{})
		p.notOpen.Store(&fresh)
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// State is the breaker's state now.
func (p *Producer) State() State { return State(p.breaker.State()) }

// Produce produces recs behind the breaker and returns one result per
// record. When the breaker refuses, Kafka is not tried: every record fails
// with ReasonUnavailable and the error is ErrOpen. When Kafka failed some
// record with a retriable reason the error is ErrFailing. When the caller
// stopped waiting first (ctx ended, MaxWait passed, the breaker opened),
// every record fails with ReasonTimeout and the error is
// ErrStoppedWaiting; the produce goes on, and Kafka's answer, not the
// caller's leaving, is what the breaker counts.
func (p *Producer) Produce(ctx context.Context, recs []record.Record) ([]record.Result, error) {
	if ctx.Err() != nil { // nobody waits: Kafka is not tried, and nothing counted
		return failAll(recs, record.ReasonTimeout, "the caller stopped waiting before Kafka was tried", ctx.Err()), ErrStoppedWaiting
	}
	done, err := p.breaker.Allow()
	if err != nil {
		return refused(recs), ErrOpen
	}
	var once sync.Once
	report := func(err error) { once.Do(func() { done(err) }) }
	var slow *time.Timer
	if p.slow > 0 { // 0: no slow calls, Kafka's answer only
		slow = time.AfterFunc(p.slow, func() { report(errSlow) })
	}

	// The produce is the breaker's, not the caller's: it goes on when the
	// caller stops waiting, and Kafka's answer is what counts.
	type answer struct {
		res []record.Result
		err error
	}
	answered := make(chan answer, 1)
	start := p.kafka.Start
	if ctx.Value(withoutLingerKey{}) != nil {
		start = p.kafka.StartNow
	}
	withdraw := start(recs, func(res []record.Result) {
		var err error
		if Failing(res) {
			err = ErrFailing
		}
		if slow != nil {
			slow.Stop()
		}
		counted := err
		switch {
		case err != nil && p.stop.Err() != nil:
			counted = errStopped // shutdown may have cut it: that says nothing about Kafka
		case !slices.ContainsFunc(res, sentOrRefused):
			counted = errNotSent // Kafka had none of it: it says nothing either
		}
		report(counted) // before the answer, so that the caller finds it counted
		answered <- answer{res, err}
	})

	var maxWait <-chan time.Time
	var opened <-chan struct{}
	if p.maxWait > 0 {
		t := time.NewTimer(p.maxWait)
		defer t.Stop()
		maxWait = t.C
		opened = *p.notOpen.Load()
	}
	select {
	case a := <-answered:
		return a.res, a.err
	case <-ctx.Done():
	case <-maxWait:
	case <-opened:
	case <-p.stop.Done():
	}
	// The records not yet sent are withdrawn before the caller spills
	// them, so that Kafka never gets them too.
	if res := withdraw(); res != nil {
		return res, ErrStoppedWaiting
	}
	a := <-answered // Kafka's answer came as the wait ended: better than none
	return a.res, a.err
}

// refused is the results of a produce the breaker did not let through.
func refused(recs []record.Record) []record.Result {
	return failAll(recs, record.ReasonUnavailable, "Kafka is failing (circuit breaker open)", nil)
}

func failAll(recs []record.Record, reason record.Reason, msg string, err error) []record.Result {
	results := make([]record.Result, len(recs))
	for i := range recs {
		results[i] = record.Fail(recs[i].Topic, &record.Error{Reason: reason, Message: msg, Err: err})
	}
	return results
}

// Failing says whether some record of results counts as Kafka failing
// (failing).
func Failing(results []record.Result) bool {
	return slices.ContainsFunc(results, failing)
}

// failing is the one rule for what counts against Kafka: a record Kafka
// failed with a reason that may pass (unavailable, timeout, Spillway's own
// credentials refused), unless the refusal is one topic's, or the record
// was withdrawn unsent. A topic's ACL (TOPIC_AUTHORIZATION_FAILED) says
// nothing about the other topics, and opening the breaker for it would
// spill them all; that topic's records are still spilled, one by one. A
// record too large or invalid never counts: its reason is not one that
// may pass.
func failing(r record.Result) bool {
	return r.Outcome == record.Failed && record.ReasonOf(r.Err).Retriable() &&
		!errors.Is(r.Err, kafka.TopicAuthorizationFailed) && !errors.Is(r.Err, record.ErrWithdrawn)
}

// sentOrRefused says whether r is not a withdrawn record's: Kafka had it,
// or it failed before it was queued.
func sentOrRefused(r record.Result) bool {
	return r.Outcome != record.Failed || !errors.Is(r.Err, record.ErrWithdrawn)
}
