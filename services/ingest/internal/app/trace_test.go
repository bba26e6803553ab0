package app_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/telemetry"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestServerSpans: the client's traceparent (HTTP header, gRPC metadata)
// is honoured by the server spans, the Kafka produce span is their child,
// and health checks are not traced.
func TestServerSpans(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	in := ingesttest.StartTraced(t, addr, &telemetry.Tracing{Provider: tp, Propagators: propagation.TraceContext{}, Exporting: true})

	const httpTrace, grpcTrace = "11111111111111111111111111111111", "22222222222222222222222222222222"
	status, body := ingesttest.Post(t, in.URL+"/topics/traced/messages", "text/plain", "x", "traceparent", "00-"+httpTrace+"-1111111111111111-01")
	require.Equal(t, http.StatusOK, status, body)

	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "traceparent", "00-"+grpcTrace+"-2222222222222222-01")
	_, err = ingestv1.NewIngestServiceClient(conn).Produce(ctx, &ingestv1.ProduceRequest{Topic: "traced", Records: []*ingestv1.Record{{Value: []byte("y")}}})
	require.NoError(t, err)
	_, err = healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)

	// The gRPC server span ends just after the client has its answer.
	byTrace := map[string][]sdktrace.ReadOnlySpan{}
	require.Eventually(t, func() bool {
		byTrace = map[string][]sdktrace.ReadOnlySpan{}
		servers := 0
		for _, s := range spans.Ended() {
			byTrace[s.SpanContext().TraceID().String()] = append(byTrace[s.SpanContext().TraceID().String()], s)
			if s.SpanKind() == trace.SpanKindServer {
				servers++
			}
		}
		return servers >= 2
	}, 5*time.Second, 10*time.Millisecond, "both server spans ended")
	for _, s := range spans.Ended() {
		assert.False(t, strings.Contains(s.Name(), "Health"), "health checks are not traced: %s", s.Name())
	}
	for _, tc := range []struct{ trace, server string }{
		{httpTrace, "/topics/:topic/messages"},
		{grpcTrace, "spillway.ingest.v1.IngestService/Produce"},
	} {
		var server, send sdktrace.ReadOnlySpan
		for _, s := range byTrace[tc.trace] {
			switch {
			case s.SpanKind() == trace.SpanKindServer:
				server = s
			case s.Name() == "send traced":
				send = s
			}
		}
		require.NotNil(t, server, "server span in trace %s", tc.trace)
		require.NotNil(t, send, "send span in trace %s", tc.trace)
		assert.Contains(t, server.Name(), tc.server)
		assert.Equal(t, server.SpanContext().SpanID(), send.Parent().SpanID(), "the produce span is a child of the server span")
	}
}

// TestTraceContextWithoutExporter: with no exporter (no per-record spans),
// the record in Kafka still carries the client's trace in traceparent.
func TestTraceContextWithoutExporter(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	const trace = "33333333333333333333333333333333"
	code, body := ingesttest.Post(t, in.URL+"/topics/traced/messages", "text/plain", "x", "traceparent", "00-"+trace+"-3333333333333333-01")
	require.Equal(t, 200, code, body)
	got := kafkatest.Consume(t, addr, "traced", 1, 10*time.Second)
	tp, ok := kafkatest.HeaderValue(got[0], "traceparent")
	require.True(t, ok, "the record carries a traceparent")
	assert.Regexp(t, `^00-`+trace+`-[0-9a-f]{16}-01$`, tp, "the client's trace")
	assert.NotEqual(t, "00-"+trace+"-3333333333333333-01", tp, "under the ingest's own span id, as a child of the client's")

	// Without a traceparent each request starts a trace of its own.
	for range 2 {
		code, body := ingesttest.Post(t, in.URL+"/topics/untraced/messages", "text/plain", "x")
		require.Equal(t, 200, code, body)
	}
	got = kafkatest.Consume(t, addr, "untraced", 2, 10*time.Second)
	var traces []string
	for _, r := range got {
		tp, ok := kafkatest.HeaderValue(r, "traceparent")
		require.True(t, ok, "a record without a client trace still carries one")
		require.Regexp(t, `^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`, tp)
		assert.NotContains(t, tp, "00000000000000000000000000000000")
		traces = append(traces, tp[3:35])
	}
	assert.NotEqual(t, traces[0], traces[1], "two requests, two traces")
}
