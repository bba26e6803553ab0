package delivery_test

import (
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestKafkaRefusingOwnCredentialsSpills: Kafka refusing Spillway's own
// credentials (a changed cluster ACL: CLUSTER_AUTHORIZATION_FAILED) is not
// the client's fault. The record is buffered (202, not 403) and the
// breaker counts the failure and opens; a topic that is never buffered
// gets 503, not 403. (One topic's ACL opens nothing:
// TestOneTopicsACLDoesNotOpenTheBreaker.)
func TestKafkaRefusingOwnCredentialsSpills(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	var refusing atomic.Bool
	refusing.Store(true)
	kafkatest.RefuseProduce(c, &refusing, kerr.ClusterAuthorizationFailed)
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_RETRIES=0", "SPILLWAY_PRODUCER_CB_FAILS=2", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m",
		"SPILLWAY_PRODUCER_WAL_DISABLE_TOPICS=ordered")

	status, a := post(t, in, "ordered", "never buffered")
	require.Equal(t, http.StatusServiceUnavailable, status, "%+v", a)
	assert.Equal(t, 50304, a.ErrorCode)
	assert.Contains(t, a.Message, "Kafka refused Spillway's credentials")

	status, a = post(t, in, "orders", "v1")
	require.Equal(t, http.StatusAccepted, status, "%+v", a)
	assert.Equal(t, "buffered", a.Outcome)
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="not_authorized",topic="orders"}`))
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, "spillway_breaker_state"), "open after 2 refusals")

	status, a = post(t, in, "orders", "v2")
	require.Equal(t, http.StatusAccepted, status, "%+v", a)
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="breaker_open",topic="orders"}`))
	msgs := stored(t, in, "spillway.spill.>", 2)
	require.Len(t, msgs, 2)
	for _, m := range msgs {
		assert.Regexp(t, `^spillway\.spill\.orders\.k?[0-9]+$`, m.Subject, "the lane of the record's partition, or of its key before the topic was read")
		rec, err := spill.Decode(m.Data)
		require.NoError(t, err)
		assert.Contains(t, []string{"v1", "v2"}, string(rec.Value))
	}
	assert.Equal(t, -1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="not_authorized",topic="orders"}`))
}
