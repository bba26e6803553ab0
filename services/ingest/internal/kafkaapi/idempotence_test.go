package kafkaapi_test

import (
	"fmt"
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

// idempotentProduce sends n records "<tag>-i" as one batch of producer
// pid at epoch and first sequence seq to partition 0 of topic, as an
// idempotent client frames it, and returns the partition's answer.
func idempotentProduce(t *testing.T, cl *kgo.Client, topic string, pid int64, epoch int16, seq int32, tag string, n int) kmsg.ProduceResponseTopicPartition {
	t.Helper()
	recs := make([]*kmsg.Record, n)
	for i := range recs {
		recs[i] = &kmsg.Record{Value: fmt.Appendf(nil, "%s-%d", tag, i)}
	}
	req := kafkatest.ProduceRequest(topic, kafkatest.IdempotentBatch(pid, epoch, seq, recs...))
	resp, err := req.RequestWith(t.Context(), cl)
	require.NoError(t, err)
	require.Len(t, resp.Topics, 1)
	require.Len(t, resp.Topics[0].Partitions, 1)
	return resp.Topics[0].Partitions[0]
}

// TestIdempotentSequences: the listener checks an idempotent producer's
// sequences as Kafka's broker does. A batch repeated is answered with its
// first answer's offset and is not stored again, even behind four newer
// batches; a gap is OUT_OF_ORDER_SEQUENCE_NUMBER and stores nothing; an
// older epoch is INVALID_PRODUCER_EPOCH; a new epoch starts at 0; a
// producer id the listener never handed out (another ingest's, or one
// from before a restart) is taken at any sequence.
func TestIdempotentSequences(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	in := ingesttest.Start(t, addr)
	cl := kgoClient(t, in.Kafka)
	const pid = 1 << 40

	// Unknown to this ingest, mid-stream: taken.
	first := idempotentProduce(t, cl, "orders", pid, 3, 40, "a", 2)
	require.Equal(t, int16(0), first.ErrorCode, "an unknown producer id at sequence 40: %v", kerr.ErrorForCode(first.ErrorCode))
	assert.Equal(t, int64(0), first.BaseOffset)
	for i, tag := range []string{"b", "c", "d", "e"} {
		p := idempotentProduce(t, cl, "orders", pid, 3, int32(42+2*i), tag, 2)
		require.Equal(t, int16(0), p.ErrorCode, "batch %s: %v", tag, kerr.ErrorForCode(p.ErrorCode))
	}
	// The fifth last batch, sent again: its first answer.
	again := idempotentProduce(t, cl, "orders", pid, 3, 40, "a", 2)
	assert.Equal(t, int16(0), again.ErrorCode, "%v", kerr.ErrorForCode(again.ErrorCode))
	assert.Equal(t, int64(0), again.BaseOffset, "a duplicate is answered with the offset it was stored at")

	gap := idempotentProduce(t, cl, "orders", pid, 3, 60, "gap", 2)
	assert.Equal(t, kerr.OutOfOrderSequenceNumber.Code, gap.ErrorCode, "%v", kerr.ErrorForCode(gap.ErrorCode))
	require.NotNil(t, gap.ErrorMessage)
	assert.Contains(t, *gap.ErrorMessage, "sent sequence 60, expected 50")

	old := idempotentProduce(t, cl, "orders", pid, 2, 50, "old", 1)
	assert.Equal(t, kerr.InvalidProducerEpoch.Code, old.ErrorCode, "%v", kerr.ErrorForCode(old.ErrorCode))
	notZero := idempotentProduce(t, cl, "orders", pid, 4, 5, "bad", 1)
	assert.Equal(t, kerr.OutOfOrderSequenceNumber.Code, notZero.ErrorCode, "a new epoch not at 0: %v", kerr.ErrorForCode(notZero.ErrorCode))
	bumped := idempotentProduce(t, cl, "orders", pid, 4, 0, "f", 1)
	assert.Equal(t, int16(0), bumped.ErrorCode, "a new epoch at 0: %v", kerr.ErrorForCode(bumped.ErrorCode))
	assert.Equal(t, int64(10), bumped.BaseOffset)

	got := kafkatest.Consume(t, addr, "orders", 11, 10*time.Second)
	var values []string
	for _, r := range got {
		values = append(values, string(r.Value))
	}
	assert.Equal(t, []string{"a-0", "a-1", "b-0", "b-1", "c-0", "c-1", "d-0", "d-1", "e-0", "e-1", "f-0"}, values,
		"each batch once; none of the refused ones")
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, "spillway_kafka_duplicate_batches_total"))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, "spillway_kafka_idempotent_producers"))
}

// TestIdempotentProducersBounded: beyond server.kafka.idempotent_producers
// the least recently used producer id is forgotten and counted; its
// retry is then taken as new, as Kafka takes a producer whose state
// expired.
func TestIdempotentProducersBounded(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_KAFKA_IDEMPOTENT_PRODUCERS=2")
	cl := kgoClient(t, in.Kafka)
	for pid := int64(1); pid <= 3; pid++ {
		p := idempotentProduce(t, cl, "orders", pid, 0, 0, fmt.Sprint(pid), 1)
		require.Equal(t, int16(0), p.ErrorCode)
	}
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, "spillway_kafka_idempotent_producers"))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, "spillway_kafka_idempotent_producers_evicted_total"))
	kept := idempotentProduce(t, cl, "orders", 3, 0, 0, "3", 1)
	assert.Equal(t, int64(2), kept.BaseOffset, "producer 3 is remembered: its retry is a duplicate")
	forgot := idempotentProduce(t, cl, "orders", 1, 0, 0, "1", 1)
	assert.Equal(t, int64(3), forgot.BaseOffset, "producer 1 was forgotten: its retry is stored again")
}

// TestIdempotentResendWhileTheFirstIsOnItsWay: a batch sent again on a
// new connection while the first try is still waiting for Kafka (which
// takes 2 s a produce here) waits for the first try's answer and gets
// it, rather than being sent a second time: Kafka holds the batch once.
func TestIdempotentResendWhileTheFirstIsOnItsWay(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	in := ingesttest.Start(t, addr)
	var slow atomic.Bool
	slow.Store(true)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if slow.Load() {
			c.SleepControl(func() { time.Sleep(2 * time.Second) }) // the broker's delay
		}
		return nil, nil, false
	})
	first, again := kgoClient(t, in.Kafka), kgoClient(t, in.Kafka) // two connections
	const pid = 77
	answered := make(chan kmsg.ProduceResponseTopicPartition, 1)
	go func() { answered <- idempotentProduce(t, first, "orders", pid, 0, 0, "a", 3) }()
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_records_in_flight`) == 3
	}, 5*time.Second, 10*time.Millisecond, "the first try on its way")
	resent := idempotentProduce(t, again, "orders", pid, 0, 0, "a", 3)
	orig := <-answered
	slow.Store(false)
	require.Equal(t, int16(0), orig.ErrorCode, "%v", kerr.ErrorForCode(orig.ErrorCode))
	require.Equal(t, int16(0), resent.ErrorCode, "%v", kerr.ErrorForCode(resent.ErrorCode))
	assert.Equal(t, orig.BaseOffset, resent.BaseOffset, "the resend gets the first try's answer")
	after := idempotentProduce(t, first, "orders", pid, 0, 3, "b", 1)
	require.Equal(t, int16(0), after.ErrorCode)
	assert.Equal(t, int64(3), after.BaseOffset, "the batch after is stored right after the first, once")
	assert.Len(t, kafkatest.Consume(t, addr, "orders", 4, 10*time.Second), 4)
}
