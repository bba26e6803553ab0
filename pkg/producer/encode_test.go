package producer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
)

// encodeCases are records that exercise each field of a record batch: a
// null and an empty key, a tombstone (null value) and an empty value,
// headers with null and empty values, with an id and without, times out
// of order and far apart.
func encodeCases(t0 time.Time) []queued {
	return []queued{
		{key: []byte("k1"), value: []byte(`{"n":1}`), time: t0, id: "01JQ8ZQ3K4M5N6P7Q8R9S0T1V2"},
		{key: nil, value: []byte("no key"), time: t0.Add(3 * time.Millisecond)},
		{key: []byte{}, value: []byte{}, time: t0.Add(-2 * time.Second)},
		{key: []byte("tombstone"), value: nil, time: t0.Add(time.Hour)},
		{key: []byte("h"), value: bytes.Repeat([]byte("v"), 300), time: t0, headers: []record.Header{{Key: "null"}, {Key: "empty", Value: []byte{}}, {Key: "x", Value: []byte("y")}}, id: "01J"},
	}
}

// TestEncodeBatchAsKafkaGo: a batch the producer writes itself is, byte for
// byte, the one kafka-go's RecordSet writes of the same records, with each
// codec, and it reads back with the same keys, values, headers and times.
func TestEncodeBatchAsKafkaGo(t *testing.T) {
	t0 := time.UnixMilli(1_780_000_000_123)
	batch := encodeCases(t0)
	for _, c := range []kafka.Compression{0, kafka.Gzip, kafka.Snappy, kafka.Lz4, kafka.Zstd} {
		name := "none"
		if c != 0 {
			name = c.String()
		}
		t.Run(name, func(t *testing.T) {
			got, err := encodeBatch(batch, int16(c)&0x7, c.Codec(), time.Now())
			require.NoError(t, err)

			recs := make([]kafka.Record, len(batch))
			for i, q := range batch {
				recs[i] = kafka.Record{Time: q.time, Headers: kafkaHeaders(&q)}
				if q.key != nil {
					recs[i].Key = protocol.NewBytes(q.key)
				}
				if q.value != nil {
					recs[i].Value = protocol.NewBytes(q.value)
				}
			}
			var want bytes.Buffer
			rs := protocol.RecordSet{Version: 2, Attributes: protocol.Attributes(c) & 0x7, Records: protocol.NewRecordReader(recs...)}
			_, err = rs.WriteTo(&want)
			require.NoError(t, err)
			assert.Equal(t, want.Bytes(), got, "kafka-go's bytes, then ours")

			read := readBatch(t, got)
			require.Len(t, read, len(batch))
			for i, r := range read {
				assert.Equal(t, batch[i].key, r.key, "record %d's key", i)
				assert.Equal(t, batch[i].value, r.value, "record %d's value", i)
				assert.Equal(t, batch[i].time.UnixMilli(), r.time.UnixMilli(), "record %d's time", i)
				assert.Equal(t, kafkaHeaders(&batch[i]), r.headers, "record %d's headers, then its id", i)
			}
		})
	}
}

// TestEncodeBatchHeader: the header's fields, read at Kafka's offsets: the
// sizes, the checksum over the batch from its attributes, the count,
// the offset delta and the timestamps, and no producer id; a record
// without a time gets now's.
func TestEncodeBatchHeader(t *testing.T) {
	t0 := time.UnixMilli(1_780_000_000_123)
	now := t0.Add(5 * time.Second)
	batch := append(encodeCases(t0), queued{key: []byte("no time"), value: []byte("v")})
	got, err := encodeBatch(batch, 0, nil, now)
	require.NoError(t, err)

	be := func(at, n int) int64 {
		var v uint64
		for _, c := range got[4+at : 4+at+n] {
			v = v<<8 | uint64(c)
		}
		return int64(v)
	}
	assert.Equal(t, int64(len(got)-4), be(-4, 4), "the size in front")
	assert.Equal(t, int64(len(got)-4-12), be(batchLengthAt, 4), "batch length")
	assert.Equal(t, int64(2), be(16, 1), "magic")
	assert.Equal(t, int64(crc32.Checksum(got[4+batchAttributesAt:], castagnoli)), be(batchCRCAt, 4), "crc32c")
	assert.Equal(t, int64(len(batch)-1), be(lastOffsetDeltaAt, 4), "last offset delta")
	assert.Equal(t, t0.UnixMilli(), be(firstTimestampAt, 8), "first timestamp")
	assert.Equal(t, t0.Add(time.Hour).UnixMilli(), be(maxTimestampAt, 8), "max timestamp")
	assert.Equal(t, int64(-1), int64(int16(be(51, 2))), "producer epoch")
	assert.Equal(t, int64(len(batch)), be(numRecordsAt, 4), "records")

	read := readBatch(t, got)
	require.Len(t, read, len(batch))
	assert.Equal(t, now.UnixMilli(), read[len(read)-1].time.UnixMilli(), "a record without a time has now's")
}

