package breaker_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// kafka answers every record with the reason it holds; "" delivers. While
// hung is set it answers nothing until hung is closed, as a stopped
// broker does; its records are then on the wire, or, with queued set,
// still queued: a withdrawal takes those back.
type kafka struct {
	reason atomic.Value // record.Reason
	cause  atomic.Value // error: Kafka's error under the reason, if any
	calls  atomic.Int64
	now    atomic.Int64 // of calls, those made by StartNow
	hung   atomic.Pointer[chan struct{}]
	queued atomic.Bool
}

// hang makes Kafka answer nothing until the returned function is called.
func (k *kafka) hang() (resume func()) {
	ch := make(chan struct{})
	k.hung.Store(&ch)
	return sync.OnceFunc(func() { k.hung.Store(nil); close(ch) })
}

func (k *kafka) StartNow(recs []record.Record, done func([]record.Result)) func() []record.Result {
	k.now.Add(1)
	return k.Start(recs, done)
}

func (k *kafka) Start(recs []record.Record, done func([]record.Result)) func() []record.Result {
	k.calls.Add(1)
	ch := k.hung.Load()
	if ch == nil {
		done(k.answer(recs))
		return func() []record.Result { return nil }
	}
	var (
		mu       sync.Mutex
		answered bool // done was called
	)
	finish := func(res []record.Result) bool {
		mu.Lock()
		defer mu.Unlock()
		if answered {
			return false
		}
		answered = true
		done(res)
		return true
	}
	go func() {
		<-*ch
		finish(k.answer(recs))
	}()
	queued := k.queued.Load()
	return func() []record.Result {
		out := make([]record.Result, len(recs))
		for i, r := range recs {
			out[i] = record.Fail(r.Topic, &record.Error{Reason: record.ReasonTimeout, Message: "may still arrive"})
			if queued {
				out[i] = record.Fail(r.Topic, &record.Error{Reason: record.ReasonTimeout, Message: "withdrawn", Err: record.ErrWithdrawn})
			}
		}
		if queued && !finish(out) { // nothing on the wire: done at once
			return nil
		}
		return out
	}
}

func (k *kafka) answer(recs []record.Record) []record.Result {
	reason, _ := k.reason.Load().(record.Reason)
	out := make([]record.Result, len(recs))
	for i, r := range recs {
		if reason == "" {
			out[i] = record.Result{Outcome: record.Delivered, Topic: r.Topic}
			continue
		}
		cause, _ := k.cause.Load().(error)
		out[i] = record.Fail(r.Topic, &record.Error{Reason: reason, Message: "kafka says " + string(reason), Err: cause})
	}
	return out
}

func recs(n int) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		out[i] = record.Record{Topic: "t", Value: []byte("v")}
	}
	return out
}

func TestOpensOnRetriableFailuresAndClosesAfterTimeout(t *testing.T) {
	k := &kafka{}
	k.reason.Store(record.ReasonUnavailable)
	var changes []string
	p := breaker.New(k, breaker.Options{
		Name:          "kafka",
		Settings:      config.Breaker{Fails: 2, Requests: 1, Timeout: 50 * time.Millisecond},
		OnStateChange: func(from, to breaker.State) { changes = append(changes, from.String()+">"+to.String()) },
	})
	ctx := t.Context()

	for range 2 {
		res, err := p.Produce(ctx, recs(2))
		require.ErrorIs(t, err, breaker.ErrFailing)
		assert.Equal(t, record.Failed, res[0].Outcome)
	}
	assert.Equal(t, breaker.Open, p.State())

	res, err := p.Produce(ctx, recs(3))
	require.ErrorIs(t, err, breaker.ErrOpen)
	require.Len(t, res, 3)
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(res[2].Err))
	assert.Equal(t, int64(2), k.calls.Load(), "an open breaker does not try Kafka")

	k.reason.Store(record.Reason(""))
	require.Eventually(t, func() bool { return p.State() == breaker.HalfOpen }, 5*time.Second, 10*time.Millisecond)
	res, err = p.Produce(ctx, recs(1))
	require.NoError(t, err)
	assert.Equal(t, record.Delivered, res[0].Outcome)
	assert.Equal(t, breaker.Closed, p.State())
	assert.Equal(t, []string{"closed>open", "open>half-open", "half-open>closed"}, changes)
}

