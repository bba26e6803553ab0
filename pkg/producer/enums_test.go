package producer

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// kafkaCodecIDs are the compression ids of Kafka's record batch attributes
// (bits 0-2), by librdkafka's name: written from Kafka's protocol, not
// from kafka-go, so that the test checks what reaches the broker.
var kafkaCodecIDs = map[config.Compression]uint8{"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

// TestEveryCompressionReachesKafka: for every kafka.compression.codec the
// configuration accepts, the batch stored in Kafka carries that codec, and
// its record reads back whole. A name added to config.Compressions
// without its codec, or mapped to the wrong one, fails here.
func TestEveryCompressionReachesKafka(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "codec-none", "codec-gzip", "codec-snappy", "codec-lz4", "codec-zstd", "codec-default"))
	value := bytes.Repeat([]byte("compressible "), 200)
	for _, name := range config.Compressions() {
		t.Run(string(name), func(t *testing.T) {
			id, ok := kafkaCodecIDs[name]
			require.True(t, ok, "the test knows no Kafka codec id for %q", name)
			p := newProducer(t, addr, "SPILLWAY_KAFKA_COMPRESSION_CODEC="+string(name))
			topic := "codec-" + string(name)
			res := p.Produce(t.Context(), []record.Record{{Topic: topic, Key: []byte("k"), Value: value, Partition: record.AnyPartition}})
			require.Equal(t, record.Delivered, res[0].Outcome, "%v", res[0].Err)
			got := kafkatest.Consume(t, addr, topic, 1, 10*time.Second)
			require.Len(t, got, 1)
			assert.Equal(t, id, got[0].Attrs.CompressionType(), "the codec of the batch in Kafka")
			assert.Equal(t, value, got[0].Value)
		})
	}
	t.Run("the default", func(t *testing.T) {
		p := newProducer(t, addr)
		res := p.Produce(t.Context(), []record.Record{{Topic: "codec-default", Value: value, Partition: record.AnyPartition}})
		require.Equal(t, record.Delivered, res[0].Outcome, "%v", res[0].Err)
		got := kafkatest.Consume(t, addr, "codec-default", 1, 10*time.Second)
		require.Len(t, got, 1)
		assert.Equal(t, kafkaCodecIDs[config.CompressionSnappy], got[0].Attrs.CompressionType(), "snappy without kafka.compression.codec")
		assert.Equal(t, value, got[0].Value)
	})
}

// TestEveryPartitionerPlacesKeys: for every kafka.partitioner the
// configuration accepts, keyed records land where librdkafka's partitioner
// of that name puts them: murmur2 of the key as the Java client computes
// it (murmur2, murmur2_random), CRC-32 of the key (consistent,
// consistent_random; an empty key is spread, as librdkafka spreads it);
// random spreads one key over the partitions. A name added to
// config.Partitioners without a row here fails.
func TestEveryPartitionerPlacesKeys(t *testing.T) {
	const partitions = 7
	crc := func(key []byte, n int) int32 { return int32(crc32.ChecksumIEEE(key) % uint32(n)) }
	placement := map[config.Partitioner]func([]byte, int) int32{
		"murmur2_random":    javaPartition,
		"murmur2":           javaPartition,
		"consistent_random": crc,
		"consistent":        crc,
		"random":            nil, // no placement: spread
	}
	var topics []string
	for _, name := range config.Partitioners() {
		topics = append(topics, "part-"+string(name))
	}
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(partitions, topics...))
	keys := placementKeys()
	for _, name := range config.Partitioners() {
		t.Run(string(name), func(t *testing.T) {
			want, ok := placement[name]
			require.True(t, ok, "the test knows no placement for %q", name)
			p := newProducer(t, addr, "SPILLWAY_KAFKA_PARTITIONER="+string(name))
			topic := "part-" + string(name)
			if want == nil {
				recs := make([]record.Record, 4*partitions)
				for i := range recs {
					recs[i] = record.Record{Topic: topic, Key: []byte("one key"), Value: fmt.Appendf(nil, "%d", i), Partition: record.AnyPartition}
				}
				seen := map[int32]bool{}
				for _, r := range p.Produce(t.Context(), recs) {
					require.Equal(t, record.Delivered, r.Outcome, "%v", r.Err)
					seen[r.Partition] = true
				}
				assert.Greater(t, len(seen), 1, "one key's %d records over %d partitions", len(recs), partitions)
				return
			}
			keys := keys
			if name == "consistent_random" { // librdkafka's spreads empty keys as it does null ones
				keys = keys[1:]
				require.Empty(t, placementKeys()[0])
			}
			recs := make([]record.Record, len(keys))
			for i, k := range keys {
				recs[i] = record.Record{Topic: topic, Key: k, Value: []byte("v"), Partition: record.AnyPartition}
			}
			for i, r := range p.Produce(t.Context(), recs) {
				require.Equal(t, record.Delivered, r.Outcome, "%v", r.Err)
				assert.Equal(t, want(keys[i], partitions), r.Partition, "key %q", keys[i])
			}
			for _, r := range kafkatest.Consume(t, addr, topic, len(keys), 10*time.Second) {
				assert.Equal(t, want(r.Key, partitions), r.Partition, "in Kafka: key %q", r.Key)
			}
		})
	}
}
