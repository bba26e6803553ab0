package grpcapi

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
)

// ambassadorServer is kafka-ambassador's KafkaAmbassador service.
type ambassadorServer struct {
	kafkaambassador.UnimplementedKafkaAmbassadorServer
	opts Options
}

type ambassadorPending struct {
	offset uint64
	done   chan struct{}
	res    record.Result
}

// Produce delivers each ProdRq's record and answers its streamOffset once
// the record is durable, in the order the requests came (kafka-ambassador
// answered in order too). ProdRs has no room for an error: the first
// record that fails ends the stream with its status code and a message
// that names its streamOffset; records after it are not acknowledged, so
// the client knows to send them again.
func (s *ambassadorServer) Produce(stream grpc.BidiStreamingServer[kafkaambassador.ProdRq, kafkaambassador.ProdRs]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	requests, recvErr := receive(ctx, stream.Recv)
	queue := make(chan *ambassadorPending, s.opts.Config.StreamWindow)
	var endErr error // why the reader stopped; read after queue is closed
	go func() {
		defer close(queue)
		for {
			var req *kafkaambassador.ProdRq
			select {
			case req = <-requests:
			case err := <-recvErr:
				if !errors.Is(err, io.EOF) {
					endErr = err
				}
				return
			case <-s.opts.Draining:
				endErr = errShuttingDown
				return
			case <-ctx.Done():
				return
			}
			p := &ambassadorPending{offset: req.GetStreamOffset(), done: make(chan struct{})}
			select {
			case queue <- p:
			case <-ctx.Done():
				return
			}
			go func() {
				defer close(p.done)
				if err := record.ValidateTopic(req.GetTopic()); err != nil {
					s.opts.Sender.Refuse(ctx, API, "", 1, record.ReasonInvalid)
					p.res = record.Fail(req.GetTopic(), err)
					return
				}
				rec := []record.Record{{Topic: req.GetTopic(), Value: req.GetMessage(), Partition: record.AnyPartition}}
				p.res = s.opts.Sender.Send(ctx, API, rec)[0]
			}()
		}
	}()

	for p := range queue {
		select {
		case <-p.done:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		if p.res.Outcome == record.Failed {
			st := statusOf(p.res.Err)
			return status.Errorf(st.Code(), "streamOffset %d: %s", p.offset, st.Message())
		}
		if err := stream.Send(&kafkaambassador.ProdRs{StreamOffset: p.offset}); err != nil {
			return err
		}
	}
	return endErr
}

// ListTopics lists Kafka's topics.
func (s *ambassadorServer) ListTopics(ctx context.Context, _ *kafkaambassador.ListTopicsRq) (*kafkaambassador.ListTopicsRs, error) {
	topics, err := s.opts.Topics.Topics(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "cannot list topics: Kafka did not answer: %v", err)
	}
	return &kafkaambassador.ListTopicsRs{Topics: topics}, nil
}