func TestFailuresThatWillNotPassDoNotOpen(t *testing.T) {
	k := &kafka{}
	k.reason.Store(record.ReasonTooLarge)
	p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 1, Requests: 1, Timeout: time.Minute}})
	for range 5 {
		res, err := p.Produce(t.Context(), recs(1))
		require.NoError(t, err)
		assert.Equal(t, record.ReasonTooLarge, record.ReasonOf(res[0].Err))
	}
	assert.Equal(t, breaker.Closed, p.State())
}

// TestOneTopicsACLDoesNotOpen: Kafka refusing one topic to Spillway
// (TOPIC_AUTHORIZATION_FAILED) counts for nothing, however often; Kafka
// refusing Spillway itself (its SASL login, a cluster ACL) opens the
// breaker as Kafka being unavailable does.
func TestOneTopicsACLDoesNotOpen(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cause error
		want  breaker.State
	}{
		{"topic", kafkago.TopicAuthorizationFailed, breaker.Closed},
		{"sasl", kafkago.SASLAuthenticationFailed, breaker.Open},
		{"cluster", kafkago.ClusterAuthorizationFailed, breaker.Open},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &kafka{}
			k.reason.Store(record.ReasonNotAuthorized)
			k.cause.Store(tc.cause)
			p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 5, Requests: 1, Timeout: time.Minute}})
			for range 5 {
				res, _ := p.Produce(t.Context(), recs(1))
				require.Equal(t, record.ReasonNotAuthorized, record.ReasonOf(res[0].Err))
			}
			assert.Equal(t, tc.want, p.State())
		})
	}
}

// produce runs p.Produce in the background and hands back its error.
func produce(ctx context.Context, p *breaker.Producer, n int) <-chan error {
	out := make(chan error, 1)
	go func() {
		_, err := p.Produce(ctx, recs(n))
		out <- err
	}()
	return out
}

// TestSlowCallsOpenTheBreaker: with Kafka hung, nothing fails and nothing
// succeeds; the produces that pass slow_call count as failed while Kafka
// still holds them, the breaker opens, and the callers waiting stop
// waiting then, long before max_wait.
func TestSlowCallsOpenTheBreaker(t *testing.T) {
	k := &kafka{}
	resume := k.hang()
	t.Cleanup(resume)
	p := breaker.New(k, breaker.Options{
		Settings: config.Breaker{Fails: 3, Requests: 1, Timeout: time.Minute, SlowCall: 50 * time.Millisecond},
		MaxWait:  time.Hour,
	})
	var waits []<-chan error
	for range 3 {
		waits = append(waits, produce(t.Context(), p, 1))
	}
	for i, w := range waits {
		select {
		case err := <-w:
			require.ErrorIs(t, err, breaker.ErrStoppedWaiting, "caller %d", i)
		case <-time.After(10 * time.Second):
			t.Fatalf("caller %d still waits for a hung Kafka", i)
		}
	}
	assert.Equal(t, breaker.Open, p.State(), "three slow produces in a row open it while Kafka still holds them")
	res, err := p.Produce(t.Context(), recs(1))
	require.ErrorIs(t, err, breaker.ErrOpen)
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(res[0].Err))
	assert.Equal(t, int64(3), k.calls.Load())
}

// TestFailureRateOpensTheBreaker: failures that never come in a row still
// open the breaker once they are failure_rate of min_calls produces.
func TestFailureRateOpensTheBreaker(t *testing.T) {
	k := &kafka{}
	p := breaker.New(k, breaker.Options{Settings: config.Breaker{
		Fails: 100, Requests: 1, Timeout: time.Minute, SlowCall: time.Minute,
		Interval: time.Minute, FailureRate: 0.5, MinCalls: 6,
	}})
	for i := range 6 {
		require.Equal(t, breaker.Closed, p.State(), "produce %d", i)
		reason := record.Reason("")
		if i%2 == 1 {
			reason = record.ReasonUnavailable
		}
		k.reason.Store(reason)
		_, _ = p.Produce(t.Context(), recs(1))
	}
	assert.Equal(t, breaker.Open, p.State(), "3 failed of 6")
}

