package kafkaapi

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/delivertest"
)

// The API table: the listener's produce scripted, partition by partition,
// to every outcome the scripted Sender (scripted_test.go) gives, without
// Kafka or the ingest: error code, error message, the failed record's
// relative offset and the base offset a client reads, and the records
// the Sender was handed.

// TestProduceAnswers sends a produce request of two partitions of three
// records each, in one delivery call, and checks each partition's answer.
func TestProduceAnswers(t *testing.T) {
	type want struct {
		code       int16
		base       int64
		msg        string  // the partition's error message
		errRecords []int32 // the failed records' places
	}
	ok := func(base int64) want { return want{0, base, "", nil} }
	// A record failed for reason: its error when nothing of the partition
	// was stored, else a retriable one, so that the client sends the
	// batch again rather than drop records half stored.
	fails := func(reason record.Reason, at int32, stored bool) want {
		code := errorCode(reason)
		if stored && !reason.Retriable() {
			code = kerr.NotEnoughReplicas.Code
		}
		return want{code, -1, failMessage(reason), []int32{at}}
	}
	// A batch refused whole before it was sent, for the records at: the
	// first one's error, and each one listed.
	refused := func(reason record.Reason, msg string, at ...int32) want {
		return want{errorCode(reason), -1, msg, at}
	}
	type partCase struct {
		script [3]scripted
		want   want
	}
	cases := map[string]partCase{
		"delivered":                {[3]scripted{delivered(0, 10), delivered(0, 11), delivered(0, 12)}, ok(10)},
		"delivered, not in a row":  {[3]scripted{delivered(0, 10), delivered(0, 12), delivered(0, 13)}, ok(-1)},
		"buffered":                 {[3]scripted{buffered(), buffered(), buffered()}, ok(-1)},
		"delivered, then buffered": {[3]scripted{delivered(0, 10), buffered(), buffered()}, ok(-1)},
	}
	for _, reason := range record.Reasons() {
		r := reason
		if r.InRecord() { // each record at fault: the batch refused for all three
			cases["all "+string(r)] = partCase{[3]scripted{failed(r), failed(r), failed(r)},
				refused(r, "3 records of this batch of 3 were refused, the first, record 0: "+failMessage(r)+"; none of the 3 was stored", 0, 1, 2)}
		} else {
			cases["all "+string(r)] = partCase{[3]scripted{failed(r), failed(r), failed(r)}, fails(r, 0, false)}
		}
		cases["second "+string(r)+", its batch refused"] = partCase{[3]scripted{dragged(r), failed(r), dragged(r)},
			refused(r, "record 1 of this batch of 3: "+failMessage(r)+"; none of the 3 was stored", 1)}
		cases["second "+string(r)+" among delivered"] = partCase{[3]scripted{delivered(0, 10), failed(r), delivered(0, 11)}, fails(r, 1, true)}
		cases["last "+string(r)+" after buffered"] = partCase{[3]scripted{buffered(), buffered(), failed(r)}, fails(r, 2, true)}
	}
	// The other partition of each request: delivered, so that each
	// partition is seen answered by its own records only.
	other := partCase{[3]scripted{delivered(1, 50), delivered(1, 51), delivered(1, 52)}, ok(50)}

	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			script := map[string]scripted{}
			req := kmsg.NewPtrProduceRequest()
			req.Acks = -1
			rt := kmsg.NewProduceRequestTopic()
			rt.Topic = "orders"
			for p, pc := range []partCase{c, other} {
				var recs []kmsg.Record
				for i, a := range pc.script {
					v := string(rune('a' + 3*p + i))
					script[v] = a
					recs = append(recs, kmsg.Record{Key: []byte("k-" + v), Value: []byte(v),
						Headers: []kmsg.Header{{Key: "h", Value: []byte(v)}}})
				}
				rp := kmsg.NewProduceRequestTopicPartition()
				rp.Partition = int32(p)
				rp.Records = batch(t, 0, recs...)
				rt.Partitions = append(rt.Partitions, rp)
			}
			req.Topics = append(req.Topics, rt)
			sender := &delivertest.Sender{ByValue: script}
			c2 := &conn{s: New(Options{Sender: sender, MaxRequestRecords: 100, MaxRequestBytes: 1 << 20})}
			resp := c2.produce(req, "client")

			require.Len(t, resp.Topics, 1)
			require.Len(t, resp.Topics[0].Partitions, 2)
			for p, pc := range []partCase{c, other} {
				rp := resp.Topics[0].Partitions[p]
				assert.Equal(t, int32(p), rp.Partition)
				assert.Equal(t, kerr.ErrorForCode(pc.want.code), kerr.ErrorForCode(rp.ErrorCode), "partition %d's error", p)
				assert.Equal(t, pc.want.base, rp.BaseOffset, "partition %d's base offset", p)
				if pc.want.errRecords == nil {
					assert.Nil(t, rp.ErrorMessage, "partition %d", p)
					assert.Empty(t, rp.ErrorRecords, "partition %d", p)
					continue
				}
				if assert.NotNil(t, rp.ErrorMessage) {
					assert.Equal(t, pc.want.msg, *rp.ErrorMessage)
				}
				var at []int32
				for _, er := range rp.ErrorRecords {
					at = append(at, er.RelativeOffset)
					if assert.NotNil(t, er.ErrorMessage) {
						assert.Equal(t, failMessage(pc.script[er.RelativeOffset].Reason), *er.ErrorMessage, "record %d's error", er.RelativeOffset)
					}
				}
				assert.Equal(t, pc.want.errRecords, at, "partition %d's failed records", p)
			}

			sent := sender.Records()
			require.Len(t, sent, 6)
			assert.Equal(t, 1, sender.Calls(), "one delivery call for both partitions")
			for i, r := range sent {
				v := string(rune('a' + i))
				assert.Equal(t, "orders", r.Topic)
				assert.Equal(t, int32(i/3), r.Partition, "record %s", v)
				assert.Equal(t, v, string(r.Value))
				assert.Equal(t, "k-"+v, string(r.Key))
				assert.Equal(t, []record.Header{{Key: "h", Value: []byte(v)}}, r.Headers)
			}
		})
	}
}

