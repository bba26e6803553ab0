package kafkaapi_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestFirstMetadataWaitsForASlowKafka: a Metadata request to an ingest
// that has not yet read Kafka's layout, from a Kafka that takes 3 s to
// answer, gets the topic with Spillway as every partition's leader once
// Kafka answered, not LEADER_NOT_AVAILABLE (before, the listener waited
// 2 s and gave up: a client was left without a leader for as long as
// Kafka was slower than that). The ingest's metadata refresh is 10 s, so
// that its Kafka client waits long enough for the layout (at its default
// of 1 s, kafka-go gives up each reading after 1 s).
func TestFirstMetadataWaitsForASlowKafka(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "late", 2)
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS=10000")
	var slowed atomic.Int32
	c.ControlKey(int16(kmsg.Metadata), func(kmsg.Request) (kmsg.Response, error, bool) {
		if slowed.Add(1) <= 3 {
			c.KeepControl()
			c.SleepControl(func() { time.Sleep(3 * time.Second) }) // Kafka's delay
		}
		return nil, nil, false
	})

	cl := kgoClient(t, in.Kafka)
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr("late")
	req.Topics = append(req.Topics, rt)
	start := time.Now()
	resp, err := req.RequestWith(t.Context(), cl)
	require.NoError(t, err)
	require.Len(t, resp.Topics, 1)
	got := resp.Topics[0]
	require.NoError(t, kerr.ErrorForCode(got.ErrorCode), "the topic's error code, after %v", time.Since(start))
	require.Len(t, got.Partitions, 2)
	for _, p := range got.Partitions {
		assert.Equal(t, int32(0), p.Leader, "partition %d's leader", p.Partition)
	}
	assert.Positive(t, slowed.Load(), "Kafka was asked for its metadata, and slowed")
}
