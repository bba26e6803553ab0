package producer

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// batchSizes records, as the broker receives them, the size of each
// partition's records of topic in a produce request (what Kafka checks
// against max.message.bytes), and how many were over limit.
type batchSizes struct {
	mu       sync.Mutex
	requests int
	largest  int
	over     int
}

func watchBatchSizes(c *kfake.Cluster, topic string, limit int) *batchSizes {
	bs := &batchSizes{}
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		bs.mu.Lock()
		defer bs.mu.Unlock()
		for _, t := range req.(*kmsg.ProduceRequest).Topics {
			if t.Topic != topic {
				continue
			}
			bs.requests++
			for _, p := range t.Partitions {
				bs.largest = max(bs.largest, len(p.Records))
				if len(p.Records) > limit {
					bs.over++
				}
			}
		}
		return nil, nil, false
	})
	return bs
}

func (bs *batchSizes) snapshot() (requests, largest, over int) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return bs.requests, bs.largest, bs.over
}

// thousandRecords are 1,000 records of 1,000 bytes with ids, numbered in
// their first 4 bytes, to one partition of topic.
func thousandRecords(topic string) []record.Record {
	recs := make([]record.Record, 1000)
	for i := range recs {
		recs[i] = record.Record{ID: id(i), Topic: topic, Value: fmt.Appendf(nil, "%04d%s", i, strings.Repeat("x", 996)), Partition: 0}
	}
	return recs
}

// deliveredInOrder checks that every record of recs was delivered at the
// offset of its place, and is in Kafka there.
func deliveredInOrder(t *testing.T, addr, topic string, recs []record.Record, res []record.Result) {
	t.Helper()
	for i, r := range res {
		require.Equal(t, record.Delivered, r.Outcome, "record %d: %v", i, r.Err)
		assert.EqualValues(t, i, r.Offset, "record %d", i)
	}
	got := kafkatest.Consume(t, addr, topic, len(recs), 10*time.Second)
	require.Len(t, got, len(recs))
	for i, g := range got {
		assert.Equal(t, fmt.Sprintf("%04d", i), string(g.Value[:4]), "offset %d", g.Offset)
	}
}

// uncompressed sends batches as they are counted: Kafka bounds a batch by
// its bytes as sent, and a compressed batch of these records is a tenth
// of the limit, so that no bound would be reached.
const uncompressed = "SPILLWAY_KAFKA_COMPRESSION_CODEC=none"

// TestBatchesFitTheTopicsLimit: batches are bounded by the topic's own
// max.message.bytes (100,000 here, below batch.size), read when the topic
// is described: 1,000 records of 1,000 bytes are all delivered in order,
// and Kafka never sees a batch over the limit, so none is refused and
// split.
func TestBatchesFitTheTopicsLimit(t *testing.T) {
	const limit = 100000
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopicWithConfigs(t, addr, "small", 1, map[string]string{"max.message.bytes": fmt.Sprint(limit)})
	sizes := watchBatchSizes(c, "small", limit)
	p := newProducer(t, addr, uncompressed)
	recs := thousandRecords("small")
	deliveredInOrder(t, addr, "small", recs, p.Produce(t.Context(), recs))
	requests, largest, over := sizes.snapshot()
	t.Logf("%d produce requests; the largest batch %d bytes; %d over the limit of %d", requests, largest, over, limit)
	assert.Zero(t, over, "batches over the topic's max.message.bytes (refused, then split)")
	assert.Greater(t, largest, limit*3/4, "batches are filled up to the limit, not far below it")
}

// TestRefusalTeachesTheLimit: where the topic's max.message.bytes cannot
// be read (DescribeConfigs refused, as for a principal without
// DESCRIBE_CONFIGS), a batch refused as too large is split, and the later
// batches are bounded by what the refusal taught: every record is
// delivered in order, and only the first few batches are refused.
func TestRefusalTeachesTheLimit(t *testing.T) {
	const limit = 100000
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "split"), kfake.BrokerConfigs(map[string]string{"message.max.bytes": fmt.Sprint(limit)}))
	c.ControlKey(kmsg.DescribeConfigs.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		dreq := req.(*kmsg.DescribeConfigsRequest)
		resp := dreq.ResponseKind().(*kmsg.DescribeConfigsResponse)
		for _, r := range dreq.Resources {
			rr := kmsg.NewDescribeConfigsResponseResource()
			rr.ResourceType, rr.ResourceName, rr.ErrorCode = r.ResourceType, r.ResourceName, kerr.TopicAuthorizationFailed.Code
			resp.Resources = append(resp.Resources, rr)
		}
		return resp, nil, true
	})
	sizes := watchBatchSizes(c, "split", limit)
	p := newProducer(t, addr, uncompressed)
	recs := thousandRecords("split")
	deliveredInOrder(t, addr, "split", recs, p.Produce(t.Context(), recs))
	first, _, firstOver := sizes.snapshot()
	// Then a second round to the same partition: the refusals taught its
	// bound, and no batch is refused.
	for i := range recs {
		recs[i].ID = id(1000 + i)
	}
	res := p.Produce(t.Context(), recs)
	for i, r := range res {
		require.Equal(t, record.Delivered, r.Outcome, "record %d of the second round: %v", i, r.Err)
	}
	requests, largest, over := sizes.snapshot()
	t.Logf("first round: %d produce requests, %d batches over the limit; second round: %d requests, %d over; the largest batch %d bytes",
		first, firstOver, requests-first, over-firstOver, largest)
	assert.Zero(t, over-firstOver, "batches refused once the limit was taught")
}