// TestClientLeavingIsNeutral: a caller that stops waiting counts neither
// way; the produce goes on, and Kafka's answer is what counts.
func TestClientLeavingIsNeutral(t *testing.T) {
	for _, tc := range []struct {
		kafka record.Reason
		want  breaker.State
	}{
		{kafka: "", want: breaker.Closed},
		{kafka: record.ReasonUnavailable, want: breaker.Open},
	} {
		t.Run("kafka answers "+string(tc.kafka), func(t *testing.T) {
			k := &kafka{}
			k.reason.Store(tc.kafka)
			resume := k.hang()
			t.Cleanup(resume)
			p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 1, Requests: 1, Timeout: time.Minute, SlowCall: time.Minute}})
			ctx, leave := context.WithCancel(t.Context())
			wait := produce(ctx, p, 1)
			require.Eventually(t, func() bool { return k.calls.Load() == 1 }, 5*time.Second, time.Millisecond)
			leave()
			require.ErrorIs(t, <-wait, breaker.ErrStoppedWaiting)
			assert.Equal(t, breaker.Closed, p.State(), "the client leaving is not Kafka failing")
			resume()
			require.Eventually(t, func() bool { return p.State() == tc.want }, 5*time.Second, time.Millisecond, "Kafka's answer counts")
		})
	}
}

// TestWithdrawnProduceCountsForNothing: a caller that stops waiting while
// its records are still queued withdraws them. They fail with
// record.ErrWithdrawn, Kafka never gets them, and the produce counts
// neither way, in any state: a withdrawn half-open probe frees its place
// for the next one.
func TestWithdrawnProduceCountsForNothing(t *testing.T) {
	k := &kafka{}
	k.reason.Store(record.ReasonUnavailable)
	p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 1, Requests: 1, Timeout: 50 * time.Millisecond, SlowCall: time.Minute}})
	resume := k.hang()
	t.Cleanup(resume)
	k.queued.Store(true)
	ctx, leave := context.WithCancel(t.Context())
	leave()
	res, err := p.Produce(ctx, recs(1))
	require.ErrorIs(t, err, breaker.ErrStoppedWaiting, "a caller gone before Kafka is tried")
	assert.Equal(t, record.ReasonTimeout, record.ReasonOf(res[0].Err))

	ctx, leave = context.WithCancel(t.Context())
	wait := make(chan []record.Result, 1)
	go func() { res, _ := p.Produce(ctx, recs(2)); wait <- res }()
	require.Eventually(t, func() bool { return k.calls.Load() == 1 }, 5*time.Second, time.Millisecond)
	leave()
	res = <-wait
	require.Len(t, res, 2)
	for _, r := range res {
		assert.ErrorIs(t, r.Err, record.ErrWithdrawn)
	}
	assert.Equal(t, breaker.Closed, p.State(), "withdrawn records say nothing about Kafka")

	resume()
	k.queued.Store(false)
	_, err = p.Produce(t.Context(), recs(1))
	require.ErrorIs(t, err, breaker.ErrFailing)
	require.Eventually(t, func() bool { return p.State() == breaker.HalfOpen }, 5*time.Second, time.Millisecond)
	resume = k.hang()
	t.Cleanup(resume)
	k.queued.Store(true)
	ctx, leave = context.WithCancel(t.Context())
	go func() { res, _ := p.Produce(ctx, recs(1)); wait <- res }()
	require.Eventually(t, func() bool { return k.calls.Load() == 3 }, 5*time.Second, time.Millisecond)
	leave()
	assert.ErrorIs(t, (<-wait)[0].Err, record.ErrWithdrawn)
	assert.Equal(t, breaker.HalfOpen, p.State())
	resume()
	k.reason.Store(record.Reason(""))
	res, err = p.Produce(t.Context(), recs(1))
	require.NoError(t, err, "the withdrawn probe's place is free: a new probe goes")
	assert.Equal(t, record.Delivered, res[0].Outcome)
	assert.Equal(t, breaker.Closed, p.State())
}

