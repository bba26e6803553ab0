package producer

import (
	"encoding/binary"
	"hash/crc32"
	"math/bits"
	"sync"
	"time"

	"github.com/segmentio/kafka-go/compress"

	"github.com/spillway/spillway/pkg/record"
)

// The producer writes its record batches itself, straight into one
// buffer, and compresses the records in one write: kafka-go's RecordSet
// wrote each field through the codec's writer, and that cost about 15% of
// the ingest's CPU under batched load, more than compressing. A batch goes
// to Kafka as a produce request carries it (kafka-go's RawRecordSet): its
// size, then the batch.

// The offsets in a record batch (magic 2) of the fields written after its
// records, as Kafka lays it out; batchOverhead is its header's size.
const (
	batchLengthAt     = 8
	batchCRCAt        = 17
	batchAttributesAt = 21
	lastOffsetDeltaAt = 23
	firstTimestampAt  = 27
	maxTimestampAt    = 35
	numRecordsAt      = 57
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// scratch holds a batch's records, and then their compressed bytes,
// while the batch is written. The bytes a request carries are never
// pooled: after a request timed out, kafka-go's connection may still be
// writing them.
var scratch = sync.Pool{New: func() any { return new([]byte) }}

// encodeBatch is batch as a produce request carries a partition's
// records: the batch's size, then a record batch (magic 2, no producer id)
// of its records, compressed with codec (nil: none) and marked so in the
// attributes (compression, the codec's id). Each record's headers are its
// own, then its id as spillway-id. A record with no time gets now's, as
// kafka-go gave it.
func encodeBatch(batch []queued, compression int16, codec compress.Codec, now time.Time) ([]byte, error) {
	first, maxTime := millis(batch[0].time, now), int64(0)
	for i := range batch {
		maxTime = max(maxTime, millis(batch[i].time, now))
	}
	var out []byte
	if codec == nil {
		out = make([]byte, 4+batchOverhead, 4+batchOverhead+recordsSize(batch, first, now))
		out = appendRecords(out, batch, first, now)
	} else {
		records, compressed := scratch.Get().(*[]byte), scratch.Get().(*[]byte)
		*records = appendRecords((*records)[:0], batch, first, now)
		*compressed = (*compressed)[:0]
		w := codec.NewWriter(bytesAppender{compressed})
		_, err := w.Write(*records)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			out = make([]byte, 4+batchOverhead+len(*compressed))
			copy(out[4+batchOverhead:], *compressed)
		}
		for _, b := range []*[]byte{records, compressed} {
			if cap(*b) <= 1<<20 { // a rare huge batch's buffers are not kept
				scratch.Put(b)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	b := out[4:]
	binary.BigEndian.PutUint32(out, uint32(len(b)))
	binary.BigEndian.PutUint64(b[0:], 0) // base offset
	binary.BigEndian.PutUint32(b[batchLengthAt:], uint32(len(b)-12))
	binary.BigEndian.PutUint32(b[12:], ^uint32(0)) // partition leader epoch: -1
	b[16] = 2                                      // magic
	binary.BigEndian.PutUint16(b[batchAttributesAt:], uint16(compression))
	binary.BigEndian.PutUint32(b[lastOffsetDeltaAt:], uint32(len(batch)-1))
	binary.BigEndian.PutUint64(b[firstTimestampAt:], uint64(first))
	binary.BigEndian.PutUint64(b[maxTimestampAt:], uint64(maxTime))
	binary.BigEndian.PutUint64(b[43:], ^uint64(0)) // producer id: -1
	binary.BigEndian.PutUint16(b[51:], ^uint16(0)) // producer epoch: -1
	binary.BigEndian.PutUint32(b[53:], ^uint32(0)) // base sequence: -1
	binary.BigEndian.PutUint32(b[numRecordsAt:], uint32(len(batch)))
	binary.BigEndian.PutUint32(b[batchCRCAt:], crc32.Checksum(b[batchAttributesAt:], castagnoli))
	return out, nil
}

// bytesAppender is an io.Writer that appends to a slice.
type bytesAppender struct{ b *[]byte }

func (a bytesAppender) Write(p []byte) (int, error) {
	*a.b = append(*a.b, p...)
	return len(p), nil
}

// recordsSize is what appendRecords appends for batch.
func recordsSize(batch []queued, first int64, now time.Time) int {
	n := 0
	for i := range batch {
		l := recordLength(&batch[i], i, first, now)
		n += varlongSize(int64(l)) + l
	}
	return n
}

// recordLength is the size of record r, at offset delta i in a batch
// whose first timestamp is first, after its length.
func recordLength(r *queued, i int, first int64, now time.Time) int {
	return 1 + varlongSize(millis(r.time, now)-first) + varlongSize(int64(i)) + fieldsSize(r.key, r.value, r.headers, r.id)
}

// fieldsSize is the size in a record of its key, value and headers (its
// own, then its id as spillway-id), with their lengths and the headers'
// count.
func fieldsSize(key, value []byte, headers []record.Header, id string) int {
	n := nullBytesSize(key) + nullBytesSize(value) + varlongSize(int64(headerCount(headers, id)))
	for _, h := range headers {
		n += varlongSize(int64(len(h.Key))) + len(h.Key) + nullBytesSize(h.Value)
	}
	if id != "" {
		n += varlongSize(int64(len(record.IDHeader))) + len(record.IDHeader) + varlongSize(int64(len(id))) + len(id)
	}
	return n
}

// headerCount is how many headers a record goes with: its own, and its
// id.
func headerCount(headers []record.Header, id string) int {
	if id != "" {
		return len(headers) + 1
	}
	return len(headers)
}

// appendRecords appends batch's records to dst as a record batch (magic
// 2) lays them out, the first timestamp of the batch being first.
func appendRecords(dst []byte, batch []queued, first int64, now time.Time) []byte {
	for i := range batch {
		r := &batch[i]
		dst = binary.AppendVarint(dst, int64(recordLength(r, i, first, now)))
		dst = append(dst, 0) // attributes: none
		dst = binary.AppendVarint(dst, millis(r.time, now)-first)
		dst = binary.AppendVarint(dst, int64(i))
		dst = appendNullBytes(dst, r.key)
		dst = appendNullBytes(dst, r.value)
		dst = binary.AppendVarint(dst, int64(headerCount(r.headers, r.id)))
		for _, h := range r.headers {
			dst = binary.AppendVarint(dst, int64(len(h.Key)))
			dst = append(dst, h.Key...)
			dst = appendNullBytes(dst, h.Value)
		}
		if r.id != "" {
			dst = binary.AppendVarint(dst, int64(len(record.IDHeader)))
			dst = append(dst, record.IDHeader...)
			dst = binary.AppendVarint(dst, int64(len(r.id)))
			dst = append(dst, r.id...)
		}
	}
	return dst
}

// appendNullBytes appends b with its length, or -1 for nil (a null key,
// a tombstone's value, a header without a value).
func appendNullBytes(dst, b []byte) []byte {
	if b == nil {
		return binary.AppendVarint(dst, -1)
	}
	dst = binary.AppendVarint(dst, int64(len(b)))
	return append(dst, b...)
}

// nullBytesSize is b's size in a record: its length (-1 for nil), then b.
func nullBytesSize(b []byte) int {
	if b == nil {
		return 1
	}
	return varlongSize(int64(len(b))) + len(b)
}

// varlongSize is the size of v as a Kafka varint (zigzag, as
// binary.PutVarint writes it).
func varlongSize(v int64) int {
	u := uint64(v<<1) ^ uint64(v>>63)
	return (bits.Len64(u|1) + 6) / 7
}

// millis is t in milliseconds since the epoch, or now's for a zero t.
func millis(t, now time.Time) int64 {
	if t.IsZero() {
		t = now
	}
	return t.UnixMilli()
}
