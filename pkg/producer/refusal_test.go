package producer

import (
	crand "crypto/rand"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// compactedMessage is what Kafka says of a record without a key sent to
// the partition of topic "mixed".
var compactedMessage = kafkatest.CompactedMessage("mixed", 0)

// TestRefusedRecordFailsAlone: two callers' records share a partition's
// batch, and Kafka refuses the batch as INVALID_RECORD for one of them
// (a record without a key to a compacted topic). Only that record fails,
// as invalid; the other caller's record is delivered with its offset,
// whether Kafka names the culprit (RecordErrors) or names none (then
// the batch is split until the culprit is alone).
func TestRefusedRecordFailsAlone(t *testing.T) {
	for _, tt := range []struct {
		name    string
		named   bool
		message string // in the failed record's error
		refused []int  // the sizes of the batches Kafka refused
	}{
		{"Kafka names the record", true, compactedMessage, []int{2}},
		{"Kafka names no record", false, "Invalid Record", []int{2, 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "mixed"))
			refusals := kafkatest.RefuseKeyless(t, c, "mixed", tt.named)
			p := newProducer(t, addr, "SPILLWAY_KAFKA_LINGER_MS=100")
			_, err := p.topicLayout("mixed") // so that both calls queue at once, into one batch
			require.NoError(t, err)
			bad, good := make(chan []record.Result, 1), make(chan []record.Result, 1)
			p.Start([]record.Record{{Topic: "mixed", Value: []byte("no key"), Partition: 0}}, func(r []record.Result) { bad <- r })
			p.Start([]record.Record{{Topic: "mixed", Key: []byte("k"), Value: []byte("keyed"), Partition: 0}}, func(r []record.Result) { good <- r })

			refused := answerOf(t, bad)
			delivered := answerOf(t, good)
			assert.Equal(t, tt.refused, refusals.Sizes(), "the first batch held both callers' records")
			assert.Equal(t, record.Failed, refused.Outcome)
			assert.Equal(t, record.ReasonInvalid, record.ReasonOf(refused.Err), refused.Err)
			assert.Contains(t, record.ClientMessage(refused.Err), tt.message)
			require.Equal(t, record.Delivered, delivered.Outcome, "the other caller's record: %v", delivered.Err)
			assert.EqualValues(t, 0, delivered.Partition)

			got := kafkatest.Consume(t, addr, "mixed", 1, 10*time.Second)
			require.Len(t, got, 1)
			assert.Equal(t, "keyed", string(got[0].Value))
			assert.Equal(t, delivered.Offset, got[0].Offset)
		})
	}
}

// TestRefusedRecordsKeepTheirNeighboursInOrder: in a batch of many
// records from one call, Kafka refuses a few; every other record is
// delivered, in order, at the offset its answer gives.
func TestRefusedRecordsKeepTheirNeighboursInOrder(t *testing.T) {
	for _, named := range []bool{true, false} {
		t.Run(fmt.Sprintf("named=%v", named), func(t *testing.T) {
			c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "mixed"))
			kafkatest.RefuseKeyless(t, c, "mixed", named)
			p := newProducer(t, addr)
			const n = 100
			recs := make([]record.Record, n)
			for i := range recs {
				recs[i] = record.Record{Topic: "mixed", Value: fmt.Appendf(nil, "%03d", i), Partition: 0}
				if i%17 != 3 {
					recs[i].Key = []byte("k")
				}
			}
			res := p.Produce(t.Context(), recs)
			var want []string
			offsets := map[string]int64{}
			for i, r := range res {
				if i%17 == 3 {
					assert.Equal(t, record.ReasonInvalid, record.ReasonOf(r.Err), "record %d: %v", i, r.Err)
					continue
				}
				require.Equal(t, record.Delivered, r.Outcome, "record %d: %v", i, r.Err)
				want = append(want, string(recs[i].Value))
				offsets[string(recs[i].Value)] = r.Offset
			}
			got := kafkatest.Consume(t, addr, "mixed", len(want), 10*time.Second)
			var values []string
			for _, g := range got {
				values = append(values, string(g.Value))
				assert.Equal(t, offsets[string(g.Value)], g.Offset, "record %s", g.Value)
			}
			assert.Equal(t, want, values)
		})
	}
}

// ids are record ids as long as the ingest's (a ULID: 26 characters).
func id(i int) string { return fmt.Sprintf("%026d", i) }

// TestBatchesFitKafkasLimit: batches are bounded by their size as Kafka
// counts it (the spillway-id header, each record's varints, the batch's
// header), so that records that together fill batch.size with their keys,
// values and headers are all delivered with Kafka's default limit.
func TestBatchesFitKafkasLimit(t *testing.T) {
	for _, tt := range []struct {
		name    string
		records int
		size    int
		env     []string
	}{
		{"1,000 records of 1,000 bytes", 1000, 1000, nil},
		{"20,000 records of 100 bytes", 20000, 100, []string{"SPILLWAY_KAFKA_BATCH_NUM_MESSAGES=10000"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "full"))
			produces := countProduces(c, "full")
			p := newProducer(t, addr, tt.env...)
			recs := make([]record.Record, tt.records)
			for i := range recs {
				recs[i] = record.Record{ID: id(i), Topic: "full", Value: make([]byte, tt.size), Partition: 0}
			}
			for i, r := range p.Produce(t.Context(), recs) {
				require.Equal(t, record.Delivered, r.Outcome, "record %d: %v", i, r.Err)
			}
			requests, batches, records, largest := produces.snapshot()
			t.Logf("%d requests, %d batches, %d records, at most %d in a batch", requests, batches, records, largest)
			assert.Equal(t, tt.records, records, "the broker stored every record once")
		})
	}
}

