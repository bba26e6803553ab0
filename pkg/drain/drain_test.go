package drain

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

type env struct {
	cfg     *config.Config
	js      jetstream.JetStream
	buffer  *spill.Buffer
	metrics *Metrics
	reg     *prometheus.Registry // metrics' registry
	url     string               // the embedded server's client URL
}

// setup starts an embedded JetStream and parses a configuration for the
// broker at addr with the extra variables.
func setup(t *testing.T, addr string, vars ...string) *env {
	t.Helper()
	cfg, err := config.Parse(nil, append([]string{
		"SPILLWAY_KAFKA_BROKERS=" + addr,
		"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(),
		"SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0",
		"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000",
	}, vars...))
	require.NoError(t, err)
	srv, err := embeddednats.Start(cfg.Producer.WAL, discard)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, js, err := spill.Connect(t.Context(), cfg.Producer.WAL, srv, "test", discard)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	reg := prometheus.NewRegistry()
	return &env{cfg: cfg, js: js, buffer: spill.NewBuffer(js, cfg.Producer.WAL), metrics: NewMetrics(reg, 100), reg: reg, url: srv.ClientURL()}
}

// run starts a drainer of role until the test ends.
func (e *env) run(t *testing.T, role Role, rateLimit float64, period time.Duration) {
	t.Helper()
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	d, err := New(t.Context(), Options{
		JS: e.js, WAL: e.cfg.Producer.WAL, Kind: role.Kind, Consumer: role.Name, Producer: p,
		RateLimit: rateLimit, Period: period, Breaker: e.cfg.Producer.CB, BatchSize: 100, Ordered: e.cfg.Producer.Order == config.OrderPartition,
		Metrics: e.metrics, Logger: discard,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; _ = p.Close() })
}

func (e *env) spill(t *testing.T, kind spill.Kind, recs ...record.Record) {
	t.Helper()
	for _, r := range e.buffer.Publish(t.Context(), kind, recs, "unavailable") {
		require.Equal(t, record.Buffered, r.Outcome, r.Err)
	}
}

func records(topic string, n int) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		out[i] = record.Record{ID: fmt.Sprintf("id-%s-%d", topic, i), Topic: topic, Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "v%d", i), Partition: record.AnyPartition}
	}
	return out
}

func TestResenderDeliversSpilledRecordsExactly(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	e := setup(t, addr)
	ts := time.UnixMilli(1700000000999)
	e.spill(t, spill.Spilled, record.Record{ID: "r1", Topic: "orders.eu", Key: []byte("k"), Value: []byte{0, 1, 2},
		Headers: []record.Header{{Key: "traceparent", Value: []byte("00-abc")}}, Partition: 1, Timestamp: ts})
	e.spill(t, spill.WriteAhead, records("not-mine", 1)...)
	e.run(t, Resender, 0, 100*time.Millisecond)

	got := kafkatest.Consume(t, addr, "orders.eu", 1, 10*time.Second)
	require.Len(t, got, 1)
	r := got[0]
	assert.Equal(t, "k", string(r.Key))
	assert.Equal(t, []byte{0, 1, 2}, r.Value)
	assert.EqualValues(t, 1, r.Partition)
	assert.Equal(t, ts, r.Timestamp)
	tp, _ := kafkatest.HeaderValue(r, "traceparent")
	assert.Equal(t, "00-abc", tp)
	id, _ := kafkatest.HeaderValue(r, record.IDHeader)
	assert.Equal(t, "r1", id)
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(e.metrics.drained.WithLabelValues("resender", "orders.eu")) == 1
	}, 5*time.Second, 20*time.Millisecond)
	assert.Empty(t, kafkatest.Consume(t, addr, "not-mine", 1, 500*time.Millisecond), "the resender leaves written-ahead records to the forwarder")
}

func TestForwarderDrainsContinuously(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	e := setup(t, addr)
	e.run(t, Forwarder, 0, 0)
	e.spill(t, spill.WriteAhead, records("wal", 250)...)
	got := kafkatest.Consume(t, addr, "wal", 250, 15*time.Second)
	assert.Len(t, got, 250)
	seen := map[string]bool{}
	for _, r := range got {
		seen[string(r.Value)] = true
	}
	assert.Len(t, seen, 250, "no record twice")
	require.Eventually(t, func() bool {
		s, err := e.js.Stream(t.Context(), "SPILLWAY")
		require.NoError(t, err)
		info, err := s.Info(t.Context())
		require.NoError(t, err)
		return info.State.Msgs == 0
	}, 10*time.Second, 20*time.Millisecond, "delivered records leave the stream (work queue)")
}

func TestKafkaRecordTooLargeIsDeadLettered(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	e := setup(t, addr, "SPILLWAY_KAFKA_MESSAGE_MAX_BYTES=50")
	e.spill(t, spill.Spilled, record.Record{ID: "big", Topic: "t", Value: make([]byte, 2000), Partition: record.AnyPartition})
	e.spill(t, spill.Spilled, records("t", 1)...)
	e.run(t, Resender, 0, 100*time.Millisecond)

	dead := spilltest.Messages(t, e.js, "SPILLWAY", "spillway.dlq.>", 1)
	require.Len(t, dead, 1)
	msg := dead[0]
	assert.Equal(t, "spillway.dlq.t", msg.Subject)
	assert.Contains(t, msg.Header.Get(spill.HeaderReason), "too_large: record of 2000 bytes is over the limit of 50 bytes")
	r, err := spill.Decode(msg.Data)
	require.NoError(t, err)
	assert.Equal(t, "big", r.ID)
	assert.Len(t, kafkatest.Consume(t, addr, "t", 1, 10*time.Second), 1, "the good record is delivered")
	assert.Equal(t, 1.0, testutil.ToFloat64(e.metrics.deadLettered.WithLabelValues("resender", "too_large")))
}