// TestVarlongSize: varlongSize is the size binary.PutVarint writes, at
// each boundary of a byte more.
func TestVarlongSize(t *testing.T) {
	values := []int64{0, -1, 1, math.MaxInt64, math.MinInt64}
	for shift := 6; shift < 63; shift += 7 {
		values = append(values, 1<<shift-1, 1<<shift, -1<<shift, -1<<shift-1)
	}
	for _, v := range values {
		var buf [binary.MaxVarintLen64]byte
		assert.Equal(t, binary.PutVarint(buf[:], v), varlongSize(v), "%d", v)
	}
}

// kafkaHeaders is the headers q goes to Kafka with: its own, then its id.
func kafkaHeaders(q *queued) []kafka.Header {
	var hs []kafka.Header
	for _, h := range q.headers {
		hs = append(hs, kafka.Header{Key: h.Key, Value: h.Value})
	}
	if q.id != "" {
		hs = append(hs, kafka.Header{Key: record.IDHeader, Value: []byte(q.id)})
	}
	return hs
}

// readRecord is a record as kafka-go reads it back.
type readRecord struct {
	key, value []byte
	time       time.Time
	headers    []kafka.Header
}

// readBatch reads a produce request's record set with kafka-go.
func readBatch(t *testing.T, b []byte) []readRecord {
	t.Helper()
	var rs protocol.RecordSet
	_, err := rs.ReadFrom(bytes.NewReader(b))
	require.NoError(t, err)
	var out []readRecord
	for {
		r, err := rs.Records.ReadRecord()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		q := readRecord{time: r.Time, headers: r.Headers}
		if r.Key != nil {
			q.key, err = io.ReadAll(r.Key)
			require.NoError(t, err)
			q.key = append([]byte{}, q.key...)
		}
		if r.Value != nil {
			q.value, err = io.ReadAll(r.Value)
			require.NoError(t, err)
			q.value = append([]byte{}, q.value...)
		}
		out = append(out, q)
	}
}

// BenchmarkEncodeBatch compares writing a batch of 500 records of 100
// bytes (a key, the spillway-id header) ourselves with kafka-go's
// RecordSet, with and without snappy: go test -bench EncodeBatch
// ./pkg/producer.
func BenchmarkEncodeBatch(b *testing.B) {
	now := time.Now()
	batch := make([]queued, 500)
	recs := make([]kafka.Record, len(batch))
	for i := range batch {
		value := fmt.Appendf(nil, `{"n":%d,"pad":"%s"}`, i, bytes.Repeat([]byte("x"), 100))
		batch[i] = queued{key: fmt.Appendf(nil, "key-%d", i), value: value[:100], time: now,
			id: fmt.Sprintf("01JABCDEFGHJKMNPQRS%07d", i)}
		recs[i] = kafka.Record{Time: now, Key: protocol.NewBytes(batch[i].key), Value: protocol.NewBytes(batch[i].value), Headers: kafkaHeaders(&batch[i])}
	}
	for _, c := range []kafka.Compression{0, kafka.Snappy} {
		name := "none"
		if c != 0 {
			name = c.String()
		}
		b.Run("spillway/"+name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := encodeBatch(batch, int16(c)&0x7, c.Codec(), now); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("kafka-go/"+name, func(b *testing.B) {
			b.ReportAllocs()
			var buf bytes.Buffer
			for b.Loop() {
				buf.Reset()
				rs := protocol.RecordSet{Version: 2, Attributes: protocol.Attributes(c) & 0x7, Records: protocol.NewRecordReader(recs...)}
				if _, err := rs.WriteTo(&buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
