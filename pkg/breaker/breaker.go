// Package breaker produces to Kafka behind a circuit breaker. It is the one
// place that decides whether a produce counts as Kafka failing: the ingest's
// delivery path, each mirror and each drain produce through it, and each
// decides on its own what to do with the records Kafka did not take (spill
// them, dead-letter them, or leave them buffered).
package breaker

import (
	"context"
	"errors"
	"log/slog"
	"slices"

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

// Kafka is what the breaker guards.
type Kafka interface {
	Produce(ctx context.Context, recs []record.Record) []record.Result
}

// Options configure a Producer.
type Options struct {
	// Name names the breaker in its logs ("kafka", "mirror NAME").
	Name     string
	Settings config.Breaker
	Logger   *slog.Logger
	// OnStateChange is called on every change of state, for the metrics.
	OnStateChange func(from, to State)
}

// Producer is a Kafka producer behind a circuit breaker.
type Producer struct {
	kafka   Kafka
	breaker *gobreaker.CircuitBreaker[[]record.Result]
}

// New returns kafka behind a breaker that opens after Settings.Fails
// failed produces in a row, stays open for Settings.Timeout, then lets
// Settings.Requests produces probe Kafka.
func New(kafka Kafka, o Options) *Producer {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	fails := o.Settings.Fails
	return &Producer{
		kafka: kafka,
		breaker: gobreaker.NewCircuitBreaker[[]record.Result](gobreaker.Settings{
			Name:        o.Name,
			MaxRequests: o.Settings.Requests,
			Interval:    o.Settings.Interval,
			Timeout:     o.Settings.Timeout,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= fails },
			OnStateChange: func(_ string, from, to gobreaker.State) {
				if o.OnStateChange != nil {
					o.OnStateChange(State(from), State(to))
				}
				o.Logger.Warn(o.Name+" circuit breaker changed state", "from", from.String(), "to", to.String())
			},
		}),
	}
}

// State is the breaker's state now.
func (p *Producer) State() State { return State(p.breaker.State()) }

// Produce produces recs behind the breaker and returns one result per
// record. When the breaker refuses, Kafka is not tried: every record fails
// with ReasonUnavailable and the error is ErrOpen. When Kafka failed some
// record with a retriable reason, the produce counts against Kafka and the
// error is ErrFailing; unless ctx ended first, because then the caller
// stopped waiting (the client left, or shutdown came), which says nothing
// about Kafka.
func (p *Producer) Produce(ctx context.Context, recs []record.Record) ([]record.Result, error) {
	results, err := p.breaker.Execute(func() ([]record.Result, error) {
		res := p.kafka.Produce(ctx, recs)
		if ctx.Err() == nil && Failing(res) {
			return res, ErrFailing
		}
		return res, nil
	})
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		results = make([]record.Result, len(recs))
		for i := range recs {
			results[i] = record.Fail(recs[i].Topic, &record.Error{
				Reason:  record.ReasonUnavailable,
				Message: "Kafka is failing (circuit breaker open)",
			})
		}
		return results, ErrOpen
	}
	return results, err
}

// Failing says whether Kafka failed some record of results with a reason
// that may pass.
func Failing(results []record.Result) bool {
	return slices.ContainsFunc(results, func(r record.Result) bool {
		return r.Outcome == record.Failed && record.ReasonOf(r.Err).Retriable()
	})
}
