package delivery_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
	"github.com/spillway/spillway/services/ingest/internal/delivery"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]string {
	m := map[attribute.Key]string{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value.String()
	}
	return m
}

// newTraced returns a Delivery to the broker at addr with an embedded
// buffer, tracing into a span recorder.
func newTraced(t *testing.T, addr string, env ...string) (*delivery.Delivery, *tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	t.Helper()
	cfg, err := config.Parse(nil, append([]string{"SPILLWAY_KAFKA_BROKERS=" + addr, "SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(), "SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0"}, env...))
	require.NoError(t, err)
	p, err := producer.New(cfg.Kafka, discard)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	srv, err := embeddednats.Start(cfg.Producer.WAL, discard)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, js, err := spill.Connect(t.Context(), cfg.Producer.WAL, srv, "test", discard)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	d := delivery.New(delivery.Options{
		Producer: p, Buffer: spill.NewBuffer(js, cfg.Producer.WAL), WAL: cfg.Producer.WAL, Breaker: cfg.Producer.CB, MaxRecordBytes: cfg.Kafka.MaxMessageBytes,
		Registry: prometheus.NewRegistry(), MaxTopics: 10, Logger: discard,
		TracerProvider: tp, Propagators: propagation.TraceContext{},
	})
	return d, rec, tp
}

func TestKafkaProduceSpan(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	d, rec, tp := newTraced(t, addr)
	ctx, request := tp.Tracer("test").Start(context.Background(), "POST /topics/:topic/messages")
	res := d.Send(ctx, "http", []record.Record{{Topic: "orders", Value: []byte("v"), Partition: 1}})
	request.End()
	require.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)

	var send sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "send orders" {
			send = s
		}
	}
	require.NotNil(t, send, "a send span")
	assert.Equal(t, trace.SpanKindProducer, send.SpanKind())
	assert.Equal(t, request.SpanContext().SpanID(), send.Parent().SpanID(), "a child of the request span")
	a := attrs(send)
	assert.Equal(t, "kafka", a["messaging.system"])
	assert.Equal(t, "orders", a["messaging.destination.name"])
	assert.Equal(t, "send", a["messaging.operation.type"])
	assert.Equal(t, res[0].ID, a["messaging.message.id"])
	assert.Equal(t, "1", a["messaging.destination.partition.id"])
	assert.Equal(t, "0", a["messaging.kafka.offset"])

	got := kafkatest.Consume(t, addr, "orders", 1, 10*time.Second)
	require.Len(t, got, 1)
	tpHeader, ok := kafkatest.HeaderValue(got[0], "traceparent")
	require.True(t, ok, "the record in Kafka carries traceparent")
	assert.Contains(t, tpHeader, send.SpanContext().TraceID().String())
	assert.Contains(t, tpHeader, send.SpanContext().SpanID().String())
}

func TestSpillSpansAndClientTraceparent(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	c.Close()
	d, rec, tp := newTraced(t, addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000")
	ctx, request := tp.Tracer("test").Start(context.Background(), "request")
	clientTrace := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	res := d.Send(ctx, "grpc", []record.Record{
		{Topic: "t", Value: []byte("a"), Partition: record.AnyPartition},
		{Topic: "t", Value: []byte("b"), Partition: record.AnyPartition, Headers: []record.Header{{Key: "traceparent", Value: []byte(clientTrace)}}},
	})
	request.End()
	for _, r := range res {
		require.Equal(t, record.Buffered, r.Outcome, r.Err)
	}
	var sends, publishes []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "send t":
			sends = append(sends, s)
		case "publish spillway.spill.t":
			publishes = append(publishes, s)
		}
	}
	require.Len(t, sends, 2, "one span for the request's trace, one for the record's own")
	require.Len(t, publishes, 2)
	for _, s := range sends {
		assert.Equal(t, codes.Error, s.Status().Code, "Kafka's failure is recorded")
		assert.NotEmpty(t, s.Events(), "with the error")
	}
	byTrace := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range publishes {
		assert.Equal(t, "nats", attrs(s)["messaging.system"])
		assert.Equal(t, "unavailable", attrs(s)["spillway.buffer.reason"])
		byTrace[s.SpanContext().TraceID().String()] = s
	}
	own := byTrace["0af7651916cd43dd8448eb211c80319c"]
	require.NotNil(t, own, "the record's own traceparent is honoured")
	require.Len(t, own.Links(), 1)
	assert.Equal(t, request.SpanContext().TraceID(), own.Links()[0].SpanContext.TraceID(), "linked to the request")
	assert.NotNil(t, byTrace[request.SpanContext().TraceID().String()])
}
