package delivery_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/spilltest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// downBroker is the address of a Kafka broker that is gone.
func downBroker(t *testing.T) string {
	c, addr := kafkatest.NewCluster(t)
	c.Close()
	return addr
}

type answer struct {
	ID        string `json:"id"`
	Outcome   string `json:"outcome"`
	ErrorCode int    `json:"error_code"`
	Message   string `json:"message"`
}

func post(t *testing.T, in *ingesttest.Ingest, topic, value string) (int, answer) {
	t.Helper()
	status, body := ingesttest.Post(t, in.URL+"/topics/"+topic+"/messages", "text/plain", value, "X-Kafka-Key", "k-"+value)
	var a answer
	require.NoError(t, json.Unmarshal([]byte(body), &a), body)
	return status, a
}

// stored reads the buffer's messages on subjects matching filter, signed
// in with the embedded server's credentials.
func stored(t *testing.T, in *ingesttest.Ingest, filter string, want int) []*jetstream.RawStreamMsg {
	t.Helper()
	nc := spilltest.Connect(t, "nats://"+in.App.NATSAddr(), in.App.NATSCredentials())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return spilltest.Messages(t, js, "SPILLWAY", filter, want)
}

func TestKafkaDownSpills(t *testing.T) {
	in := ingesttest.Start(t, downBroker(t), "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000")
	status, a := post(t, in, "orders", "v1")
	require.Equal(t, http.StatusAccepted, status, a)
	assert.Equal(t, "buffered", a.Outcome)
	assert.NotEmpty(t, a.ID)

	msgs := stored(t, in, "spillway.spill.>", 1)
	require.Len(t, msgs, 1)
	assert.Regexp(t, `^spillway\.spill\.orders\.k[0-9]+$`, msgs[0].Subject, "the topic, and the lane of the key")
	assert.Equal(t, a.ID, msgs[0].Header.Get(nats.MsgIdHdr))
	rec, err := spill.Decode(msgs[0].Data)
	require.NoError(t, err)
	assert.Equal(t, "v1", string(rec.Value))
	assert.Equal(t, "k-v1", string(rec.Key))
	assert.Equal(t, a.ID, rec.ID)
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="unavailable",topic="orders"}`))
}

func TestBreakerOpensAndSpillsWithoutKafka(t *testing.T) {
	in := ingesttest.Start(t, downBroker(t), "SPILLWAY_PRODUCER_CB_FAILS=2", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	for i := range 2 {
		// Keys of their own lanes: a lane that spilled buffers its next
		// records behind its backlog without trying Kafka.
		status, a := post(t, in, "t", fmt.Sprintf("x%d", i))
		require.Equal(t, http.StatusAccepted, status, "request %d: %+v", i, a)
	}
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, "spillway_breaker_state"), "open after 2 failures")
	status, a := post(t, in, "t", "y")
	require.Equal(t, http.StatusAccepted, status, a)
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="breaker_open",topic="t"}`))
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_kafka_produce_duration_seconds_count`), "Kafka not tried while open")
	assert.Contains(t, in.LogText(), "kafka circuit breaker changed state")
}

func TestDisableTopicsAreNeverBuffered(t *testing.T) {
	in := ingesttest.Start(t, downBroker(t), "SPILLWAY_PRODUCER_WAL_DISABLE_TOPICS=ordered", "SPILLWAY_PRODUCER_CB_FAILS=1")
	for range 2 { // the second one meets an open breaker
		status, a := post(t, in, "ordered", "x")
		require.Equal(t, http.StatusServiceUnavailable, status, a)
		assert.Equal(t, 50301, a.ErrorCode)
	}
	assert.Equal(t, -1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="unavailable",topic="ordered"}`))
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="unavailable",topic="ordered"}`))
}

func TestWriteAhead(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_PRODUCER_WAL_ALWAYS_TOPICS=audit")
	status, a := post(t, in, "audit", "first")
	require.Equal(t, http.StatusAccepted, status, a)
	msgs := stored(t, in, "spillway.wal.>", 1)
	require.Len(t, msgs, 1)
	assert.Regexp(t, `^spillway\.wal\.audit\.k[0-9]+$`, msgs[0].Subject, "the topic, and the lane of the key")

	status, a = post(t, in, "audit", strings.Repeat("x", 1_000_001))
	require.Equal(t, http.StatusRequestEntityTooLarge, status, "a record Kafka would refuse is not written ahead: %+v", a)

	status, a = post(t, in, "other", "direct")
	require.Equal(t, http.StatusOK, status, a)
	assert.Equal(t, "delivered", a.Outcome)
	got := kafkatest.Consume(t, addr, "other", 1, 10*time.Second)
	require.Len(t, got, 1)
	id, _ := kafkatest.HeaderValue(got[0], "spillway-id")
	assert.Equal(t, a.ID, id, "the record's id travels as the spillway-id header")
}

func TestKafkaAndBufferDownAnswer503(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	in := ingesttest.Start(t, downBroker(t), "SPILLWAY_PRODUCER_WAL_NATS_URLS="+ns.ClientURL(), "SPILLWAY_PRODUCER_WAL_PUBLISH_TIMEOUT=1s")
	ns.Shutdown()
	ns.WaitForShutdown()

	status, a := post(t, in, "t", "x")
	require.Equal(t, http.StatusServiceUnavailable, status, a)
	assert.Contains(t, a.Message, "buffer")
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="unavailable",topic="t"}`))
}

func TestFullBufferAnswers507(t *testing.T) {
	in := ingesttest.Start(t, downBroker(t), "SPILLWAY_PRODUCER_WAL_MAX_BYTES=3000", "SPILLWAY_PRODUCER_CB_FAILS=1")
	var status int
	var a answer
	for range 50 {
		status, a = post(t, in, "t", strings.Repeat("x", 300))
		if status != http.StatusAccepted {
			break
		}
	}
	require.Equal(t, http.StatusInsufficientStorage, status, a)
	assert.Equal(t, 50701, a.ErrorCode)
	assert.Contains(t, a.Message, "the buffer is full")
}

// TestSpillKeepsMappedTopic: a record for a mapped topic is spilled under
// the Kafka topic it maps to, so that the resender delivers it there.
func TestSpillKeepsMappedTopic(t *testing.T) {
	in := ingesttest.StartYAML(t, downBroker(t), "topic_mapping: [{exact: legacy, to: orders}]", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000")
	status, a := post(t, in, "legacy", "v1")
	require.Equal(t, http.StatusAccepted, status, a)
	msgs := stored(t, in, "spillway.spill.>", 1)
	require.Len(t, msgs, 1)
	assert.Regexp(t, `^spillway\.spill\.orders\.k[0-9]+$`, msgs[0].Subject, "the topic, and the lane of the key")
	rec, err := spill.Decode(msgs[0].Data)
	require.NoError(t, err)
	assert.Equal(t, "orders", rec.Topic)
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="unavailable",topic="legacy"}`), "metrics keep the client's name")
}
