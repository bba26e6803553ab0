package producer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/securitytest"
)

func newProducer(t *testing.T, addr string, env ...string) *Producer {
	t.Helper()
	c, err := config.Parse(nil, append([]string{"SPILLWAY_KAFKA_BROKERS=" + addr}, env...))
	require.NoError(t, err)
	p, err := New(c.Kafka, slog.New(slog.NewJSONHandler(securitytest.LogWriter(t, "producer"), &slog.HandlerOptions{Level: slog.LevelDebug})))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

func TestProduceRoundTrip(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	p := newProducer(t, addr)
	ts := time.UnixMilli(1700000000123)
	recs := []record.Record{
		{Topic: "orders", Key: []byte("k1"), Value: []byte("v1"), Headers: []record.Header{{Key: "h", Value: []byte{0, 1, 2}}}, Partition: record.AnyPartition, Timestamp: ts},
		{Topic: "orders", Value: []byte("v2"), Partition: 2, Timestamp: ts},
	}
	res := p.Produce(t.Context(), recs)
	require.Len(t, res, 2)
	for i, r := range res {
		require.Equal(t, record.Delivered, r.Outcome, "record %d: %v", i, r.Err)
		assert.Equal(t, "orders", r.Topic)
	}
	assert.EqualValues(t, 2, res[1].Partition)
	assert.Equal(t, ts, res[0].Timestamp)

	got := kafkatest.Consume(t, addr, "orders", 2, 10*time.Second)
	require.Len(t, got, 2)
	byValue := map[string]int{}
	for i, g := range got {
		byValue[string(g.Value)] = i
	}
	r1 := got[byValue["v1"]]
	assert.Equal(t, "k1", string(r1.Key))
	assert.Equal(t, res[0].Partition, r1.Partition)
	assert.Equal(t, res[0].Offset, r1.Offset)
	assert.Equal(t, ts, r1.Timestamp)
	require.Len(t, r1.Headers, 1)
	assert.Equal(t, "h", r1.Headers[0].Key)
	assert.Equal(t, []byte{0, 1, 2}, r1.Headers[0].Value)
	r2 := got[byValue["v2"]]
	assert.Nil(t, r2.Key)
	assert.EqualValues(t, 2, r2.Partition)
}

func TestKeyedRecordsKeepTheirPartition(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	p := newProducer(t, addr)
	var first int32 = -2
	for i := range 5 {
		ts := time.UnixMilli(time.Now().UnixMilli())
		res := p.Produce(t.Context(), []record.Record{{Topic: "keyed", Key: []byte("same"), Value: fmt.Appendf(nil, "%d", i), Partition: record.AnyPartition, Timestamp: ts}})
		require.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)
		assert.True(t, ts.Equal(res[0].Timestamp), "the result reports the record's own timestamp")
		if first == -2 {
			first = res[0].Partition
		}
		assert.Equal(t, first, res[0].Partition)
	}
}

// TestConcurrentCallersShareBatches: records of concurrent Produce calls
// go to Kafka together, in fewer produce requests and batches than there
// were calls, and every record arrives once.
func TestConcurrentCallersShareBatches(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	produces := countProduces(c, "shared")
	p := newProducer(t, addr)
	const callers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, callers*each)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				res := p.Produce(context.Background(), []record.Record{{Topic: "shared", Value: fmt.Appendf(nil, "%d-%d", c, i), Partition: record.AnyPartition}})
				if res[0].Outcome != record.Delivered {
					errs <- res[0].Err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := kafkatest.Consume(t, addr, "shared", callers*each, 10*time.Second)
	assert.Len(t, got, callers*each)
	requests, batches, records, largest := produces.snapshot()
	t.Logf("%d calls of one record: %d produce requests, %d batches, %d records, at most %d in a batch", callers*each, requests, batches, records, largest)
	assert.Equal(t, callers*each, records, "the broker saw every record once")
	assert.Less(t, requests, callers*each/2, "calls share produce requests")
	assert.Greater(t, largest, 1, "calls share batches")
}

func TestRecordOverLimitFailsAlone(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	p := newProducer(t, addr, "SPILLWAY_KAFKA_MESSAGE_MAX_BYTES=100")
	res := p.Produce(t.Context(), []record.Record{
		{Topic: "t", Value: make([]byte, 101+ownHeadersAllowance), Partition: record.AnyPartition},
		{Topic: "t", Value: []byte("small"), Partition: record.AnyPartition},
	})
	assert.Equal(t, record.Failed, res[0].Outcome)
	assert.Equal(t, record.ReasonTooLarge, record.ReasonOf(res[0].Err))
	assert.Contains(t, res[0].Err.Error(), "record of 1125 bytes is over the limit of 100 bytes")
	assert.Equal(t, record.Delivered, res[1].Outcome, res[1].Err)
}

