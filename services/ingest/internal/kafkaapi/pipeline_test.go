package kafkaapi_test

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestPipelinedProduces: produce requests a client pipelines on one
// connection, as Kafka clients do (up to five in flight), are answered
// in the order sent, each under its own correlation id and with its own
// answer, also when the ones read while an earlier produce waited for
// Kafka go on together. An idempotent producer's batches in that row are
// checked against each other: the next in sequence is stored, a gap is
// OUT_OF_ORDER_SEQUENCE_NUMBER and stores nothing. A metadata request in
// the row is answered in its place.
func TestPipelinedProduces(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	var holding atomic.Bool
	kafkatest.HoldProduce(t, c, &holding)
	in := ingesttest.Start(t, addr)
	cl := kgoClient(t, in.Kafka, kgo.DisableIdempotentWrite())
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("warm")}).FirstErr()) // offset 0
	holding.Store(true)

	const pid = 99
	produce := func(seq int32, tag string, n int) kmsg.Request {
		recs := make([]*kmsg.Record, n)
		for i := range recs {
			recs[i] = &kmsg.Record{Value: fmt.Appendf(nil, "%s-%d", tag, i)}
		}
		req := kafkatest.ProduceRequest("orders", kafkatest.IdempotentBatch(pid, 0, seq, recs...))
		req.Version = 8
		return req
	}
	f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("piped"))
	var out []byte
	for corr, req := range []kmsg.Request{
		produce(0, "a", 2), // waits for Kafka while the others are read
		produce(2, "b", 2),
		produce(4, "c", 2),
		produce(10, "gap", 1),
		kmsg.NewPtrMetadataRequest(),
		produce(6, "d", 1),
	} {
		out = append(out, f.AppendRequest(nil, req, int32(corr+1))...) // it frames from dst[0]
	}

	conn, err := net.DialTimeout("tcp", in.Kafka, 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(20*time.Second)))
	_, err = conn.Write(out)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_records_in_flight`) == 2
	}, 10*time.Second, 10*time.Millisecond, "the first produce waits for Kafka")
	holding.Store(false)

	answers := map[int32][]byte{}
	var order []int32
	for range 6 {
		corr, body := readAnswer(t, conn)
		order = append(order, corr)
		answers[corr] = body
	}
	require.Equal(t, []int32{1, 2, 3, 4, 5, 6}, order, "answered in the order sent")

	partition := func(corr int32) kmsg.ProduceResponseTopicPartition {
		t.Helper()
		resp := kmsg.NewPtrProduceResponse()
		resp.Version = 8
		require.NoError(t, resp.ReadFrom(answers[corr]), "answer %d", corr)
		require.Len(t, resp.Topics, 1)
		require.Len(t, resp.Topics[0].Partitions, 1)
		return resp.Topics[0].Partitions[0]
	}
	for corr, base := range map[int32]int64{1: 1, 2: 3, 3: 5, 6: 7} {
		p := partition(corr)
		assert.Equal(t, int16(0), p.ErrorCode, "request %d: %v", corr, kerr.ErrorForCode(p.ErrorCode))
		assert.Equal(t, base, p.BaseOffset, "request %d", corr)
	}
	gap := partition(4)
	assert.Equal(t, kerr.OutOfOrderSequenceNumber.Code, gap.ErrorCode, "%v", kerr.ErrorForCode(gap.ErrorCode))
	if assert.NotNil(t, gap.ErrorMessage) {
		assert.Contains(t, *gap.ErrorMessage, "sent sequence 10, expected 6")
	}
	meta := kmsg.NewPtrMetadataResponse()
	require.NoError(t, meta.ReadFrom(answers[5]), "the metadata answer")

	got := kafkatest.Consume(t, addr, "orders", 8, 10*time.Second)
	var values []string
	for _, r := range got {
		values = append(values, string(r.Value))
	}
	assert.Equal(t, []string{"warm", "a-0", "a-1", "b-0", "b-1", "c-0", "c-1", "d-0"}, values)
}