// TestOversizedBatchIsSplit: a broker whose message.max.bytes is below
// batch.size refuses a full batch as MESSAGE_TOO_LARGE; the batch is split
// and sent again, and every record is delivered, in order.
func TestOversizedBatchIsSplit(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "split"), kfake.BrokerConfigs(map[string]string{"message.max.bytes": "100000"}))
	produces := countProduces(c, "split")
	p := newProducer(t, addr)
	recs := make([]record.Record, 1000)
	for i := range recs {
		recs[i] = record.Record{ID: id(i), Topic: "split", Value: fmt.Appendf(nil, "%04d%s", i, strings.Repeat("x", 996)), Partition: 0}
	}
	res := p.Produce(t.Context(), recs)
	for i, r := range res {
		require.Equal(t, record.Delivered, r.Outcome, "record %d: %v", i, r.Err)
		assert.EqualValues(t, i, r.Offset, "record %d", i)
	}
	requests, batches, _, largest := produces.snapshot()
	t.Logf("%d requests, %d batches, at most %d records in a batch", requests, batches, largest)
	got := kafkatest.Consume(t, addr, "split", len(recs), 10*time.Second)
	require.Len(t, got, len(recs))
	for i, g := range got {
		assert.Equal(t, fmt.Sprintf("%04d", i), string(g.Value[:4]), "offset %d", g.Offset)
	}
}

// TestRecordOverKafkasLimitFailsAlone: a record that Kafka alone refuses
// as too large (its message.max.bytes below the producer's) fails as
// too_large (413 at the HTTP API); the records around it are delivered.
func TestRecordOverKafkasLimitFailsAlone(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "limit"), kfake.BrokerConfigs(map[string]string{"message.max.bytes": "10000"}))
	p := newProducer(t, addr)
	large := make([]byte, 20000)
	_, _ = crand.Read(large) // random: over the limit compressed too, as Kafka counts a batch as sent
	res := p.Produce(t.Context(), []record.Record{
		{ID: id(0), Topic: "limit", Value: []byte("before"), Partition: 0},
		{ID: id(1), Topic: "limit", Value: large, Partition: 0},
		{ID: id(2), Topic: "limit", Value: []byte("after"), Partition: 0},
	})
	assert.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)
	assert.Equal(t, record.Failed, res[1].Outcome)
	assert.Equal(t, record.ReasonTooLarge, record.ReasonOf(res[1].Err), res[1].Err)
	assert.Equal(t, record.Delivered, res[2].Outcome, res[2].Err)
	got := kafkatest.Consume(t, addr, "limit", 2, 10*time.Second)
	require.Len(t, got, 2)
	assert.Equal(t, "before", string(got[0].Value))
	assert.Equal(t, "after", string(got[1].Value))
}

// TestEncodedSizeIsKafkasCount: a record's encodedSize is its size in a
// batch as Kafka's own encoding (franz-go's kmsg) makes it, with the
// timestamp and offset deltas at their largest, and at most 14 bytes over
// with the smallest.
func TestEncodedSizeIsKafkasCount(t *testing.T) {
	for _, tt := range []struct {
		name       string
		key, value []byte
		headers    []record.Header
		id         string
	}{
		{"empty", nil, nil, nil, ""},
		{"empty key and value", []byte{}, []byte{}, nil, ""},
		{"a value past one varint byte", nil, make([]byte, 64), nil, ""},
		{"an id alone", nil, []byte("v"), nil, id(3)},
		{"key, value, headers and id", []byte("key"), make([]byte, 1000), []record.Header{{Key: "traceparent", Value: make([]byte, 55)}, {Key: "empty"}}, id(7)},
		{"large", make([]byte, 300), make([]byte, 1<<20), []record.Header{{Key: "h", Value: make([]byte, 9000)}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			encoded := func(tsDelta int64, offsetDelta int32) int {
				r := kmsg.Record{TimestampDelta64: tsDelta, OffsetDelta: offsetDelta, Key: tt.key, Value: tt.value}
				for _, h := range tt.headers {
					r.Headers = append(r.Headers, kmsg.Header{Key: h.Key, Value: h.Value})
				}
				if tt.id != "" {
					r.Headers = append(r.Headers, kmsg.Header{Key: record.IDHeader, Value: []byte(tt.id)})
				}
				body := len(r.AppendTo(nil)) - 1 // less its length field, 0 here
				return varlongSize(int64(body)) + body
			}
			got := encodedSize(tt.key, tt.value, tt.headers, tt.id)
			assert.Equal(t, encoded(math.MinInt64, math.MinInt32), got, "with the largest deltas")
			assert.LessOrEqual(t, got-encoded(0, 0), 14, "with the smallest")
		})
	}
}