func TestResenderWaitsForKafka(t *testing.T) {
	k := kafkatest.NewCuttable(t)
	k.Cut() // Kafka is down: connections are closed at once
	e := setup(t, k.Addr, "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=500ms")
	e.spill(t, spill.Spilled, records("late", 20)...)
	e.run(t, Resender, 0, 100*time.Millisecond)
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(e.metrics.breakerState.WithLabelValues("resender")) == 2
	}, 10*time.Second, 20*time.Millisecond, "the breaker opens while Kafka is down")

	k.Restore()
	got := kafkatest.Consume(t, k.Addr, "late", 20, 20*time.Second)
	assert.Len(t, got, 20, "every spilled record reaches Kafka once it is back")
}

// TestResenderRate drains at a configured rate: the achieved rate stays
// within 10% of it (the limiter allows one initial burst).
func TestResenderRate(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	e := setup(t, addr)
	const n, limit = 600, 200.0
	e.spill(t, spill.Spilled, records("rated", n)...)
	start := time.Now()
	e.run(t, Resender, limit, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(e.metrics.drained.WithLabelValues("resender", "rated")) == n
	}, 20*time.Second, 10*time.Millisecond)
	achieved := n / time.Since(start).Seconds()
	t.Logf("achieved %.0f records/s at a limit of %.0f", achieved, limit)
	assert.InEpsilon(t, limit, achieved, 0.10)
}

func TestBufferGauges(t *testing.T) {
	e := setup(t, "127.0.0.1:1")
	e.spill(t, spill.Spilled, records("waiting", 5)...)
	e.spill(t, spill.WriteAhead, records("ahead", 2)...)
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	defer p.Close()
	d, err := New(t.Context(), Options{JS: e.js, WAL: e.cfg.Producer.WAL, Kind: spill.Spilled, Consumer: "resender", Producer: p,
		Breaker: e.cfg.Producer.CB, Metrics: e.metrics, Logger: discard})
	require.NoError(t, err)
	d.refresh(t.Context(), e.metrics)

	assert.Equal(t, 7.0, testutil.ToFloat64(e.metrics.streamMsgs))
	assert.Positive(t, testutil.ToFloat64(e.metrics.streamBytes))
	assert.Equal(t, 5.0, testutil.ToFloat64(e.metrics.pending.WithLabelValues("resender")), "only the spilled records are the resender's")
	assert.Equal(t, 0.0, testutil.ToFloat64(e.metrics.ackPending.WithLabelValues("resender")))
	age := testutil.ToFloat64(e.metrics.oldestSeconds.WithLabelValues("resender"))
	assert.Positive(t, age)
	assert.Less(t, age, 60.0)
}

// TestDrainContinuesTheStoredTrace: the resender's consumer span is a child
// of the context stored with the record, its Kafka produce span a child of
// that, and the record reaches Kafka with the produce span's traceparent.
func TestDrainContinuesTheStoredTrace(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	e := setup(t, addr)
	const stored = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	e.spill(t, spill.Spilled, record.Record{ID: "traced", Topic: "t", Value: []byte("x"), Partition: record.AnyPartition,
		Headers: []record.Header{{Key: "traceparent", Value: []byte(stored)}}})

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	defer p.Close()
	d, err := New(t.Context(), Options{JS: e.js, WAL: e.cfg.Producer.WAL, Kind: spill.Spilled, Consumer: "resender", Producer: p,
		Period: 50 * time.Millisecond, Breaker: e.cfg.Producer.CB, Metrics: e.metrics, Logger: discard,
		TracerProvider: tp, Propagators: propagation.TraceContext{}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	got := kafkatest.Consume(t, addr, "t", 1, 10*time.Second)
	cancel()
	<-done
	require.Len(t, got, 1)

	var process, send sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		switch s.Name() {
		case "process spillway.spill.t":
			process = s
		case "send t":
			send = s
		}
	}
	require.NotNil(t, process)
	require.NotNil(t, send)
	assert.Equal(t, trace.SpanKindConsumer, process.SpanKind())
	assert.Equal(t, "0af7651916cd43dd8448eb211c80319c", process.SpanContext().TraceID().String(), "the stored trace continues")
	assert.Equal(t, "b7ad6b7169203331", process.Parent().SpanID().String(), "as a child of the stored span")
	assert.Equal(t, process.SpanContext().SpanID(), send.Parent().SpanID())
	assert.Equal(t, trace.SpanKindProducer, send.SpanKind())
	tpHeader, _ := kafkatest.HeaderValue(got[0], "traceparent")
	assert.Equal(t, "00-0af7651916cd43dd8448eb211c80319c-"+send.SpanContext().SpanID().String()+"-01", tpHeader)
}
