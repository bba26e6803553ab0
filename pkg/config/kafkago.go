package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/compress/snappy"
)

// The librdkafka names of kafka.compression.codec and kafka.partitioner,
// each with its kafka-go counterpart. They live here, and not in
// pkg/producer, the one user of kafka-go's writer types, so that a name
// is accepted only with its mapping: the table that validates the
// configuration is the table that maps it, and a name cannot be added to
// one without the other (before, kafka.go listed the names and
// producer.go mapped them, with a default branch that would have taken an
// unmapped name silently).

// Compression is kafka.compression.codec: the codec of produce batches.
type Compression string

// The kafka.compression.codec values.
const (
	CompressionNone   Compression = "none"
	CompressionGzip   Compression = "gzip"
	CompressionSnappy Compression = "snappy"
	CompressionLZ4    Compression = "lz4"
	CompressionZstd   Compression = "zstd"
)

// snappy is encoded as Kafka's own clients encode it (librdkafka, the
// Java client): kafka-go's default snappy encoder is klauspost's
// snappy-compatible "better" one, which took twice the CPU for batches
// about 4% smaller (500 JSON events of 100 bytes), and was 6% of the
// ingest's CPU per record on NDJSON batches. Any snappy reader reads
// both. The producer, the bench's limits and loadgen all take their
// codec here.
func init() {
	compress.SnappyCodec.Compression = snappy.FasterCompression
}

var codecs = []struct {
	name  Compression
	codec kafka.Compression
}{
	{CompressionNone, 0}, // kafka-go's "no compression"
	{CompressionGzip, kafka.Gzip},
	{CompressionSnappy, kafka.Snappy},
	{CompressionLZ4, kafka.Lz4},
	{CompressionZstd, kafka.Zstd},
}

// Compressions lists the kafka.compression.codec values, in the order
// errors name them.
func Compressions() []Compression {
	out := make([]Compression, len(codecs))
	for i, c := range codecs {
		out[i] = c.name
	}
	return out
}

// Codec is c's kafka-go codec. A value Parse did not accept (the zero
// Compression) is no compression.
func (c Compression) Codec() kafka.Compression {
	for _, e := range codecs {
		if e.name == c {
			return e.codec
		}
	}
	return 0
}

// Partitioner is kafka.partitioner: how a record's partition is chosen,
// named as librdkafka names its partitioners.
type Partitioner string

// The kafka.partitioner values.
const (
	// PartitionerMurmur2Random is the Java client's: murmur2 of the key,
	// random without a key.
	PartitionerMurmur2Random    Partitioner = "murmur2_random"
	PartitionerMurmur2          Partitioner = "murmur2"
	PartitionerConsistentRandom Partitioner = "consistent_random"
	PartitionerConsistent       Partitioner = "consistent"
	PartitionerRandom           Partitioner = "random"
)

var balancers = []struct {
	name Partitioner
	new  func() kafka.Balancer // a new one each time: RoundRobin keeps a counter
}{
	{PartitionerMurmur2Random, func() kafka.Balancer { return kafka.Murmur2Balancer{} }},
	{PartitionerMurmur2, func() kafka.Balancer { return kafka.Murmur2Balancer{Consistent: true} }},
	{PartitionerConsistentRandom, func() kafka.Balancer { return kafka.CRC32Balancer{} }},
	{PartitionerConsistent, func() kafka.Balancer { return kafka.CRC32Balancer{Consistent: true} }},
	{PartitionerRandom, func() kafka.Balancer { return &kafka.RoundRobin{} }},
}

// Partitioners lists the kafka.partitioner values, in the order errors
// name them.
func Partitioners() []Partitioner {
	out := make([]Partitioner, len(balancers))
	for i, b := range balancers {
		out[i] = b.name
	}
	return out
}

// Balancer returns a new kafka-go balancer for p. A value Parse did not
// accept (the zero Partitioner) is the default, murmur2_random.
func (p Partitioner) Balancer() kafka.Balancer {
	for _, b := range balancers {
		if b.name == p {
			return b.new()
		}
	}
	return balancers[0].new()
}

// checkName returns v when it is one of list, and otherwise an error that
// names the allowed values.
func checkName[T ~string](v T, list []T) (T, error) {
	if slices.Contains(list, v) {
		return v, nil
	}
	names := make([]string, len(list))
	for i, e := range list {
		names[i] = string(e)
	}
	return "", fmt.Errorf("%q is not allowed; want one of %s", v, strings.Join(names, ", "))
}
