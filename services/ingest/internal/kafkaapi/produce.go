package kafkaapi

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// produce sends the records of every partition of req through delivery
// in one call, and answers each partition after the durable step: its
// error is that of its first failed record; its base offset that of its
// first record when all were delivered, -1 when any was buffered. The
// batches of idempotent producers are checked against what the listener
// remembers of them first (producers): a repeated one is answered as it
// was and not sent again, one out of sequence is refused. Each
// partition's batch is one unit: a record refused before sending refuses
// it whole, as a broker refuses a batch.
func (c *conn) produce(req *kmsg.ProduceRequest, clientID string) *kmsg.ProduceResponse {
	return c.produceWith([]*kmsg.ProduceRequest{req}, clientID, nil)[0]
}

// skipped is a partition of an oversized produce that was not read
// (handleOversized): topic indexes req.Topics; alone says it is over the
// request bound on its own.
type skipped struct {
	topic     int
	partition int32
	alone     bool
}

// produceWith is produce for reqs, produce requests a client pipelined
// on the connection, in the order it sent them (pipelined): their
// records go in one delivery call, in that order, so that a partition's
// batches keep their order and share the wait for Kafka, and each
// request is answered as if it came alone. skip are the partitions of
// reqs[0] that were skipped, answered with an error after its own and
// counted in the same call; only an oversized request alone has them.
func (c *conn) produceWith(reqs []*kmsg.ProduceRequest, clientID string, skip []skipped) []*kmsg.ProduceResponse {
	resps := make([]*kmsg.ProduceResponse, len(reqs))
	cl, authErr := c.client(clientID)
	ctx := identity.With(c.context(), cl)

	// The one delivery call's request: a partition's records, or its
	// refusal, each at its place among the results.
	dreq := record.Request{API: API}
	place := 0
	refused := func(topic string, n int, err error) {
		dreq.Refused = append(dreq.Refused, record.Refusal{Index: place, Topic: topic, N: n, Err: err})
		place++
	}

	type part struct {
		req    int // index in reqs and resps
		rt, rp int // index in its response
		recs   []record.Record
		idem   *idemBatch
		first  int // its first result's place; -1: not sent
		// stored is, for the retry of an idempotent batch stored in part,
		// each record's result then; only the records not stored then
		// are sent, those at sent.
		stored []record.Result
		sent   []int
	}
	var (
		parts []part
		ids   []int64
	)
	for k, req := range reqs {
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		resps[k] = resp
		left, bytes := c.s.o.MaxRequestRecords, c.s.o.MaxRequestBytes // each request's own bounds
		for _, t := range req.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition = p.Partition
				rp.BaseOffset = -1
				if authErr != nil {
					rp.ErrorCode = kerr.SaslAuthenticationFailed.Code
					rp.ErrorMessage = ptr(authErr.Error())
					refused(t.Topic, 0, &record.Error{Reason: record.ReasonUnauthenticated, Message: authErr.Error()})
					rt.Partitions = append(rt.Partitions, rp)
					continue
				}
				got, idem, err := parseRecords(p.Records, t.Topic, p.Partition, &left, &bytes, c.s.o.MaxRequestRecords, c.s.o.MaxRequestBytes)
				if err != nil {
					rp.ErrorCode, rp.ErrorMessage = err.code, ptr(err.msg)
					refused(t.Topic, max(err.n, 1), &record.Error{Reason: err.reason, Message: err.msg})
					rt.Partitions = append(rt.Partitions, rp)
					continue
				}
				parts = append(parts, part{req: k, rt: len(resp.Topics), rp: len(rt.Partitions), recs: got, idem: idem, first: -1})
				if idem != nil {
					ids = append(ids, idem.producerID)
				}
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
	}
	n := 0
	for i := range parts {
		n += len(parts[i].recs)
	}
	dreq.Records, dreq.Units = make([]record.Record, 0, n), make([]int, 0, n)
	response := func(p *part) (topic string, rp *kmsg.ProduceResponseTopicPartition) {
		rt := &resps[p.req].Topics[p.rt]
		return rt.Topic, &rt.Partitions[p.rp]
	}

	var states map[int64]*producerState
	if len(ids) > 0 {
		wctx, cancel := context.WithTimeout(ctx, claimWait(reqs[0].TimeoutMillis))
		var release func()
		var err error
		states, release, err = c.s.producers.claim(wctx, ids)
		cancel()
		if err != nil {
			// An earlier request of the same producer is still on its way:
			// a retriable error, so that the client sends this again once
			// it has its answer.
			for i := range parts {
				if p := &parts[i]; p.idem != nil {
					_, rp := response(p)
					rp.ErrorCode = kerr.RequestTimedOut.Code
					rp.ErrorMessage = ptr("an earlier produce of this producer id is still waiting for its answer; send this again")
					p.idem = nil
					p.recs = nil
				}
			}
		} else {
			defer release()
		}
	}

	// ahead is, for each producer's partition, the last batch of reqs
	// sent in this call: a later request's batch follows it, not what
	// the producer's state says, which learns of it once it is answered.
	var ahead map[producerPartition]idemBatch
	for i := range parts {
		p := &parts[i]
		topic, rp := response(p)
		if p.idem != nil {
			tp := topicPartition{topic, rp.Partition}
			pp := producerPartition{p.idem.producerID, tp}
			var (
				v    verdict
				base int64
				msg  string
			)
			if prev, ok := ahead[pp]; ok {
				v, msg = followsAhead(prev, *p.idem, tp)
			} else {
				v, base, msg = c.s.producers.check(states[p.idem.producerID], tp, *p.idem)
			}
			switch v {
			case duplicate:
				rp.BaseOffset = base
				continue
			case outOfOrder:
				rp.ErrorCode, rp.ErrorMessage = kerr.OutOfOrderSequenceNumber.Code, ptr(msg)
				refused(tp.topic, len(p.recs), record.Errorf(record.ReasonInvalid, "%s", msg))
				continue
			case staleEpoch:
				rp.ErrorCode, rp.ErrorMessage = kerr.InvalidProducerEpoch.Code, ptr(msg)
				refused(tp.topic, len(p.recs), record.Errorf(record.ReasonInvalid, "%s", msg))
				continue
			case repeatsAhead:
				// Not refused and not counted: the client sends it again,
				// and is then answered as a duplicate.
				rp.ErrorCode, rp.ErrorMessage = kerr.RequestTimedOut.Code, ptr(msg)
				continue
			}
			p.stored = c.s.producers.stored(states[p.idem.producerID], tp, *p.idem, len(p.recs))
			if len(reqs) > 1 {
				if ahead == nil {
					ahead = map[producerPartition]idemBatch{}
				}
				ahead[pp] = *p.idem
			}
		}
		if len(p.recs) == 0 {
			continue
		}
		p.first = place
		send := p.recs
		if p.stored != nil {
			send = nil
			for j, r := range p.stored {
				if r.Outcome == record.Failed {
					p.sent = append(p.sent, j)
					send = append(send, p.recs[j])
				}
			}
		}
		dreq.Records = append(dreq.Records, send...)
		for range send {
			dreq.Units = append(dreq.Units, i)
		}
		place += len(send)
	}
	for _, s := range skip {
		rp := kmsg.NewProduceResponseTopicPartition()
		rp.Partition = s.partition
		rp.BaseOffset = -1
		topic := reqs[0].Topics[s.topic].Topic
		if s.alone {
			rp.ErrorCode = kerr.MessageTooLarge.Code
			rp.ErrorMessage = ptr(fmt.Sprintf("this partition's records are over %d bytes, the most one produce request may hold (server.kafka.max_request_bytes)", c.s.o.MaxRequestBytes))
			refused(topic, 1, record.Errorf(record.ReasonTooLarge, "%s", *rp.ErrorMessage))
		} else {
			rp.ErrorCode = kerr.NotEnoughReplicas.Code
			rp.ErrorMessage = ptr("this produce request holds more bytes than one request may (server.kafka.max_request_bytes); send this partition's records again")
			refused(topic, 1, record.Errorf(record.ReasonOverloaded, "%s", *rp.ErrorMessage))
		}
		rt := &resps[0].Topics[s.topic]
		rt.Partitions = append(rt.Partitions, rp)
	}
	if place == 0 {
		return resps
	}
	// The client lingered for these batches, and nothing more from this
	// connection reaches the producer while this group waits (one group
	// at a time): they go to Kafka without lingering again (linger.ms).
	results, _ := c.s.o.Sender.Deliver(breaker.WithoutLinger(ctx), dreq) // no whole-request refusal: it names no topic and has no error
	if results == nil {
		return resps
	}
	for i := range parts {
		p := &parts[i]
		if p.first < 0 {
			continue
		}
		topic, rp := response(p)
		var all, fresh []record.Result
		if p.stored == nil {
			all = results[p.first : p.first+len(p.recs)]
			fresh = all
			if r := refusedWhole(all); r != nil {
				refuse(rp, r, len(all))
				continue
			}
		} else {
			// A retry of a batch stored in part: the records stored then,
			// and the others now.
			all, fresh = p.stored, results[p.first:p.first+len(p.sent)]
			for j, i := range p.sent {
				all[i] = fresh[j]
			}
		}
		answer(rp, all)
		c.possibleDuplicates(rp, topic, fresh)
		if p.idem == nil {
			continue
		}
		tp := topicPartition{topic, rp.Partition}
		switch {
		case rp.ErrorCode == 0:
			c.s.producers.taken(states[p.idem.producerID], tp, *p.idem, rp.BaseOffset)
		case slices.ContainsFunc(all, isStored):
			// The buffer failed midway: the retry sends only the rest.
			c.s.producers.partly(states[p.idem.producerID], tp, *p.idem, all)
		}
	}
	return resps
}

