package producer

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// javaMurmur2 is Kafka's Java client's Utils.murmur2, written again here
// from the Java source, independently of the producer's partitioner: seed
// 0x9747b28c, m 0x5bd1e995, r 24, little-endian blocks of four bytes, the
// tail mixed in from its highest byte down, then the final avalanche.
// Java's int arithmetic wraps like uint32's, and its >>> is a logical
// shift, so uint32 computes the same bits.
func javaMurmur2(data []byte) int32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	length := len(data)
	h := uint32(seed) ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := length &^ 3
	switch length % 4 {
	case 3:
		h ^= uint32(data[tail+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[tail+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[tail])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// javaPartition is the Java client's default partition for a keyed record:
// Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions, where
// toPositive is x & 0x7fffffff.
func javaPartition(key []byte, partitions int) int32 {
	return int32(int64(uint32(javaMurmur2(key))&0x7fffffff) % int64(partitions))
}

// TestJavaMurmur2Reference checks the test's own murmur2 against hashes
// published by Kafka (UtilsTest.testMurmur2, the signed Java int) and by
// librdkafka (rdmurmur2.c's unit test, after toPositive), so that the
// placement tests below compare against the Java client, not against
// whatever the test happens to compute.
func TestJavaMurmur2Reference(t *testing.T) {
	signed := map[string]int32{ // Kafka's UtilsTest.testMurmur2
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	}
	for key, want := range signed {
		assert.Equal(t, want, javaMurmur2([]byte(key)), "murmur2(%q)", key)
	}
	positive := map[string]uint32{ // librdkafka's unittest_murmurhashneutral2
		"kafka":             1348980580,
		"amqp":              767747138,
		"giberish123456789": 257239820,
	}
	for key, want := range positive {
		assert.Equal(t, want, uint32(javaMurmur2([]byte(key)))&0x7fffffff, "toPositive(murmur2(%q))", key)
	}
}

// knownPlacements are partitions of the Java client's default partitioner,
// worked out by hand (with a calculator, not with javaMurmur2) from the
// published hashes above: toPositive(hash) % partitions.
var knownPlacements = []struct {
	key        string
	partitions int
	want       int32
}{
	{"kafka", 7, 3}, {"kafka", 16, 4}, {"kafka", 100, 80},
	{"amqp", 7, 4}, {"amqp", 16, 2}, {"amqp", 100, 38},
	{"giberish123456789", 7, 5}, {"giberish123456789", 16, 12}, {"giberish123456789", 100, 20},
	{"21", 7, 3}, {"21", 16, 12}, {"21", 100, 40},
	{"foobar", 7, 0}, {"foobar", 16, 14}, {"foobar", 100, 66},
	{"a-little-bit-long-string", 7, 1}, {"a-little-bit-long-string", 16, 0}, {"a-little-bit-long-string", 100, 12},
	{"a-little-bit-longer-string", 7, 0}, {"a-little-bit-longer-string", 16, 3}, {"a-little-bit-longer-string", 100, 19},
	{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 7, 3}, {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 16, 13},
	{"abc", 7, 4}, {"abc", 16, 11}, {"abc", 100, 7},
}

// placementKeys are the keys the placement tests produce: the published
// ones, every length from 0 to 9 (each tail case of murmur2), bytes with
// the high bit set (Java's signed bytes), and UTF-8.
func placementKeys() [][]byte {
	keys := [][]byte{{}, {0x00}, {0xff}, {0x80, 0x7f, 0xfe}, {0xde, 0xad, 0xbe, 0xef, 0x01}, []byte("ключ-é-鍵")}
	for _, p := range knownPlacements {
		keys = append(keys, []byte(p.key))
	}
	for n := 1; n <= 9; n++ {
		keys = append(keys, []byte(strings.Repeat("k", n)))
	}
	for i := range 40 {
		keys = append(keys, fmt.Appendf(nil, "user-%d", i*7919))
	}
	return dedupe(keys)
}

func dedupe(keys [][]byte) [][]byte {
	seen := map[string]bool{}
	var out [][]byte
	for _, k := range keys {
		if !seen[string(k)] {
			seen[string(k)] = true
			out = append(out, k)
		}
	}
	return out
}

// TestKeyPlacementMatchesJavaClient produces keyed records through the
// producer to topics of several partition counts, under each partitioner
// setting that places keys with murmur2, and checks that each record's
// answer and its place in Kafka (read back with franz-go) are the Java
// client's partition: kafka-ambassador's users rely on a key going where
// their Java producers send it.
func TestKeyPlacementMatchesJavaClient(t *testing.T) {
	counts := []int{1, 2, 3, 7, 16, 100}
	var opts []kfake.Opt
	for _, n := range counts {
		opts = append(opts, kfake.SeedTopics(int32(n), fmt.Sprintf("keys-%d", n)))
	}
	_, addr := kafkatest.NewCluster(t, opts...)
	for _, p := range knownPlacements { // the test's reference agrees with the hand-worked table
		require.Equal(t, p.want, javaPartition([]byte(p.key), p.partitions), "%q over %d partitions", p.key, p.partitions)
	}
	keys := placementKeys()
	settings := []struct {
		name string
		env  []string
	}{
		{"default", nil},
		{"murmur2_random", []string{"SPILLWAY_KAFKA_PARTITIONER=murmur2_random"}},
		{"murmur2", []string{"SPILLWAY_KAFKA_PARTITIONER=murmur2"}},
	}
	for _, s := range settings {
		t.Run(s.name, func(t *testing.T) {
			p := newProducer(t, addr, s.env...)
			for _, n := range counts {
				topic := fmt.Sprintf("keys-%d", n)
				recs := make([]record.Record, len(keys))
				for i, k := range keys {
					recs[i] = record.Record{Topic: topic, Key: k, Value: fmt.Appendf(nil, "%s/%d", s.name, i), Partition: record.AnyPartition}
				}
				res := p.Produce(t.Context(), recs)
				for i, r := range res {
					require.Equal(t, record.Delivered, r.Outcome, "key %q: %v", keys[i], r.Err)
					assert.Equal(t, javaPartition(keys[i], n), r.Partition, "answer for key %q (%x) over %d partitions", keys[i], keys[i], n)
					got, ok := partitionOf(p, topic, keys[i])
					assert.True(t, ok && got == r.Partition, "Partitioner(%s)(%q) = %d, %v: where the record went, %d", topic, keys[i], got, ok, r.Partition)
				}
			}
		})
	}
	for _, n := range counts {
		topic := fmt.Sprintf("keys-%d", n)
		got := kafkatest.Consume(t, addr, topic, len(settings)*len(keys), 10*time.Second)
		require.Len(t, got, len(settings)*len(keys), topic)
		for _, r := range got {
			assert.Equal(t, javaPartition(r.Key, n), r.Partition, "in Kafka: key %q (%x) of %s over %d partitions", r.Key, r.Key, r.Value, n)
		}
	}
}

// TestPartitionOfOutlivesThePrune: Partitioner knows a topic once its
// partitions were read, and keeps knowing it when the producer forgets
// the topic's layout, unused for a minute (as while Kafka is down and the
// topic's records go to the buffer): a key keeps its partition, and so
// its lane, while its records are buffered.
func TestPartitionOfOutlivesThePrune(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(7, "placed"))
	p := newProducer(t, addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000")
	_, ok := partitionOf(p, "placed", []byte("kafka"))
	assert.False(t, ok, "not known before the topic was read")
	res := p.Produce(t.Context(), []record.Record{{Topic: "placed", Key: []byte("kafka"), Value: []byte("v"), Partition: record.AnyPartition}})
	require.Equal(t, record.Delivered, res[0].Outcome, "%v", res[0].Err)
	require.Eventually(t, func() bool { // the queue idle, then unused for two prunes
		p.prune()
		_, ok := p.cachedLayout("placed")
		return !ok
	}, 10*time.Second, 10*time.Millisecond, "the layout is pruned")
	got, ok := partitionOf(p, "placed", []byte("kafka"))
	assert.True(t, ok, "still known")
	assert.Equal(t, javaPartition([]byte("kafka"), 7), got, "the Java client's partition, 3")
}

// kcatPath finds kcat. Outside CI a machine without it skips the test; in
// CI (CI set, as .ci/run and CI services do) a missing kcat fails it.
func kcatPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("kcat is not installed (apt-get install kcat; .ci/run does it): %v", err)
		}
		t.Fatalf("kcat is not installed (apt-get install kcat; .ci/run does it): %v", err)
	}
	return path
}

