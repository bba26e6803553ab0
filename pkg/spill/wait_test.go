package spill_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

// TestConnectWaitsForJetStream: while JetStream does not answer, Connect
// tries again with short tries instead of waiting out one deadline, and
// succeeds soon after JetStream answers; every try cut short by the
// deadline is reported.
func TestConnectWaitsForJetStream(t *testing.T) {
	held := spilltest.NewHeldJetStream(t, "spillway")
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+held.URL)
	time.AfterFunc(spill.TryTimeout+2*time.Second, held.Release)
	start := time.Now()
	nc, _, err := spill.Connect(t.Context(), c, nil, "test", discard)
	require.NoError(t, err)
	nc.Close()
	// One try of TryTimeout, held; the next after at most 2 s of pause,
	// answered once released.
	assert.Less(t, time.Since(start), 2*spill.TryTimeout+3*time.Second)
}

// TestConnectGivesUpWithItsContext: Connect waits until its context ends,
// and says what it waited for.
func TestConnectGivesUpWithItsContext(t *testing.T) {
	held := spilltest.NewHeldJetStream(t, "spillway")
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+held.URL)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancel()
	_, _, err := spill.Connect(ctx, c, nil, "test", discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gave up waiting for the buffer: create or update stream SPILLWAY: ")
}

// TestConnectStopsOnAConfigurationError: a stream that exists with another
// retention policy cannot be waited out: Connect fails at once.
func TestConnectStopsOnAConfigurationError(t *testing.T) {
	srv := spilltest.StartNATS(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "SPILLWAY", Subjects: []string{"spillway.>"}, Retention: jetstream.LimitsPolicy})
	require.NoError(t, err)

	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+srv.ClientURL())
	start := time.Now()
	_, _, err = spill.Connect(t.Context(), c, nil, "test", discard)
	require.Error(t, err)
	assert.True(t, spill.IsConfigError(err), "%v", err)
	assert.Contains(t, err.Error(), "exists with another retention policy")
	assert.Less(t, time.Since(start), time.Second)
}

// TestPendingBufferRefusesUntilSet: a record given to the buffer before it
// is connected is answered unavailable, never buffered.
func TestPendingBufferRefusesUntilSet(t *testing.T) {
	c := walConfig(t)
	b, _, _ := startBuffer(t, c)
	var p spill.PendingBuffer
	require.EqualError(t, p.Ready(), "buffer: not ready yet")
	p.SetReason(context.DeadlineExceeded)
	require.EqualError(t, p.Ready(), "buffer: context deadline exceeded")
	recs := []record.Record{{ID: "01J0000000000000000000000A", Topic: "t", Value: []byte("v")}}
	res := p.Publish(t.Context(), spill.Spilled, recs, "test")
	require.Len(t, res, 1)
	assert.Equal(t, record.Failed, res[0].Outcome)
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(res[0].Err))
	assert.Zero(t, p.Fill(t.Context()))

	p.Set(b)
	require.NoError(t, p.Ready())
	res = p.Publish(t.Context(), spill.Spilled, recs, "test")
	assert.Equal(t, record.Buffered, res[0].Outcome, "%v", res[0].Err)
}