// refusedWhole is the records a partition's batch was refused for before
// any was sent (delivery failed the others with record.ErrBatchRefused),
// or nil when it was not: a record stored, or failures that are not the
// records' own (Kafka down, an ACL), which answer answers.
func refusedWhole(results []record.Result) []refusal {
	var out []refusal
	dragged := false
	for i, r := range results {
		switch {
		case r.Outcome != record.Failed:
			return nil
		case errors.Is(r.Err, record.ErrBatchRefused):
			dragged = true
		default:
			out = append(out, refusal{index: i, reason: record.ReasonOf(r.Err), msg: record.ClientMessage(r.Err)})
		}
	}
	if dragged {
		return out
	}
	for _, r := range out {
		if !r.reason.InRecord() {
			return nil
		}
	}
	return out
}

// isStored says a record was stored, in Kafka or in the buffer.
func isStored(r record.Result) bool { return r.Outcome != record.Failed }

// possibleDuplicates counts the records of results that were stored when
// their partition's answer rp is an error (the buffer failed midway): a
// client that sends the batch again stores them twice, unless it is an
// idempotent one whose retry this listener answers (producers.partly).
func (c *conn) possibleDuplicates(rp *kmsg.ProduceResponseTopicPartition, topic string, results []record.Result) {
	if rp.ErrorCode == 0 {
		return
	}
	n := 0
	for _, r := range results {
		if isStored(r) {
			n++
		}
	}
	if n > 0 {
		c.s.o.Sender.PossibleDuplicates(topic, n)
	}
}