// TestProduceRefusedPartition: a partition whose batch the listener
// cannot read is answered with its refusal, in its place among the
// request's answers, while the other partition's records are sent and
// answered as the script has them.
func TestProduceRefusedPartition(t *testing.T) {
	req := kmsg.NewPtrProduceRequest()
	req.Acks = -1
	rt := kmsg.NewProduceRequestTopic()
	rt.Topic = "orders"
	bad := kmsg.NewProduceRequestTopicPartition()
	bad.Partition, bad.Records = 0, []byte{0, 1, 2}
	good := kmsg.NewProduceRequestTopicPartition()
	good.Partition, good.Records = 1, batch(t, 0, kmsg.Record{Value: []byte("a")}, kmsg.Record{Value: []byte("b")})
	rt.Partitions = append(rt.Partitions, bad, good)
	req.Topics = append(req.Topics, rt)
	sender := &delivertest.Sender{ByValue: map[string]scripted{"a": delivered(1, 7), "b": delivered(1, 8)}}
	c := &conn{s: New(Options{Sender: sender, MaxRequestRecords: 100, MaxRequestBytes: 1 << 20})}
	resp := c.produce(req, "client")

	require.Len(t, resp.Topics, 1)
	require.Len(t, resp.Topics[0].Partitions, 2)
	p0, p1 := resp.Topics[0].Partitions[0], resp.Topics[0].Partitions[1]
	assert.Equal(t, int32(0), p0.Partition)
	assert.Equal(t, kerr.CorruptMessage, kerr.ErrorForCode(p0.ErrorCode))
	if assert.NotNil(t, p0.ErrorMessage) {
		assert.Equal(t, "a record batch of 3 bytes is shorter than its header", *p0.ErrorMessage)
	}
	assert.Equal(t, int64(-1), p0.BaseOffset)
	assert.Equal(t, int32(1), p1.Partition)
	assert.Equal(t, int16(0), p1.ErrorCode)
	assert.Equal(t, int64(7), p1.BaseOffset)
	sent := sender.Records()
	require.Len(t, sent, 2)
	assert.Equal(t, "a", string(sent[0].Value))
	assert.Equal(t, "b", string(sent[1].Value))
}
