package delivery_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestBreakerClosesWhenKafkaReturns: with Kafka cut off, records are
// answered 202 (buffered) and the breaker opens; once Kafka is back, after
// the breaker's timeout it goes half-open, then closed, and records are
// answered 200 (delivered, in Kafka) again within a bound. The state gauge
// and the transitions counter say so.
func TestBreakerClosesWhenKafkaReturns(t *testing.T) {
	const cbTimeout = time.Second
	k := kafkatest.NewCuttable(t)
	in := ingesttest.Start(t, k.Addr,
		"SPILLWAY_PRODUCER_CB_FAILS=2",
		"SPILLWAY_PRODUCER_CB_TIMEOUT="+cbTimeout.String(),
		"SPILLWAY_PRODUCER_CB_REQUESTS=3",
		"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000",
		// No resender runs: with order partition the topic's partitions
		// would stay behind their backlog, and no record try Kafka.
		"SPILLWAY_PRODUCER_ORDER=none",
	)
	metric := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	delivered := map[string]string{} // id → value, answered 200
	buffered := map[string]string{}  // id → value, answered 202
	n := 0
	send := func() (int, answer) {
		t.Helper()
		n++
		value := fmt.Sprintf("v%d", n)
		status, a := post(t, in, "t", value)
		switch status {
		case http.StatusOK:
			require.Equal(t, "delivered", a.Outcome, a)
			delivered[a.ID] = value
		case http.StatusAccepted:
			require.Equal(t, "buffered", a.Outcome, a)
			buffered[a.ID] = value
		default:
			t.Fatalf("record %s answered %d: %+v", value, status, a)
		}
		return status, a
	}

	status, _ := send()
	require.Equal(t, http.StatusOK, status, "Kafka is healthy at first")
	assert.Equal(t, 0.0, metric("spillway_breaker_state"))

	k.Cut()
	for i := 0; metric("spillway_breaker_state") != 2; i++ {
		require.Less(t, i, 10, "the breaker opens after 2 failed produces")
		status, _ := send()
		require.Equal(t, http.StatusAccepted, status, "Kafka is cut off: the record is buffered")
	}
	assert.Equal(t, 1.0, metric(`spillway_breaker_transitions_total{to="open"}`))
	status, _ = send()
	require.Equal(t, http.StatusAccepted, status)
	assert.Equal(t, 1.0, metric(`spillway_records_buffered_total{reason="breaker_open",topic="t"}`))

	k.Restore()
	const bound = cbTimeout + 15*time.Second
	deadline := time.Now().Add(bound)
	for {
		status, _ := send()
		if status == http.StatusOK {
			break
		}
		require.True(t, time.Now().Before(deadline), "no record was delivered within %v of Kafka's return: the breaker never closed", bound)
		time.Sleep(50 * time.Millisecond)
	}
	// The rest of the probes succeed and the breaker closes; from then on
	// every record is delivered.
	for i := 0; metric("spillway_breaker_state") != 0; i++ {
		require.Less(t, i, 10, "the breaker closes after 3 successful probes")
		status, a := send()
		require.Equal(t, http.StatusOK, status, "half-open, Kafka healthy: %+v", a)
	}
	for range 5 {
		status, a := send()
		require.Equal(t, http.StatusOK, status, "closed: %+v", a)
	}

	opened := metric(`spillway_breaker_transitions_total{to="open"}`)
	halfOpened := metric(`spillway_breaker_transitions_total{to="half-open"}`)
	t.Logf("%d records: %d delivered, %d buffered; opened %v times, half-open %v times", n, len(delivered), len(buffered), opened, halfOpened)
	assert.Equal(t, 1.0, metric(`spillway_breaker_transitions_total{to="closed"}`), "closed once, when Kafka came back")
	assert.GreaterOrEqual(t, halfOpened, 1.0)
	assert.Equal(t, opened, halfOpened, "each opening ended half-open (a failed probe opens it again)")
	assert.Equal(t, 0.0, metric("spillway_breaker_state"))
	assert.Equal(t, float64(len(delivered)), metric(`spillway_records_delivered_total{topic="t"}`))

	// What was answered 200 is in Kafka with its value, once; what was
	// answered 202 is in the buffer, waiting for the resender.
	got := kafkatest.Consume(t, k.Addr, "t", len(delivered), 10*time.Second)
	require.Len(t, got, len(delivered))
	for _, r := range got {
		id, _ := kafkatest.HeaderValue(r, "spillway-id")
		want, ok := delivered[id]
		require.True(t, ok, "record %s (%q) in Kafka was not answered 200", id, r.Value)
		assert.Equal(t, want, string(r.Value), id)
		delete(delivered, id)
	}
	msgs := stored(t, in, "spillway.spill.>", len(buffered))
	require.Len(t, msgs, len(buffered))
	for _, m := range msgs {
		rec, err := spill.Decode(m.Data)
		require.NoError(t, err)
		assert.Equal(t, buffered[rec.ID], string(rec.Value), rec.ID)
	}
}
