package grpcapi_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestServerMetrics: the grpc_server_* families count what a dashboard
// built on go-grpc-middleware's (and kafka-ambassador's) reads: each
// method's series from the start, a stream's messages in and out, a
// unary call's request and answer, and each call's end by its code.
func TestServerMetrics(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	series := func(family, typ, service, method, code string) string {
		s := family + "{"
		if code != "" {
			s += `grpc_code="` + code + `",`
		}
		return s + `grpc_method="` + method + `",grpc_service="` + service + `",grpc_type="` + typ + `"}`
	}
	const amb = "KafkaAmbassador" // its .proto has no package
	metric := func(s string) float64 { return ingesttest.Metric(t, in.Monitor, s) }

	for _, s := range []string{
		series("grpc_server_started_total", "bidi_stream", amb, "Produce", ""),
		series("grpc_server_msg_received_total", "bidi_stream", amb, "Produce", ""),
		series("grpc_server_handled_total", "bidi_stream", amb, "Produce", "Unavailable"),
		series("grpc_server_handling_seconds_count", "bidi_stream", amb, "Produce", ""),
		series("grpc_server_started_total", "unary", amb, "ListTopics", ""),
	} {
		assert.Equal(t, 0.0, metric(s), "%s before any call", s)
	}

	// A stream of five records, each acknowledged, closed by the client.
	stream, err := kafkaambassador.NewKafkaAmbassadorClient(dial(t, in.GRPC)).Produce(ctx(t))
	require.NoError(t, err)
	const n = 5
	sent := ambSend(stream, "counted", 0, n, n, "", true)
	acks, err := ambAcks(stream, nil)
	require.NoError(t, err)
	require.NoError(t, <-sent)
	require.Equal(t, offsets(0, n), acks)
	handled := series("grpc_server_handled_total", "bidi_stream", amb, "Produce", "OK")
	require.Eventually(t, func() bool { return metric(handled) == 1 }, readTimeout, 10*time.Millisecond, "the stream counted as handled, OK")
	assert.Equal(t, 1.0, metric(series("grpc_server_started_total", "bidi_stream", amb, "Produce", "")))
	assert.Equal(t, float64(n), metric(series("grpc_server_msg_received_total", "bidi_stream", amb, "Produce", "")), "each ProdRq, not the end of the stream")
	assert.Equal(t, float64(n), metric(series("grpc_server_msg_sent_total", "bidi_stream", amb, "Produce", "")), "each ProdRs")
	assert.Equal(t, 1.0, metric(series("grpc_server_handling_seconds_count", "bidi_stream", amb, "Produce", "")))

	// Unary calls: one answered, one refused.
	client := ingestv1.NewIngestServiceClient(dial(t, in.GRPC))
	_, err = client.Produce(ctx(t), &ingestv1.ProduceRequest{Topic: "counted", Records: []*ingestv1.Record{{Value: []byte("v")}}})
	require.NoError(t, err)
	_, err = client.Produce(ctx(t), &ingestv1.ProduceRequest{Topic: "not a topic!"})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	const ingest = "spillway.ingest.v1.IngestService"
	assert.Equal(t, 2.0, metric(series("grpc_server_started_total", "unary", ingest, "Produce", "")))
	assert.Equal(t, 2.0, metric(series("grpc_server_msg_received_total", "unary", ingest, "Produce", "")))
	assert.Equal(t, 1.0, metric(series("grpc_server_msg_sent_total", "unary", ingest, "Produce", "")), "the refused call sent no answer")
	assert.Equal(t, 1.0, metric(series("grpc_server_handled_total", "unary", ingest, "Produce", "OK")))
	assert.Equal(t, 1.0, metric(series("grpc_server_handled_total", "unary", ingest, "Produce", "InvalidArgument")))
}
