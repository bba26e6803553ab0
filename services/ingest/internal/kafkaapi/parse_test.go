package kafkaapi

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// batch encodes recs as one magic-2 record batch with codec (0 or 1,
// gzip), its length and CRC set as a producer sets them.
func batch(tb testing.TB, codec int16, recs ...kmsg.Record) []byte {
	tb.Helper()
	var body []byte
	for i, r := range recs {
		r.OffsetDelta = int32(i)
		r.Length = 0
		r.Length = int32(len(r.AppendTo(nil)) - 1)
		body = r.AppendTo(body)
	}
	if codec == 1 {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = zw.Write(body)
		_ = zw.Close()
		body = buf.Bytes()
	}
	b := kmsg.RecordBatch{Magic: 2, Attributes: codec, LastOffsetDelta: int32(len(recs) - 1), FirstTimestamp: 1_700_000_000_000,
		MaxTimestamp: 1_700_000_000_000, ProducerID: -1, ProducerEpoch: -1, FirstSequence: -1, NumRecords: int32(len(recs)), Records: body}
	raw := b.AppendTo(nil)
	binary.BigEndian.PutUint32(raw[8:12], uint32(len(raw)-12))
	binary.BigEndian.PutUint32(raw[17:21], crc32.Checksum(raw[21:], castagnoli))
	return raw
}

// produceRequest frames a produce request of raw batches as a client
// sends it, without the size prefix.
func produceRequest(version int16, raw []byte) []byte {
	req := kmsg.NewPtrProduceRequest()
	req.Version, req.Acks, req.TimeoutMillis = version, -1, 1000
	t := kmsg.NewProduceRequestTopic()
	t.Topic = "orders"
	p := kmsg.NewProduceRequestTopicPartition()
	p.Records = raw
	t.Partitions = append(t.Partitions, p)
	req.Topics = append(req.Topics, t)
	return kmsg.NewRequestFormatter(kmsg.FormatterClientID("fuzz")).AppendRequest(nil, req, 7)[4:]
}

// TestParseRecordsGzip: a gzip batch's records come back with key,
// value, headers, timestamp and the client's partition.
func TestParseRecordsGzip(t *testing.T) {
	raw := batch(t, 1, kmsg.Record{Key: []byte("k"), Value: []byte("v"), TimestampDelta64: 5, Headers: []kmsg.Header{{Key: "h", Value: []byte("x")}}},
		kmsg.Record{Value: []byte("second")})
	left, room := 10, 1<<20
	recs, _, perr := parseRecords(raw, "orders", 2, &left, &room, 10, 1<<20)
	if perr != nil {
		t.Fatal(perr.msg)
	}
	if len(recs) != 2 || string(recs[0].Key) != "k" || string(recs[0].Value) != "v" || recs[0].Headers[0].Key != "h" ||
		string(recs[0].Headers[0].Value) != "x" || recs[0].Partition != 2 || recs[0].Timestamp.UnixMilli() != 1_700_000_000_005 ||
		recs[1].Key != nil || string(recs[1].Value) != "second" {
		t.Fatalf("records: %+v", recs)
	}
	if left != 8 {
		t.Errorf("left = %d, want 8", left)
	}
	raw[len(raw)-1] ^= 1
	if _, _, perr := parseRecords(raw, "orders", 2, &left, &room, 10, 1<<20); perr == nil || perr.msg != "record batch CRC mismatch" {
		t.Errorf("a flipped byte: %+v, want a CRC mismatch", perr)
	}
}

// FuzzParseRequest: any bytes a client sends are parsed or refused,
// never a panic; a produce request's records stay within the record
// and byte bounds it is parsed under.
func FuzzParseRequest(f *testing.F) {
	one := kmsg.Record{Key: []byte("k"), Value: []byte(`{"n":1}`), Headers: []kmsg.Header{{Key: "h", Value: []byte("v")}}}
	f.Add(produceRequest(3, batch(f, 0, one)))
	f.Add(produceRequest(9, batch(f, 1, one, one, one)))
	f.Add(produceRequest(12, append(batch(f, 0, one), batch(f, 1, one)...)))
	f.Add(produceRequest(8, idempotentBatch(f, 1<<40, 2, 1<<31-2, one, one, one)))
	api := kmsg.NewPtrApiVersionsRequest()
	api.Version, api.ClientSoftwareName, api.ClientSoftwareVersion = 3, "librdkafka", "2.0.2"
	f.Add(kmsg.NewRequestFormatter().AppendRequest(nil, api, 1)[4:])
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseRequest(body)
		if err != nil {
			return
		}
		p, ok := req.kreq.(*kmsg.ProduceRequest)
		if !ok {
			return
		}
		for _, tp := range p.Topics {
			for _, pp := range tp.Partitions {
				left, room := 3, 4096
				recs, idem, perr := parseRecords(pp.Records, tp.Topic, pp.Partition, &left, &room, 3, 4096)
				if perr != nil {
					continue
				}
				if idem != nil && (idem.producerID < 0 || idem.first < 0 || idem.last < 0) {
					t.Fatalf("an idempotent batch taken with %+v", *idem)
				}
				if len(recs) > 3 || left < 0 || room < 0 {
					t.Fatalf("%d records parsed under a bound of 3 (left %d), room %d", len(recs), left, room)
				}
			}
		}
	})
}

// TestRecordBoundAcrossPartitions: a partition over
// server.max_request_records only because earlier partitions of the
// request took the rest is answered with a retriable error (the client
// sends it again); a partition over it on its own, RECORD_LIST_TOO_LARGE.
func TestRecordBoundAcrossPartitions(t *testing.T) {
	recs := func(n int) []kmsg.Record {
		out := make([]kmsg.Record, n)
		for i := range out {
			out[i].Value = []byte("v")
		}
		return out
	}
	left, room := 10, 1<<20
	_, _, perr := parseRecords(batch(t, 0, recs(8)...), "orders", 0, &left, &room, 10, 1<<20)
	require.Nil(t, perr)
	_, _, perr = parseRecords(batch(t, 0, recs(5)...), "orders", 1, &left, &room, 10, 1<<20)
	require.NotNil(t, perr)
	assert.Equal(t, kerr.NotEnoughReplicas.Code, perr.code, perr.msg)
	assert.True(t, kerr.ErrorForCode(perr.code).(*kerr.Error).Retriable)
	assert.Equal(t, 5, perr.n)

	left = 10
	_, _, perr = parseRecords(batch(t, 0, recs(12)...), "orders", 0, &left, &room, 10, 1<<20)
	require.NotNil(t, perr)
	assert.Equal(t, kerr.RecordListTooLarge.Code, perr.code, perr.msg)
}
