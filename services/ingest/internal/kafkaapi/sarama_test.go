package kafkaapi_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestSaramaSyncProducer: IBM/sarama's SyncProducer, plain and
// idempotent, produces keyed records with headers through the listener;
// each is in Kafka byte for byte at the partition and offset sarama was
// told.
func TestSaramaSyncProducer(t *testing.T) {
	for _, idempotent := range []bool{false, true} {
		t.Run(fmt.Sprintf("idempotent=%v", idempotent), func(t *testing.T) {
			_, addr := kafkatest.NewCluster(t)
			kafkatest.CreateTopic(t, addr, "orders", 3)
			in := ingesttest.Start(t, addr)

			cfg := sarama.NewConfig()
			cfg.Version = sarama.V2_8_0_0
			cfg.ClientID = "sarama-test"
			cfg.Producer.Return.Successes = true
			cfg.Producer.RequiredAcks = sarama.WaitForAll
			cfg.Producer.Retry.Max = 3
			cfg.Producer.Timeout = 5 * time.Second
			cfg.Net.DialTimeout = 5 * time.Second
			if idempotent {
				cfg.Producer.Idempotent = true
				cfg.Net.MaxOpenRequests = 1
			}
			p, err := sarama.NewSyncProducer([]string{in.Kafka}, cfg)
			require.NoError(t, err)
			t.Cleanup(func() { _ = p.Close() })

			type sent struct {
				value, header string
				partition     int32
				offset        int64
			}
			want := map[string]sent{}
			for i := range 6 {
				key := fmt.Sprintf("k%d", i)
				m := &sarama.ProducerMessage{Topic: "orders", Key: sarama.StringEncoder(key),
					Value:   sarama.ByteEncoder(fmt.Appendf(nil, "{\"n\":%d,\"bin\":\"\x00\xff\"}", i)),
					Headers: []sarama.RecordHeader{{Key: []byte("h"), Value: fmt.Appendf(nil, "v%d", i)}}}
				part, off, err := p.SendMessage(m)
				require.NoError(t, err, "record %d", i)
				want[key] = sent{value: fmt.Sprintf("{\"n\":%d,\"bin\":\"\x00\xff\"}", i), header: fmt.Sprintf("v%d", i), partition: part, offset: off}
			}

			got := kafkatest.Consume(t, addr, "orders", len(want), 10*time.Second)
			require.Len(t, got, len(want))
			byKey := map[string]*kgo.Record{}
			for _, r := range got {
				byKey[string(r.Key)] = r
			}
			for key, s := range want {
				r := byKey[key]
				require.NotNil(t, r, "record %s not in Kafka", key)
				assert.Equal(t, s.value, string(r.Value))
				h := headers(r)
				assert.Equal(t, s.header, h["h"])
				assert.NotEmpty(t, h["spillway-id"])
				assert.Equal(t, s.partition, r.Partition, "the partition sarama was told")
				assert.Equal(t, s.offset, r.Offset, "the offset sarama was told")
			}
			assert.Equal(t, float64(len(want)), ingesttest.Metric(t, in.Monitor, `spillway_records_received_total{api="kafka",topic="orders"}`))
		})
	}
}

// TestSaramaRetriesRateLimited: a record over the rate limit is answered
// with an error sarama retries (it drops one answered
// THROTTLING_QUOTA_EXCEEDED at once), so that a SyncProducer past the
// limit is slowed down, not failed: every record reaches Kafka once the
// bucket refills.
func TestSaramaRetriesRateLimited(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	in := ingesttest.StartYAML(t, addr, `
security:
  rate_limit:
    records_per_second: 4
`)
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V2_8_0_0
	cfg.ClientID = "sarama-limited"
	cfg.Producer.Return.Successes = true
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	// 50 tries 100 ms apart: 5 s for a bucket that refills a record every
	// 250 ms.
	cfg.Producer.Retry.Max = 50
	cfg.Producer.Retry.Backoff = 100 * time.Millisecond
	cfg.Producer.Timeout = 5 * time.Second
	cfg.Net.DialTimeout = 5 * time.Second
	p, err := sarama.NewSyncProducer([]string{in.Kafka}, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })

	const n = 8 // twice the bucket: some are refused at first
	for i := range n {
		_, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "orders", Value: sarama.StringEncoder(fmt.Sprintf("r%d", i))})
		require.NoError(t, err, "record %d", i)
	}
	got := kafkatest.Consume(t, addr, "orders", n, 10*time.Second)
	require.Len(t, got, n)
	for i, r := range got {
		assert.Equal(t, fmt.Sprintf("r%d", i), string(r.Value), "in order, each once")
	}
	assert.Positive(t, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="rate_limited",topic="orders"}`),
		"no record was over the limit: the test proves nothing")
}
