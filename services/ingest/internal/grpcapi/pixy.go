package grpcapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/proto/gen/kafkapixy"
)

// PixyCluster is the one cluster name kafka-pixy's clients may give (an
// empty name means it too): Spillway produces to one Kafka, and pixy calls
// its first cluster "default".
const PixyCluster = "default"

// pixyServer is kafka-pixy's KafkaPixy service.
type pixyServer struct {
	kafkapixy.UnimplementedKafkaPixyServer
	opts Options
}

// Produce answers once the record is durable, async_mode or not: pixy's
// async mode answered before Kafka had the record, and lost it if pixy
// went down. A record delivered to Kafka answers its partition and offset;
// one buffered in JetStream (Kafka down or slow) answers partition -1 and
// offset -1, a success: Spillway will carry it to Kafka. Failures keep
// pixy's codes: InvalidArgument for the request, Unavailable when neither
// Kafka nor the buffer took the record, and the codes of Spillway's other
// refusals (NotFound for a cluster or topic, ResourceExhausted, ...).
func (s *pixyServer) Produce(ctx context.Context, req *kafkapixy.ProdRq) (*kafkapixy.ProdRs, error) {
	topic := req.GetTopic()
	if c := req.GetCluster(); c != "" && c != PixyCluster {
		st := status.Newf(codes.NotFound, "cluster %q is not known here: Spillway produces to one Kafka cluster, called %q (or leave cluster empty)", c, PixyCluster)
		_, err := s.opts.Sender.Deliver(ctx, record.Request{API: API, Err: refusal(record.ReasonUnknownTopic, st)})
		return nil, answerOf(err)
	}
	if overHeaders(req) {
		_, err := s.opts.Sender.Deliver(ctx, record.Request{API: API, Topic: topic, Err: refusal(record.ReasonTooLarge, tooManyHeaders(s.opts.MaxRequestHeaders))})
		return nil, answerOf(err)
	}
	rec := record.Record{Topic: topic, Value: req.GetMessage(), Partition: record.AnyPartition}
	if !req.GetKeyUndefined() {
		// An empty key is a key: murmur2 of no bytes picks one fixed
		// partition, as pixy (and the Java client) do. A nil key is none.
		rec.Key = append([]byte{}, req.GetKeyValue()...)
	}
	for _, h := range req.GetHeaders() {
		rec.Headers = append(rec.Headers, record.Header{Key: h.GetKey(), Value: h.GetValue()})
	}
	results, err := s.opts.Sender.Deliver(ctx, record.Request{API: API, Topic: topic, Records: []record.Record{rec}})
	if err != nil {
		return nil, answerOf(err)
	}
	res := results[0]
	switch res.Outcome {
	case record.Delivered:
		return &kafkapixy.ProdRs{Partition: res.Partition, Offset: res.Offset}, nil
	case record.Buffered:
		return &kafkapixy.ProdRs{Partition: -1, Offset: -1}, nil
	default:
		return nil, statusOf(res.Err).Err()
	}
}