// refusal is a record of a partition that the partition is refused for.
type refusal struct {
	index  int // in the partition's batch
	reason record.Reason
	msg    string
}

// refuse answers a partition refused whole for refused, as Kafka answers
// a batch it refuses from Produce v8: the first refusal's error, and
// each refused record's batch index and message (record errors); n is
// the batch's records, none of them stored.
func refuse(rp *kmsg.ProduceResponseTopicPartition, refused []refusal, n int) {
	rp.BaseOffset = -1
	rp.ErrorCode = errorCode(refused[0].reason)
	msg := refused[0].msg
	if n > 1 {
		msg = fmt.Sprintf("record %d of this batch of %d: %s; none of the %d was stored", refused[0].index, n, refused[0].msg, n)
	}
	if len(refused) > 1 {
		msg = fmt.Sprintf("%d records of this batch of %d were refused, the first, record %d: %s; none of the %d was stored", len(refused), n, refused[0].index, refused[0].msg, n)
	}
	rp.ErrorMessage = ptr(msg)
	for _, r := range refused {
		er := kmsg.NewProduceResponseTopicPartitionErrorRecord()
		er.RelativeOffset = int32(r.index)
		er.ErrorMessage = ptr(r.msg)
		rp.ErrorRecords = append(rp.ErrorRecords, er)
	}
}

