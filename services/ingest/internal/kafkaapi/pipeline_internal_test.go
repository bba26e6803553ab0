package kafkaapi

import (
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestPipelinedGroups: the produce requests already read behind a
// produce go with it while they are produces of the same client id that
// wait for their answer, whole, within one request's bound in bytes, and
// at most five in all; the first request that is not stays unread, with
// all after it.
func TestPipelinedGroups(t *testing.T) {
	produce := func(acks int16) *kmsg.ProduceRequest {
		req := kmsg.NewPtrProduceRequest()
		req.Version, req.Acks, req.TimeoutMillis = 8, acks, 1000
		topic := kmsg.NewProduceRequestTopic()
		topic.Topic = "orders"
		p := kmsg.NewProduceRequestTopicPartition()
		p.Records = batch(t, 0, kmsg.Record{Value: []byte("v")})
		topic.Partitions = append(topic.Partitions, p)
		req.Topics = append(req.Topics, topic)
		return req
	}
	frame := func(clientID string, req kmsg.Request, corr int32) []byte {
		return kmsg.NewRequestFormatter(kmsg.FormatterClientID(clientID)).AppendRequest(nil, req, corr)
	}
	one := len(frame("x", produce(-1), 2))
	cases := []struct {
		name   string
		peeked [][]byte
		bound  int // server.kafka.max_request_bytes
		want   []int32
		left   int // bytes left unread
	}{
		{"none read", nil, 1 << 20, []int32{1}, 0},
		{"produces in a row", [][]byte{frame("x", produce(-1), 2), frame("x", produce(1), 3)}, 1 << 20, []int32{1, 2, 3}, 0},
		{"a metadata request ends it", [][]byte{frame("x", produce(-1), 2), frame("x", kmsg.NewPtrMetadataRequest(), 3), frame("x", produce(-1), 4)}, 1 << 20, []int32{1, 2}, -1},
		{"acks 0 ends it", [][]byte{frame("x", produce(0), 2), frame("x", produce(-1), 3)}, 1 << 20, []int32{1}, -1},
		{"another client id ends it", [][]byte{frame("y", produce(-1), 2)}, 1 << 20, []int32{1}, one},
		{"a request not all read ends it", [][]byte{frame("x", produce(-1), 2)[:one-1]}, 1 << 20, []int32{1}, one - 1},
		{"past the byte bound", [][]byte{frame("x", produce(-1), 2), frame("x", produce(-1), 3)}, 100 + 2*(one-4) - 1, []int32{1, 2}, one},
		{"at most five together", [][]byte{frame("x", produce(-1), 2), frame("x", produce(-1), 3), frame("x", produce(-1), 4),
			frame("x", produce(-1), 5), frame("x", produce(-1), 6)}, 1 << 20, []int32{1, 2, 3, 4, 5}, one},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &conn{s: &Server{o: Options{MaxRequestBytes: tc.bound}}}
			total := 0
			for _, f := range tc.peeked {
				c.peeked = append(c.peeked, f...)
				total += len(f)
			}
			reqs, corrs := c.pipelined(produce(-1), 1, "x", 100)
			if len(reqs) != len(corrs) || !slices.Equal(corrs, tc.want) {
				t.Fatalf("%d requests with correlation ids %v, want %v", len(reqs), corrs, tc.want)
			}
			left := tc.left
			if left < 0 { // all but the requests taken
				left = total
				for range tc.want[1:] {
					left -= one
				}
			}
			if len(c.peeked) != left {
				t.Errorf("%d bytes left unread, want %d", len(c.peeked), left)
			}
		})
	}
}

// TestFollowsAhead: a batch behind one of an earlier request of its
// group is checked against that one, as the broker would check it once
// the first is appended.
func TestFollowsAhead(t *testing.T) {
	prev := idemBatch{producerID: 7, epoch: 2, first: 10, last: 14}
	tp := topicPartition{"orders", 0}
	for _, c := range []struct {
		b    idemBatch
		want verdict
	}{
		{idemBatch{producerID: 7, epoch: 2, first: 15, last: 16}, sendIt},
		{idemBatch{producerID: 7, epoch: 2, first: 17, last: 18}, outOfOrder},
		{idemBatch{producerID: 7, epoch: 2, first: 10, last: 14}, repeatsAhead},
		{idemBatch{producerID: 7, epoch: 1, first: 15, last: 16}, staleEpoch},
		{idemBatch{producerID: 7, epoch: 3, first: 0, last: 1}, sendIt},
		{idemBatch{producerID: 7, epoch: 3, first: 15, last: 16}, outOfOrder},
	} {
		if got, msg := followsAhead(prev, c.b, tp); got != c.want {
			t.Errorf("%+v: %d (%s), want %d", c.b, got, msg, c.want)
		}
	}
	if _, msg := followsAhead(prev, idemBatch{producerID: 7, epoch: 2, first: 17, last: 18}, tp); msg != "producer 7 on orders-0 sent sequence 17, expected 15" {
		t.Errorf("message: %q", msg)
	}
}
