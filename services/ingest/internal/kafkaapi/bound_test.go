package kafkaapi_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestKgoBatchesTakenWhole: kgo packs requests by bytes, 1 MiB per
// partition; a request of more than server.max_request_records (10,000)
// small records across partitions is taken whole, as a broker takes it,
// not partly refused and retried: no record is counted as refused.
func TestKgoBatchesTakenWhole(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "small", 3)
	in := ingesttest.Start(t, addr)
	cl := kgoClient(t, in.Kafka, kgo.ProducerLinger(200*time.Millisecond), kgo.MaxBufferedRecords(100_000))

	const n = 30_000
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: "small", Value: fmt.Appendf(nil, "%d", i)}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, cl.ProduceSync(ctx, recs...).FirstErr())

	assert.Equal(t, float64(n), ingesttest.Metric(t, in.Monitor, `spillway_records_delivered_total{topic="small"}`))
	assert.Equal(t, -1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="overloaded",topic="small"}`),
		"no partition refused for the request's size")
}
