package delivery_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestClientThatLeftIsNotSpilled: Kafka holds the produce; a client that
// gives up before the ingest answers gets nothing, so its record is not
// spilled (that would only make a duplicate of a record Kafka may still
// take): the buffer stays empty and the record is counted as failed
// (timeout). A client that waits is answered from the buffer, as before.
func TestClientThatLeftIsNotSpilled(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "held", 1)
	var holding atomic.Bool
	kafkatest.HoldProduce(t, c, &holding)
	in := ingesttest.Start(t, addr, "SPILLWAY_PRODUCER_CB_MAX_WAIT=1s", "SPILLWAY_PRODUCER_CB_SLOW_CALL=10s")
	status, a := post(t, in, "held", "warm") // the topic's layout is known
	require.Equal(t, http.StatusOK, status, a)
	holding.Store(true)

	impatient := &http.Client{Timeout: 200 * time.Millisecond}
	_, err := impatient.Post(in.URL+"/topics/held/messages", "text/plain", strings.NewReader("left"))
	require.Error(t, err, "the client gave up")
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="timeout",topic="held"}`) == 1
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, -1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="timeout",topic="held"}`), "not spilled")

	status, a = post(t, in, "held", "waits")
	assert.Equal(t, http.StatusAccepted, status, a)
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="timeout",topic="held"}`))
	assert.Len(t, stored(t, in, "spillway.spill.>", 1), 1, "only the waiting client's record is in the buffer")
}
