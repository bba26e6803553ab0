package kafkatest

import (
	"encoding/binary"
	"hash/crc32"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// EachBatch calls fn for each record batch of topic in req, as the broker
// receives them (for kfake's ControlKey hooks that count or read what a
// producer sent).
func EachBatch(req *kmsg.ProduceRequest, topic string, fn func(kmsg.RecordBatch)) {
	for _, t := range req.Topics {
		if t.Topic != topic {
			continue
		}
		for _, p := range t.Partitions {
			for raw := p.Records; len(raw) > 0; {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(raw); err != nil {
					break
				}
				fn(b)
				n := 12 + int(b.Length) // the batch's offset and length fields, then its length
				if n > len(raw) {
					break
				}
				raw = raw[n:]
			}
		}
	}
}

// RecordBatch frames recs as one uncompressed record batch as a client
// sends it, not idempotent: each record's offset delta and length, the
// batch's count, timestamps, length and CRC are set.
func RecordBatch(recs ...*kmsg.Record) []byte { return IdempotentBatch(-1, -1, -1, recs...) }

// IdempotentBatch is RecordBatch from producer id pid at epoch, its first
// record at sequence seq.
func IdempotentBatch(pid int64, epoch int16, seq int32, recs ...*kmsg.Record) []byte {
	var body []byte
	for i, r := range recs {
		r.OffsetDelta = int32(i)
		r.Length = 0
		r.Length = int32(len(r.AppendTo(nil)) - 1) // the varint of 0 took one byte
		body = r.AppendTo(body)
	}
	now := time.Now().UnixMilli()
	b := kmsg.RecordBatch{Magic: 2, LastOffsetDelta: int32(len(recs) - 1), FirstTimestamp: now, MaxTimestamp: now,
		ProducerID: pid, ProducerEpoch: epoch, FirstSequence: seq, NumRecords: int32(len(recs)), Records: body}
	raw := b.AppendTo(nil)
	binary.BigEndian.PutUint32(raw[8:12], uint32(len(raw)-12))
	binary.BigEndian.PutUint32(raw[17:21], crc32.Checksum(raw[21:], crc32.MakeTable(crc32.Castagnoli)))
	return raw
}

// ProduceRequest is a produce request (acks all, a 5 s timeout) of the
// record batch raw to partition 0 of topic.
func ProduceRequest(topic string, raw []byte) *kmsg.ProduceRequest {
	req := kmsg.NewPtrProduceRequest()
	req.Acks, req.TimeoutMillis = -1, 5000
	rt := kmsg.NewProduceRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewProduceRequestTopicPartition()
	rp.Records = raw
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	return req
}