// answer sets a partition's answer from its records' results: its base
// offset is its first record's when all were delivered at base + i, -1
// when any was buffered (or a retry's records were delivered apart from
// the first try's); a failed record's error, with its index, when any
// failed.
// The partition was checked whole before it was sent (delivery's
// units), so a record fails alone only when Kafka and then the buffer did
// not take it: when others were stored, the error is a retriable one
// whatever the record's, so that the client sends the batch again rather
// than give up on records half stored.
func answer(rp *kmsg.ProduceResponseTopicPartition, results []record.Result) {
	rp.BaseOffset = -1
	buffered, stored := false, false
	failed := -1
	for i, r := range results {
		switch r.Outcome {
		case record.Failed:
			if failed < 0 {
				failed = i
			}
		case record.Buffered:
			buffered, stored = true, true
		case record.Delivered:
			stored = true
			if i == 0 {
				rp.BaseOffset = r.Offset
			} else if r.Offset != results[0].Offset+int64(i) {
				buffered = true // not base + i: no offset is given
			}
		}
	}
	if failed >= 0 {
		r := results[failed]
		reason := record.ReasonOf(r.Err)
		rp.ErrorCode = errorCode(reason)
		rp.ErrorMessage = ptr(record.ClientMessage(r.Err))
		if stored && !reason.Retriable() {
			rp.ErrorCode = kerr.NotEnoughReplicas.Code
		}
		er := kmsg.NewProduceResponseTopicPartitionErrorRecord()
		er.RelativeOffset = int32(failed)
		er.ErrorMessage = rp.ErrorMessage
		rp.ErrorRecords = append(rp.ErrorRecords, er)
		rp.BaseOffset = -1
		return
	}
	if buffered {
		rp.BaseOffset = -1
	}
}

// reasonErrors is the Kafka error a client gets for a record that failed
// for each reason: a retriable error where trying again may succeed, and
// one that every client retries (TestEveryReasonMapped checks the row
// against the errors librdkafka and sarama retry on a produce, fewer than
// kgo's and the Java client's). Every reason in record.Reasons has a row.
var reasonErrors = map[record.Reason]*kerr.Error{
	record.ReasonInvalid:         kerr.InvalidRecord,
	record.ReasonTooLarge:        kerr.MessageTooLarge,
	record.ReasonUnknownTopic:    kerr.UnknownTopicOrPartition,
	record.ReasonNotAuthorized:   kerr.NotEnoughReplicas, // Kafka refused Spillway's own credentials: not the client's fault, retry
	record.ReasonUnavailable:     kerr.NotEnoughReplicas,
	record.ReasonTimeout:         kerr.RequestTimedOut,
	record.ReasonBufferFull:      kerr.NotEnoughReplicas,
	record.ReasonOverloaded:      kerr.NotEnoughReplicas,
	record.ReasonForbidden:       kerr.TopicAuthorizationFailed,
	record.ReasonRateLimited:     kerr.NotEnoughReplicas, // not THROTTLING_QUOTA_EXCEEDED: librdkafka and sarama drop a record answered so
	record.ReasonRejected:        kerr.InvalidRecord,
	record.ReasonUnauthenticated: kerr.SaslAuthenticationFailed, // as a produce without credentials is answered
}

// errorCode is the Kafka error code for reason. A reason without a row
// (TestEveryReasonMapped sees that none is) is answered as unavailable, as
// record.ReasonOf names an error without one.
func errorCode(reason record.Reason) int16 {
	e, ok := reasonErrors[reason]
	if !ok {
		e = reasonErrors[record.ReasonUnavailable]
	}
	return e.Code
}

// parseError is a partition's records refused before delivery.
type parseError struct {
	code   int16
	msg    string
	reason record.Reason
	n      int
}