// TestHalfOpenProbeIsDecidedByKafka: the probe's client leaving neither
// closes the breaker nor wedges it half-open; Kafka's answer decides, and
// a probe Kafka leaves unanswered past slow_call opens it again.
func TestHalfOpenProbeIsDecidedByKafka(t *testing.T) {
	k := &kafka{}
	k.reason.Store(record.ReasonUnavailable)
	p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 1, Requests: 1, Timeout: 50 * time.Millisecond, SlowCall: time.Minute}})
	_, err := p.Produce(t.Context(), recs(1))
	require.ErrorIs(t, err, breaker.ErrFailing)
	require.Equal(t, breaker.Open, p.State())
	require.Eventually(t, func() bool { return p.State() == breaker.HalfOpen }, 5*time.Second, time.Millisecond)

	k.reason.Store(record.Reason(""))
	resume := k.hang()
	t.Cleanup(resume)
	ctx, leave := context.WithCancel(t.Context())
	probe := produce(ctx, p, 1)
	require.Eventually(t, func() bool { return k.calls.Load() == 2 }, 5*time.Second, time.Millisecond)
	leave()
	require.ErrorIs(t, <-probe, breaker.ErrStoppedWaiting)
	assert.Equal(t, breaker.HalfOpen, p.State(), "the probe's client leaving decides nothing")
	_, err = p.Produce(t.Context(), recs(1))
	require.ErrorIs(t, err, breaker.ErrOpen, "the probe is still Kafka's: no second one")
	resume()
	require.Eventually(t, func() bool { return p.State() == breaker.Closed }, 5*time.Second, time.Millisecond, "Kafka took the probe")
}

// TestHalfOpenProbeUnansweredOpensAgain: a hung Kafka does not wedge the
// breaker half-open: the probe passes slow_call and opens it again.
func TestHalfOpenProbeUnansweredOpensAgain(t *testing.T) {
	k := &kafka{}
	k.reason.Store(record.ReasonUnavailable)
	p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 1, Requests: 1, Timeout: 50 * time.Millisecond, SlowCall: 50 * time.Millisecond}})
	_, err := p.Produce(t.Context(), recs(1))
	require.ErrorIs(t, err, breaker.ErrFailing)
	require.Eventually(t, func() bool { return p.State() == breaker.HalfOpen }, 5*time.Second, time.Millisecond)
	resume := k.hang()
	t.Cleanup(resume)
	ctx, leave := context.WithCancel(t.Context())
	defer leave()
	probe := produce(ctx, p, 1)
	require.Eventually(t, func() bool { return k.calls.Load() == 2 }, 5*time.Second, time.Millisecond)
	leave()
	require.ErrorIs(t, <-probe, breaker.ErrStoppedWaiting)
	var seen []breaker.State
	require.Eventually(t, func() bool {
		s := p.State()
		if len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
		return slices.Contains(seen, breaker.Open) && s == breaker.HalfOpen
	}, 5*time.Second, time.Millisecond, "open again, then half-open: a new probe may go")
}

// TestWithoutLingerStartsNow: a produce made with WithoutLinger's context
// (or one derived from it) goes to Kafka by StartNow, any other by Start.
func TestWithoutLingerStartsNow(t *testing.T) {
	k := &kafka{}
	p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 5, Requests: 1, Timeout: time.Minute}})
	_, err := p.Produce(t.Context(), recs(1))
	require.NoError(t, err)
	assert.Zero(t, k.now.Load(), "a produce with a plain context lingers")
	type other struct{}
	ctx := context.WithValue(breaker.WithoutLinger(t.Context()), other{}, 1)
	_, err = p.Produce(ctx, recs(1))
	require.NoError(t, err)
	assert.EqualValues(t, 1, k.now.Load(), "a produce with WithoutLinger's context does not")
	assert.EqualValues(t, 2, k.calls.Load())
}