// TestKeyPlacementMatchesKcat: an independent producer, kcat (librdkafka)
// with the Java-compatible partitioner murmur2_random, writes the same
// keys straight to the broker; every key lands on the same partition from
// both producers, and on the Java client's partition.
func TestKeyPlacementMatchesKcat(t *testing.T) {
	kcat := kcatPath(t)
	const topic, partitions = "placement", 7
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(partitions, topic))
	var keys [][]byte // kcat reads "key|value" lines: keys without the delimiter or a newline, and not empty
	for _, k := range placementKeys() {
		if len(k) > 0 && !bytes.ContainsAny(k, "|\n\r") {
			keys = append(keys, k)
		}
	}
	var lines bytes.Buffer
	recs := make([]record.Record, len(keys))
	for i, k := range keys {
		fmt.Fprintf(&lines, "%s|kcat-%d\n", k, i)
		recs[i] = record.Record{Topic: topic, Key: k, Value: fmt.Appendf(nil, "spillway-%d", i), Partition: record.AnyPartition}
	}
	cmd := exec.CommandContext(t.Context(), kcat, "-b", addr, "-P", "-t", topic, "-K", "|", "-X", "partitioner=murmur2_random")
	cmd.Stdin = &lines
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "kcat: %s", out)

	for i, r := range newProducer(t, addr).Produce(t.Context(), recs) {
		require.Equal(t, record.Delivered, r.Outcome, "key %q: %v", keys[i], r.Err)
	}

	got := kafkatest.Consume(t, addr, topic, 2*len(keys), 10*time.Second)
	require.Len(t, got, 2*len(keys))
	kcatAt, spillwayAt := map[string]int32{}, map[string]int32{}
	for _, r := range got {
		switch v := string(r.Value); {
		case strings.HasPrefix(v, "kcat-"):
			kcatAt[string(r.Key)] = r.Partition
		case strings.HasPrefix(v, "spillway-"):
			spillwayAt[string(r.Key)] = r.Partition
		default:
			t.Fatalf("unexpected record %q", v)
		}
	}
	require.Len(t, kcatAt, len(keys))
	require.Len(t, spillwayAt, len(keys))
	spread := map[int32]bool{}
	for _, k := range keys {
		assert.Equal(t, kcatAt[string(k)], spillwayAt[string(k)], "key %q: kcat's partition, then Spillway's", k)
		assert.Equal(t, javaPartition(k, partitions), kcatAt[string(k)], "key %q: the Java client's partition, then kcat's", k)
		spread[kcatAt[string(k)]] = true
	}
	assert.Len(t, spread, partitions, "the keys cover every partition, so that a constant partition cannot pass")
}

// partitionOf is the partition p's partitioner gives key in topic, and
// whether it knows the topic's partition count.
func partitionOf(p *Producer, topic string, key []byte) (int32, bool) {
	partitioner, ok := p.Partitioner(topic)
	if !ok {
		return 0, false
	}
	return partitioner(key), true
}