func corrupt(format string, args ...any) *parseError {
	return &parseError{code: kerr.CorruptMessage.Code, msg: fmt.Sprintf(format, args...), reason: record.ReasonInvalid}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// minRecordBytes is the smallest record a batch can hold: its length,
// attributes, timestamp delta, offset delta, key length, value length and
// header count, a byte each.
const minRecordBytes = 7

// parseRecords reads the record batches of one partition (magic 2),
// checks their CRC, decompresses them and returns their records. left
// and room are what the request may still hold in records and in
// decompressed bytes; both are taken from.
//
// A partition over a bound only because the partitions before it in the
// request took the rest gets a retriable error, so that the client sends
// it again in another request: a producer sizes its requests in bytes
// and kgo's hold up to 1 MiB per partition, which is over 10,000 records
// of 100 bytes across three partitions. Over a bound on its own it is
// RECORD_LIST_TOO_LARGE or MESSAGE_TOO_LARGE.
//
// An idempotent producer's batch (a producer id of 0 or more) comes back
// as idem, nil otherwise: such a partition holds one batch, as Kafka
// requires of every produce from v3.
func parseRecords(raw []byte, topic string, partition int32, left, room *int, maxRecords, maxBytes int) ([]record.Record, *idemBatch, *parseError) {
	var out []record.Record
	var idem *idemBatch
	batches := 0
	took, tookBytes := 0, 0 // this partition's
	later := func(what string, n int) *parseError {
		return &parseError{code: kerr.NotEnoughReplicas.Code, reason: record.ReasonOverloaded, n: n,
			msg: "this produce request holds more " + what + " than one request may; send this partition's records again"}
	}
	for len(raw) > 0 {
		if len(raw) < 61 {
			return nil, nil, corrupt("a record batch of %d bytes is shorter than its header", len(raw))
		}
		length := int64(int32(binary.BigEndian.Uint32(raw[8:12])))
		if length < 49 || 12+length > int64(len(raw)) {
			return nil, nil, corrupt("a record batch's length %d does not fit the %d bytes sent", length, len(raw))
		}
		one := raw[:12+length]
		raw = raw[12+length:]
		var b kmsg.RecordBatch
		if err := b.ReadFrom(one); err != nil {
			return nil, nil, corrupt("record batch: %v", err)
		}
		if b.Magic != 2 {
			return nil, nil, &parseError{code: kerr.UnsupportedForMessageFormat.Code, msg: fmt.Sprintf("record batch magic %d: only magic 2 (Kafka 0.11 and later) is accepted", b.Magic), reason: record.ReasonInvalid}
		}
		if crc32.Checksum(one[21:], castagnoli) != uint32(b.CRC) {
			return nil, nil, corrupt("record batch CRC mismatch")
		}
		if b.Attributes&0x20 != 0 {
			continue // a control batch (transaction marker): no records
		}
		if batches++; b.ProducerID >= 0 || idem != nil {
			if batches > 1 {
				return nil, nil, &parseError{code: kerr.InvalidRecord.Code, reason: record.ReasonInvalid, n: int(max(b.NumRecords, 1)),
					msg: "an idempotent producer's partition holds one record batch per produce request"}
			}
			if b.LastOffsetDelta < 0 || b.FirstSequence < 0 {
				return nil, nil, corrupt("an idempotent batch with sequence %d and last offset delta %d", b.FirstSequence, b.LastOffsetDelta)
			}
			idem = &idemBatch{producerID: b.ProducerID, epoch: b.ProducerEpoch, first: b.FirstSequence, last: lastSequence(b.FirstSequence, b.LastOffsetDelta)}
		}
		if b.NumRecords >= 0 && int(b.NumRecords) > *left && took+int(b.NumRecords) <= maxRecords {
			return nil, nil, later("records (server.max_request_records)", int(b.NumRecords))
		}
		if b.NumRecords < 0 || int(b.NumRecords) > *left {
			return nil, nil, &parseError{code: kerr.RecordListTooLarge.Code, reason: record.ReasonTooLarge, n: int(max(b.NumRecords, 0)),
				msg: "too many records in one produce request: the limit is server.max_request_records"}
		}
		*left -= int(b.NumRecords)
		took += int(b.NumRecords)
		data, err := decompress(int8(b.Attributes&0x07), b.Records, *room)
		if err != nil {
			if err.code == kerr.MessageTooLarge.Code {
				if _, alone := decompress(int8(b.Attributes&0x07), b.Records, maxBytes-tookBytes); alone == nil {
					return nil, nil, later("bytes (server.kafka.max_request_bytes)", int(b.NumRecords))
				}
			}
			return nil, nil, err
		}
		*room -= len(data)
		tookBytes += len(data)
		base := time.UnixMilli(b.FirstTimestamp)
		// Grown once for the batch, but no further than its bytes could
		// hold: NumRecords is the client's word until each record parses.
		out = slices.Grow(out, min(int(b.NumRecords), len(data)/minRecordBytes))
		for i := int32(0); i < b.NumRecords; i++ {
			l, n := kbin.Varint(data)
			if n == 0 || l < 0 || int(l) > len(data)-n {
				return nil, nil, corrupt("record %d of a batch of %d: bad length", i, b.NumRecords)
			}
			var r kmsg.Record
			if err := r.ReadFrom(data[:n+int(l)]); err != nil {
				return nil, nil, corrupt("record %d of a batch of %d: %v", i, b.NumRecords, err)
			}
			data = data[n+int(l):]
			// A null key or value (a tombstone) stays null, and an empty one
			// empty, in Kafka and in the buffer: on a compacted topic a
			// null value deletes the key and an empty one does not.
			rec := record.Record{Topic: topic, Key: r.Key, Value: r.Value, Partition: partition,
				Timestamp: base.Add(time.Duration(r.TimestampDelta64) * time.Millisecond)}
			for _, h := range r.Headers {
				rec.Headers = append(rec.Headers, record.Header{Key: h.Key, Value: h.Value})
			}
			out = append(out, rec)
		}
	}
	return out, idem, nil
}

// decompress undoes a batch's codec (1 gzip, 2 snappy, 3 lz4, 4 zstd),
// refusing output beyond room bytes.
func decompress(codec int8, src []byte, room int) ([]byte, *parseError) {
	tooLarge := &parseError{code: kerr.MessageTooLarge.Code, reason: record.ReasonTooLarge, n: 1,
		msg: fmt.Sprintf("the records of one produce request are over %d bytes once decompressed", room)}
	var r io.Reader
	switch codec {
	case 0:
		if len(src) > room {
			return nil, tooLarge
		}
		return src, nil
	case 1:
		zr, err := gzip.NewReader(bytes.NewReader(src))
		if err != nil {
			return nil, corrupt("gzip: %v", err)
		}
		r = zr
	case 2:
		return unsnappy(src, room, tooLarge)
	case 3:
		r = lz4.NewReader(bytes.NewReader(src))
	case 4:
		zr, err := zstd.NewReader(bytes.NewReader(src), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(room)+1))
		if err != nil {
			return nil, corrupt("zstd: %v", err)
		}
		defer zr.Close()
		r = zr
	default:
		return nil, corrupt("unknown compression codec %d", codec)
	}
	out, err := io.ReadAll(io.LimitReader(r, int64(room)+1))
	if err != nil {
		return nil, corrupt("decompressing: %v", err)
	}
	if len(out) > room {
		return nil, tooLarge
	}
	return out, nil
}