func TestUnknownTopicWithoutAutoCreation(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "exists"))
	p := newProducer(t, addr, "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false")
	res := p.Produce(t.Context(), []record.Record{{Topic: "missing", Value: []byte("x"), Partition: record.AnyPartition}})
	assert.Equal(t, record.ReasonUnknownTopic, record.ReasonOf(res[0].Err), res[0].Err)
}

func TestMissingPartition(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "one"))
	p := newProducer(t, addr)
	res := p.Produce(t.Context(), []record.Record{{Topic: "one", Value: []byte("x"), Partition: 5}})
	require.Equal(t, record.Failed, res[0].Outcome)
	assert.Equal(t, record.ReasonUnknownTopic, record.ReasonOf(res[0].Err), res[0].Err)
	assert.Contains(t, res[0].Err.Error(), "partition 5 does not exist: the topic has 1 partitions")
}

func TestBrokerDownIsUnavailable(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	c.Close()
	p := newProducer(t, addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=5000")
	start := time.Now()
	res := p.Produce(t.Context(), []record.Record{{Topic: "t", Value: []byte("x"), Partition: record.AnyPartition}})
	require.Equal(t, record.Failed, res[0].Outcome)
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(res[0].Err), res[0].Err)
	t.Logf("failed after %v", time.Since(start))
}

func TestTopics(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "b", "a"))
	p := newProducer(t, addr)
	topics, err := p.Topics(t.Context())
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, topics)
}

func TestBadTopicFailsOnlyItsRecords(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "exists"))
	p := newProducer(t, addr, "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false")
	res := p.Produce(t.Context(), []record.Record{
		{Topic: "missing", Value: []byte("a"), Partition: record.AnyPartition},
		{Topic: "exists", Value: []byte("b"), Partition: record.AnyPartition},
		{Topic: "missing", Value: []byte("c"), Partition: record.AnyPartition},
	})
	assert.Equal(t, record.ReasonUnknownTopic, record.ReasonOf(res[0].Err))
	assert.Equal(t, record.Delivered, res[1].Outcome, res[1].Err)
	assert.Equal(t, record.ReasonUnknownTopic, record.ReasonOf(res[2].Err))
}

// TestClassify pins the reason of each Kafka error: only a fault in the
// record itself is final (a drain dead-letters it); every condition that
// heals is retriable or unknown_topic, so that the record stays buffered.
func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		want record.Reason
	}{
		// In the record: dead letters.
		{kafka.MessageSizeTooLarge, record.ReasonTooLarge},
		{kafka.RecordListTooLarge, record.ReasonTooLarge},
		{fmt.Errorf("write: %w", kafka.MessageSizeTooLarge), record.ReasonTooLarge},
		{kafka.InvalidTopic, record.ReasonInvalid},
		{kafka.InvalidRecord, record.ReasonInvalid},
		{kafka.InvalidTimestamp, record.ReasonInvalid},
		{kafka.InvalidMessage, record.ReasonInvalid}, // CORRUPT_MESSAGE
		{kafka.InvalidMessageSize, record.ReasonInvalid},
		// Conditions that heal: never dead letters.
		{kafka.UnknownTopicOrPartition, record.ReasonUnknownTopic},
		{kafka.TopicAuthorizationFailed, record.ReasonNotAuthorized},
		{kafka.ClusterAuthorizationFailed, record.ReasonNotAuthorized},
		{kafka.SASLAuthenticationFailed, record.ReasonNotAuthorized},
		{fmt.Errorf("SASL authentication failed: %w", kafka.SASLAuthenticationFailed), record.ReasonNotAuthorized},
		{kafka.LeaderNotAvailable, record.ReasonUnavailable},
		{kafka.NotLeaderForPartition, record.ReasonUnavailable},
		{kafka.BrokerNotAvailable, record.ReasonUnavailable},
		{kafka.NotEnoughReplicas, record.ReasonUnavailable},
		{kafka.ThrottlingQuotaExceeded, record.ReasonUnavailable},
		{kafka.Unknown, record.ReasonUnavailable}, // UNKNOWN_SERVER_ERROR
		{kafka.KafkaStorageError, record.ReasonUnavailable},
		{kafka.PolicyViolation, record.ReasonUnavailable},
		{kafka.RequestTimedOut, record.ReasonTimeout},
		{context.DeadlineExceeded, record.ReasonTimeout},
		{io.ErrUnexpectedEOF, record.ReasonUnavailable},
	}
	for _, tt := range tests {
		reason := record.ReasonOf(classify(tt.err))
		assert.Equal(t, tt.want, reason, "%v", tt.err)
	}
}
