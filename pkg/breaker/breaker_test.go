package breaker_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// kafka answers every record with the reason it holds; "" delivers. While
// hung is set it answers nothing until hung is closed, as a stopped
// broker does.
type kafka struct {
	reason atomic.Value // record.Reason
	calls  atomic.Int64
	hung   atomic.Pointer[chan struct{}]
}

// hang makes Kafka answer nothing until the returned function is called.
func (k *kafka) hang() (resume func()) {
	ch := make(chan struct{})
	k.hung.Store(&ch)
	return sync.OnceFunc(func() { k.hung.Store(nil); close(ch) })
}

func (k *kafka) Start(recs []record.Record, done func([]record.Result)) {
	k.calls.Add(1)
	if ch := k.hung.Load(); ch != nil {
		go func() {
			<-*ch
			done(k.answer(recs))
		}()
		return
	}
	done(k.answer(recs))
}

func (k *kafka) answer(recs []record.Record) []record.Result {
	reason, _ := k.reason.Load().(record.Reason)
	out := make([]record.Result, len(recs))
	for i, r := range recs {
		if reason == "" {
			out[i] = record.Result{Outcome: record.Delivered, Topic: r.Topic}
			continue
		}
		out[i] = record.Fail(r.Topic, record.Errorf(reason, "kafka says %s", reason))
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
