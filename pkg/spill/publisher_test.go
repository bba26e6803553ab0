package spill_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
)

// nowhere starts an embedded JetStream and returns a Buffer publishing
// under the subject prefix "nowhere", which no stream takes, with its
// connection.
func nowhere(t *testing.T, timeout string) (*spill.Buffer, *nats.Conn, func()) {
	t.Helper()
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_PUBLISH_TIMEOUT="+timeout)
	srv, err := embeddednats.Start(c, discard)
	require.NoError(t, err)
	stop := func() { srv.Shutdown(); srv.WaitForShutdown() }
	t.Cleanup(stop)
	nc, js, err := spill.Connect(t.Context(), c, srv, "test", discard)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	c.SubjectPrefix = "nowhere"
	return spill.NewBuffer(js, c), nc, stop
}

func batchOf(n int) []record.Record {
	recs := make([]record.Record, n)
	for i := range recs {
		recs[i] = record.Record{ID: fmt.Sprintf("r%d", i), Topic: "t", Value: []byte("v"), Partition: record.AnyPartition}
	}
	return recs
}

// TestPublishWithoutStream: when no stream takes the subject (the server
// answers "no responders", as while a stream has no leader), the publish
// is tried again, then the record fails as unavailable.
func TestPublishWithoutStream(t *testing.T) {
	b, _, _ := nowhere(t, "10s")
	res := b.Publish(t.Context(), spill.Spilled, batchOf(3), "unavailable")
	for _, r := range res {
		require.Equal(t, record.Failed, r.Outcome)
		assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(r.Err))
		assert.ErrorIs(t, r.Err, jetstream.ErrNoStreamResponse)
		assert.Equal(t, "the buffer (JetStream) cannot take the record now: nats: no response from stream", record.ClientMessage(r.Err))
	}
	assert.Zero(t, spill.PendingAcks(b))
}

// TestPublishStalls: past 4000 messages waiting for their
// acknowledgement, a publish waits for room, then fails as overloaded
// (backpressure for the client); those never acknowledged fail when the
// publish timeout passes, and none is waited for after.
func TestPublishStalls(t *testing.T) {
	b, nc, _ := nowhere(t, "1s")
	_, err := nc.Subscribe("nowhere.>", func(*nats.Msg) {}) // takes the messages, never answers
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	res := b.Publish(t.Context(), spill.Spilled, batchOf(4001), "unavailable")
	for i, r := range res[:4000] {
		require.Equal(t, record.Failed, r.Outcome, i)
		require.Equal(t, spill.ErrOutcomeUnknown, record.ClientMessage(r.Err), i)
	}
	last := res[4000]
	require.Equal(t, record.Failed, last.Outcome)
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(last.Err))
	assert.ErrorIs(t, last.Err, jetstream.ErrTooManyStalledMsgs)
	assert.Contains(t, record.ClientMessage(last.Err), "the buffer is overloaded: retry later")
	assert.Zero(t, spill.PendingAcks(b))
}

// TestPublishFailsOnDisconnect: records waiting for their acknowledgement
// when the connection to NATS is lost fail at once as unavailable, not
// when the publish timeout passes.
func TestPublishFailsOnDisconnect(t *testing.T) {
	b, nc, stop := nowhere(t, "50s")
	_, err := nc.Subscribe("nowhere.>", func(*nats.Msg) {})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	done := make(chan []record.Result, 1)
	go func() { done <- b.Publish(context.Background(), spill.Spilled, batchOf(10), "unavailable") }()
	require.Eventually(t, func() bool { return spill.PendingAcks(b) == 10 }, 5*time.Second, 5*time.Millisecond)
	stop()
	var res []record.Result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the publish still waits after the connection was lost")
	}
	for _, r := range res {
		require.Equal(t, record.Failed, r.Outcome)
		assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(r.Err))
		assert.ErrorIs(t, r.Err, nats.ErrDisconnected)
	}
	assert.Zero(t, spill.PendingAcks(b))
}
