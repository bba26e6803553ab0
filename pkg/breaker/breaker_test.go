package breaker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// kafka answers every record with the reason it holds; "" delivers.
type kafka struct {
	reason atomic.Value // record.Reason
	calls  atomic.Int64
}

func (k *kafka) Produce(_ context.Context, recs []record.Record) []record.Result {
	k.calls.Add(1)
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

func TestCallerWhoStoppedWaitingIsNotKafkasFailure(t *testing.T) {
	k := &kafka{}
	k.reason.Store(record.ReasonTimeout)
	p := breaker.New(k, breaker.Options{Settings: config.Breaker{Fails: 1, Requests: 1, Timeout: time.Minute}})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := p.Produce(ctx, recs(1))
	require.NoError(t, err)
	assert.Equal(t, breaker.Closed, p.State())
}