// xerial is the header of snappy's framing that Java clients write.
var xerial = []byte{0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0}

// unsnappy decodes raw snappy or its xerial framing (a 16-byte header,
// then chunks each prefixed with its big-endian length).
func unsnappy(src []byte, room int, tooLarge *parseError) ([]byte, *parseError) {
	block := func(dst, b []byte) ([]byte, *parseError) {
		n, err := s2.DecodedLen(b)
		if err != nil {
			return nil, corrupt("snappy: %v", err)
		}
		if len(dst)+n > room {
			return nil, tooLarge
		}
		// Decoded in place, after dst's bytes: Decode writes into the
		// slice it is given when its capacity holds the block.
		dst = slices.Grow(dst, n)
		if _, err := s2.Decode(dst[len(dst):], b); err != nil {
			return nil, corrupt("snappy: %v", err)
		}
		return dst[:len(dst)+n], nil
	}
	if !bytes.HasPrefix(src, xerial) {
		return block(nil, src)
	}
	if len(src) < 16 {
		return nil, corrupt("snappy: short xerial header")
	}
	src = src[16:]
	var out []byte
	for len(src) > 0 {
		if len(src) < 4 {
			return nil, corrupt("snappy: short xerial chunk")
		}
		n := int(binary.BigEndian.Uint32(src))
		if n < 0 || n > len(src)-4 {
			return nil, corrupt("snappy: a xerial chunk of %d bytes does not fit", n)
		}
		var perr *parseError
		if out, perr = block(out, src[4:4+n]); perr != nil {
			return nil, perr
		}
		src = src[4+n:]
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }
