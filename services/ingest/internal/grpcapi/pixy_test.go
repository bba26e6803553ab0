package grpcapi_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/proto/gen/kafkapixy"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestPixyProduce: kafka-pixy's Produce puts each field where pixy's
// clients expect it, and refuses what pixy would.
func TestPixyProduce(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(3, "pixy"))
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false")
	conn := dial(t, in.GRPC)
	client := kafkapixy.NewKafkaPixyClient(conn)

	rs, err := client.Produce(ctx(t), &kafkapixy.ProdRq{Cluster: "default", Topic: "pixy", KeyValue: []byte("k"), Message: []byte("v"),
		Headers: []*kafkapixy.RecordHeader{{Key: "h", Value: []byte{0, 1}}, {Key: "h", Value: []byte("again")}}})
	require.NoError(t, err)
	got := kafkatest.Consume(t, addr, "pixy", 1, readTimeout)
	require.Len(t, got, 1)
	r := got[0]
	assert.Equal(t, rs.Partition, r.Partition)
	assert.Equal(t, rs.Offset, r.Offset)
	assert.Equal(t, "k", string(r.Key))
	assert.Equal(t, "v", string(r.Value))
	require.GreaterOrEqual(t, len(r.Headers), 2)
	assert.Equal(t, "h", r.Headers[0].Key)
	assert.Equal(t, []byte{0, 1}, r.Headers[0].Value)
	assert.Equal(t, "h", r.Headers[1].Key)
	assert.Equal(t, "again", string(r.Headers[1].Value))

	// key_undefined: a null key; an empty key_value otherwise: an empty key.
	for _, undefined := range []bool{true, false} {
		_, err := client.Produce(ctx(t), &kafkapixy.ProdRq{Topic: "pixy", KeyValue: []byte{}, KeyUndefined: undefined, Message: []byte("keys")})
		require.NoError(t, err)
	}
	got = kafkatest.Consume(t, addr, "pixy", 3, readTimeout)
	require.Len(t, got, 3)
	var null, empty int
	for _, r := range got {
		if string(r.Value) != "keys" {
			continue
		}
		if r.Key == nil {
			null++
		} else if len(r.Key) == 0 {
			empty++
		}
	}
	assert.Equal(t, 1, null, "key_undefined: a null key")
	assert.Equal(t, 1, empty, "an empty key_value with key_undefined false: an empty key")

	for _, tt := range []struct {
		name    string
		req     *kafkapixy.ProdRq
		code    codes.Code
		message string
	}{
		{"another cluster", &kafkapixy.ProdRq{Cluster: "eu", Topic: "pixy"}, codes.NotFound, `cluster "eu" is not known here`},
		{"no topic", &kafkapixy.ProdRq{}, codes.InvalidArgument, "invalid topic name: it is empty"},
		{"missing topic", &kafkapixy.ProdRq{Topic: "missing"}, codes.NotFound, "the topic does not exist"},
	} {
		_, err := client.Produce(ctx(t), tt.req)
		st := status.Convert(err)
		assert.Equal(t, tt.code, st.Code(), "%s: %v", tt.name, err)
		assert.Contains(t, st.Message(), tt.message, tt.name)
	}
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `grpc_server_handled_total{grpc_code="NotFound",grpc_method="Produce",grpc_service="KafkaPixy",grpc_type="unary"}`))
	assert.Equal(t, 3.0, ingesttest.Metric(t, in.Monitor, `grpc_server_handled_total{grpc_code="OK",grpc_method="Produce",grpc_service="KafkaPixy",grpc_type="unary"}`))

	h, err := healthpb.NewHealthClient(conn).Check(ctx(t), &healthpb.HealthCheckRequest{Service: "KafkaPixy"})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, h.Status)
}

// TestPixyBuffered: with Kafka gone, Produce succeeds with partition -1
// and offset -1, the record buffered.
func TestPixyBuffered(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	c.Close()
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000")
	rs, err := kafkapixy.NewKafkaPixyClient(dial(t, in.GRPC)).Produce(ctx(t), &kafkapixy.ProdRq{Topic: "down", KeyValue: []byte("k"), Message: []byte("later")})
	require.NoError(t, err)
	assert.EqualValues(t, -1, rs.Partition)
	assert.EqualValues(t, -1, rs.Offset)
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="unavailable",topic="down"}`))
}
