package grpcapi_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

const readTimeout = 10 * time.Second

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestProduceUnary(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	client := ingestv1.NewIngestServiceClient(dial(t, in.GRPC))

	ts := time.UnixMilli(1700000000456)
	resp, err := client.Produce(ctx(t), &ingestv1.ProduceRequest{Topic: "unary", Records: []*ingestv1.Record{
		{Key: []byte("k1"), Value: []byte("v1"), Headers: []*ingestv1.Header{{Key: "h", Value: []byte{0, 1}}}, Partition: proto.Int32(1), Timestamp: timestamppb.New(ts)},
		{Value: []byte("v2"), Partition: proto.Int32(1)},
	}})
	require.NoError(t, err)
	require.Len(t, resp.Results, 2)
	for i, r := range resp.Results {
		assert.Equal(t, ingestv1.Outcome_OUTCOME_DELIVERED, r.Outcome)
		assert.EqualValues(t, 1, r.Partition)
		assert.EqualValues(t, i, r.Offset)
	}
	assert.True(t, ts.Equal(resp.Results[0].Timestamp.AsTime()), "timestamp %v", resp.Results[0].Timestamp.AsTime())

	got := kafkatest.Consume(t, addr, "unary", 2, readTimeout)
	require.Len(t, got, 2)
	assert.Equal(t, "k1", string(got[0].Key))
	assert.Equal(t, "v1", string(got[0].Value))
	assert.Equal(t, ts, got[0].Timestamp)
	v, ok := kafkatest.HeaderValue(got[0], "h")
	assert.True(t, ok)
	assert.Equal(t, "\x00\x01", v)
	assert.Nil(t, got[1].Key, "no key given: a null key")
	assert.Equal(t, "v2", string(got[1].Value))

	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_records_received_total{api="grpc",topic="unary"}`))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `grpc_server_handled_total{grpc_code="OK",grpc_method="Produce",grpc_service="spillway.ingest.v1.IngestService",grpc_type="unary"}`))
}

func TestProduceUnaryErrors(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "exists"))
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_MESSAGE_MAX_BYTES=100", "SPILLWAY_SERVER_GRPC_MAX_REQUEST_SIZE=1000", "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false")
	client := ingestv1.NewIngestServiceClient(dial(t, in.GRPC))
	value := func(s string) []*ingestv1.Record { return []*ingestv1.Record{{Value: []byte(s)}} }

	tests := []struct {
		name    string
		req     *ingestv1.ProduceRequest
		code    codes.Code
		message string
	}{
		{"missing topic", &ingestv1.ProduceRequest{Records: value("x")}, codes.InvalidArgument, "invalid topic name: it is empty"},
		{"invalid topic", &ingestv1.ProduceRequest{Topic: "a/b", Records: value("x")}, codes.InvalidArgument, `invalid topic name "a/b": character '/' at byte 1`},
		{"no records", &ingestv1.ProduceRequest{Topic: "exists"}, codes.InvalidArgument, "records is empty"},
		{"negative partition", &ingestv1.ProduceRequest{Topic: "exists", Records: []*ingestv1.Record{{Value: []byte("x"), Partition: proto.Int32(-2)}}}, codes.InvalidArgument, "records[0]: partition -2 is not a partition"},
		{"record too large", &ingestv1.ProduceRequest{Topic: "exists", Records: value(strings.Repeat("x", 101))}, codes.ResourceExhausted, "record of 101 bytes is over the limit of 100 bytes"},
		{"request too large", &ingestv1.ProduceRequest{Topic: "exists", Records: value(strings.Repeat("x", 2000))}, codes.ResourceExhausted, "received message larger than max"},
		{"unknown topic", &ingestv1.ProduceRequest{Topic: "missing", Records: value("x")}, codes.NotFound, "the topic does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.Produce(ctx(t), tt.req)
			st, ok := status.FromError(err)
			require.True(t, ok, "%v", err)
			assert.Equal(t, tt.code, st.Code(), st.Message())
			assert.Contains(t, st.Message(), tt.message)
		})
	}

	// One bad record does not fail the others: the call succeeds and says
	// which record failed and why.
	resp, err := client.Produce(ctx(t), &ingestv1.ProduceRequest{Topic: "exists", Records: []*ingestv1.Record{
		{Value: []byte("good")},
		{Value: []byte(strings.Repeat("x", 101))},
	}})
	require.NoError(t, err)
	assert.Equal(t, ingestv1.Outcome_OUTCOME_DELIVERED, resp.Results[0].Outcome)
	bad := resp.Results[1]
	assert.Equal(t, ingestv1.Outcome_OUTCOME_FAILED, bad.Outcome)
	assert.Equal(t, int32(codes.ResourceExhausted), bad.ErrorCode)
	assert.Equal(t, "too_large", bad.ErrorReason)
	assert.Contains(t, bad.ErrorMessage, "over the limit of 100 bytes")
}

func TestProduceStreamManyInFlight(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	client := ingestv1.NewIngestServiceClient(dial(t, in.GRPC))
	stream, err := client.ProduceStream(ctx(t))
	require.NoError(t, err)

	const requests, perRequest = 200, 5
	acked := make(map[uint64]bool)
	var mu sync.Mutex
	recvDone := make(chan error, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				recvDone <- nil
				return
			}
			if err != nil {
				recvDone <- err
				return
			}
			for _, r := range resp.Results {
				if r.Outcome != ingestv1.Outcome_OUTCOME_DELIVERED {
					recvDone <- fmt.Errorf("sequence %d: %v %s", resp.Sequence, r.Outcome, r.ErrorMessage)
					return
				}
			}
			mu.Lock()
			if acked[resp.Sequence] || len(resp.Results) != perRequest {
				mu.Unlock()
				recvDone <- fmt.Errorf("sequence %d acknowledged twice or with %d results", resp.Sequence, len(resp.Results))
				return
			}
			acked[resp.Sequence] = true
			mu.Unlock()
		}
	}()
	want := map[string]bool{}
	for seq := range uint64(requests) {
		req := &ingestv1.ProduceStreamRequest{Sequence: seq + 1000, Topic: "streamed"}
		for i := range perRequest {
			v := fmt.Sprintf("s%d-r%d", seq, i)
			want[v] = true
			req.Records = append(req.Records, &ingestv1.Record{Key: []byte(v), Value: []byte(v), Headers: []*ingestv1.Header{{Key: "seq", Value: fmt.Appendf(nil, "%d", seq)}}})
		}
		require.NoError(t, stream.Send(req))
	}
	require.NoError(t, stream.CloseSend())
	select {
	case err := <-recvDone:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("stream not finished")
	}
	assert.Len(t, acked, requests, "every sequence number acknowledged")

	got := kafkatest.Consume(t, addr, "streamed", requests*perRequest, readTimeout)
	require.Len(t, got, requests*perRequest)
	for _, r := range got {
		assert.True(t, want[string(r.Value)], "unexpected record %q", r.Value)
		assert.Equal(t, string(r.Value), string(r.Key))
		delete(want, string(r.Value))
	}
	assert.Empty(t, want, "records missing from Kafka")
}

// TestProduceStreamPushesBack slows Kafka down and sends far more requests
// than the stream window: the ingest must not take more than the window.
func TestProduceStreamPushesBack(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "slow"))
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_GRPC_STREAM_WINDOW=4")
	client := ingestv1.NewIngestServiceClient(dial(t, in.GRPC))

	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		time.Sleep(50 * time.Millisecond)
		return nil, nil, false
	})
	stream, err := client.ProduceStream(ctx(t))
	require.NoError(t, err)
	const requests, perRequest = 60, 10
	go func() {
		for seq := range uint64(requests) {
			req := &ingestv1.ProduceStreamRequest{Sequence: seq, Topic: "slow"}
			for range perRequest {
				req.Records = append(req.Records, &ingestv1.Record{Value: []byte("x")})
			}
			if stream.Send(req) != nil {
				return
			}
		}
		_ = stream.CloseSend()
	}()
	maxInFlight := 0.0
	acks := 0
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		acks++
		assert.Len(t, resp.Results, perRequest)
		if v := ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight"); v > maxInFlight {
			maxInFlight = v
		}
	}
	assert.Equal(t, requests, acks)
	assert.LessOrEqual(t, maxInFlight, float64(4*perRequest), "records in flight stay within the stream window")
	t.Logf("most records in flight: %v", maxInFlight)
}

func TestProduceStreamBadRequestFailsItsRecordsOnly(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	stream, err := ingestv1.NewIngestServiceClient(dial(t, in.GRPC)).ProduceStream(ctx(t))
	require.NoError(t, err)
	require.NoError(t, stream.Send(&ingestv1.ProduceStreamRequest{Sequence: 1, Topic: "bad topic", Records: []*ingestv1.Record{{Value: []byte("x")}}}))
	require.NoError(t, stream.Send(&ingestv1.ProduceStreamRequest{Sequence: 2, Topic: "good", Records: []*ingestv1.Record{{Value: []byte("y")}}}))
	require.NoError(t, stream.CloseSend())
	results := map[uint64]*ingestv1.RecordResult{}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		results[resp.Sequence] = resp.Results[0]
	}
	require.Len(t, results, 2)
	assert.Equal(t, ingestv1.Outcome_OUTCOME_FAILED, results[1].Outcome)
	assert.Equal(t, int32(codes.InvalidArgument), results[1].ErrorCode)
	assert.Contains(t, results[1].ErrorMessage, `invalid topic name "bad topic"`)
	assert.Equal(t, ingestv1.Outcome_OUTCOME_DELIVERED, results[2].Outcome)
}

func TestKafkaAmbassadorStream(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	client := kafkaambassador.NewKafkaAmbassadorClient(dial(t, in.GRPC))
	stream, err := client.Produce(ctx(t))
	require.NoError(t, err)
	const n = 100
	go func() {
		for i := range uint64(n) {
			if stream.Send(&kafkaambassador.ProdRq{Topic: "amb", Message: fmt.Appendf(nil, "m%d", i), StreamOffset: i}) != nil {
				return
			}
		}
		_ = stream.CloseSend()
	}()
	var next uint64
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		assert.Equal(t, next, resp.StreamOffset, "acknowledged in order")
		next++
	}
	assert.EqualValues(t, n, next)
	got := kafkatest.Consume(t, addr, "amb", n, readTimeout)
	assert.Len(t, got, n)

	// A record that fails ends the stream with its code, naming its offset.
	stream, err = client.Produce(ctx(t))
	require.NoError(t, err)
	require.NoError(t, stream.Send(&kafkaambassador.ProdRq{Topic: "amb", Message: []byte("ok"), StreamOffset: 7}))
	require.NoError(t, stream.Send(&kafkaambassador.ProdRq{Topic: "no/slash", Message: []byte("x"), StreamOffset: 8}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	assert.EqualValues(t, 7, resp.StreamOffset)
	_, err = stream.Recv()
	st := status.Convert(err)
	assert.Equal(t, codes.InvalidArgument, st.Code())
	assert.Contains(t, st.Message(), `streamOffset 8: invalid topic name "no/slash"`)
}

func TestListTopicsAndHealth(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "b", "a"))
	in := ingesttest.Start(t, addr)
	conn := dial(t, in.GRPC)

	resp, err := ingestv1.NewIngestServiceClient(conn).ListTopics(ctx(t), &ingestv1.ListTopicsRequest{})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, resp.Topics)
	amb, err := kafkaambassador.NewKafkaAmbassadorClient(conn).ListTopics(ctx(t), &kafkaambassador.ListTopicsRq{})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, amb.Topics)

	health := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "spillway.ingest.v1.IngestService", "KafkaAmbassador"} {
		h, err := health.Check(ctx(t), &healthpb.HealthCheckRequest{Service: svc})
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_SERVING, h.Status, svc)
	}
}

// TestShutdownEndsStreams stops the ingest while a stream is open: the
// requests it took are acknowledged and the stream ends with UNAVAILABLE.
func TestShutdownEndsStreams(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	stream, err := ingestv1.NewIngestServiceClient(dial(t, in.GRPC)).ProduceStream(ctx(t))
	require.NoError(t, err)
	require.NoError(t, stream.Send(&ingestv1.ProduceStreamRequest{Sequence: 1, Topic: "t", Records: []*ingestv1.Record{{Value: []byte("x")}}}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	assert.EqualValues(t, 1, resp.Sequence)

	stopped := make(chan error, 1)
	go func() { stopped <- in.Stop() }()
	_, err = stream.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.NoError(t, <-stopped)
}

func TestPerClientMetrics(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUserAgent("acme-grpc/3.0"))
	require.NoError(t, err)
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(ctx(t), "client-id", "ingestor-7")
	stream, err := ingestv1.NewIngestServiceClient(conn).ProduceStream(ctx)
	require.NoError(t, err)
	for seq := range uint64(2) {
		require.NoError(t, stream.Send(&ingestv1.ProduceStreamRequest{Sequence: seq, Topic: "clicks", Records: []*ingestv1.Record{{Value: []byte("abc")}, {Value: []byte("de")}}}))
	}
	require.NoError(t, stream.CloseSend())
	for {
		if _, err := stream.Recv(); err != nil {
			require.ErrorIs(t, err, io.EOF)
			break
		}
	}
	assert.Equal(t, 4.0, ingesttest.Metric(t, in.Monitor, `spillway_client_records_total{outcome="delivered",principal="ingestor-7",topic="clicks"}`))
	assert.Equal(t, 10.0, ingesttest.Metric(t, in.Monitor, `spillway_client_bytes_total{principal="ingestor-7",topic="clicks"}`))
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_client_requests_total{library="acme-grpc",principal="ingestor-7",version="3.0"}`), "one per stream message")
}
