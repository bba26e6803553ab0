package kafkaapi_test

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// produceRequest is a Produce v8 (acks all) of one uncompressed batch of
// recs to partition 0 of topic, for a raw connection: no metadata asked
// first, so any name can be sent.
func produceRequest(topic string, recs ...*kmsg.Record) *kmsg.ProduceRequest {
	req := kafkatest.ProduceRequest(topic, kafkatest.RecordBatch(recs...))
	req.Version = 8
	return req
}

// TestInvalidTopicNameThroughTheListener: a Kafka client that names a
// topic that is not a topic (no topic_mapping in play) is told its name
// is invalid, not that a mapping made it so; the refusal is counted
// under no topic label.
func TestInvalidTopicNameThroughTheListener(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	resp := kmsg.NewPtrProduceResponse()
	resp.Version = 8
	roundTrip(t, in.Kafka, produceRequest("no/slash", &kmsg.Record{Value: []byte("v")}), resp)
	require.Len(t, resp.Topics, 1)
	require.Len(t, resp.Topics[0].Partitions, 1)
	p := resp.Topics[0].Partitions[0]
	assert.NotZero(t, p.ErrorCode)
	require.NotNil(t, p.ErrorMessage)
	assert.Contains(t, *p.ErrorMessage, `invalid topic name "no/slash"`)
	assert.NotContains(t, *p.ErrorMessage, "mapped", "no topic_mapping made it invalid")
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="invalid",topic=""}`))
}

// TestKafkaClientThatLeftIsNotSpilled: as over HTTP
// (delivery.TestClientThatLeftIsNotSpilled), a Kafka-protocol client that
// closes its connection while its produce waits for Kafka gets nothing,
// so its record is not spilled: it is counted failed (timeout) and the
// buffer does not get it. A client that waits is answered from the
// buffer.
func TestKafkaClientThatLeftIsNotSpilled(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "held", 1)
	var holding atomic.Bool
	kafkatest.HoldProduce(t, c, &holding)
	in := ingesttest.Start(t, addr, "SPILLWAY_PRODUCER_CB_MAX_WAIT=2s", "SPILLWAY_PRODUCER_CB_SLOW_CALL=10s")
	cl := kgoClient(t, in.Kafka, kgo.DisableIdempotentWrite())
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "held", Value: []byte("warm")}).FirstErr()) // the topic's layout is known
	holding.Store(true)

	conn, err := net.DialTimeout("tcp", in.Kafka, 5*time.Second)
	require.NoError(t, err)
	_, err = conn.Write(kmsg.NewRequestFormatter(kmsg.FormatterClientID("leaver")).AppendRequest(nil, produceRequest("held", &kmsg.Record{Value: []byte("left")}), 1))
	require.NoError(t, err)
	require.Eventually(t, func() bool { // the produce waits for Kafka
		return ingesttest.Metric(t, in.Monitor, `spillway_records_in_flight`) == 1
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, conn.Close())
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="timeout",topic="held"}`) == 1
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, -1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="timeout",topic="held"}`), "not spilled")

	resp := kmsg.NewPtrProduceResponse()
	resp.Version = 8
	roundTrip(t, in.Kafka, produceRequest("held", &kmsg.Record{Value: []byte("waits")}), resp)
	p := resp.Topics[0].Partitions[0]
	assert.Zero(t, p.ErrorCode, "buffered")
	assert.Equal(t, int64(-1), p.BaseOffset, "a buffered record has no offset")
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="timeout",topic="held"}`))
}
