package grpcapi

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spillway/spillway/pkg/record"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
)

// ingestServer is spillway.ingest.v1.IngestService.
type ingestServer struct {
	ingestv1.UnimplementedIngestServiceServer
	opts Options
}

func toResults(results []record.Result) []*ingestv1.RecordResult {
	out := make([]*ingestv1.RecordResult, len(results))
	for i, r := range results {
		pr := &ingestv1.RecordResult{Id: r.ID}
		switch r.Outcome {
		case record.Delivered:
			pr.Outcome = ingestv1.Outcome_OUTCOME_DELIVERED
			pr.Partition, pr.Offset = r.Partition, r.Offset
		case record.Buffered:
			pr.Outcome = ingestv1.Outcome_OUTCOME_BUFFERED
		default:
			pr.Outcome = ingestv1.Outcome_OUTCOME_FAILED
			pr.ErrorCode = int32(codeOf(record.ReasonOf(r.Err)))
			pr.ErrorReason = string(record.ReasonOf(r.Err))
			pr.ErrorMessage = record.ClientMessage(r.Err)
		}
		if !r.Timestamp.IsZero() {
			pr.Timestamp = timestamppb.New(r.Timestamp)
		}
		out[i] = pr
	}
	return out
}

// Produce answers one result per record; when every record failed with
// the same code, the call fails with it.
func (s *ingestServer) Produce(ctx context.Context, req *ingestv1.ProduceRequest) (*ingestv1.ProduceResponse, error) {
	var refused *status.Status // counted as one, as HTTP counts a refused body
	switch {
	case overHeaders(req): // the codec left its records out
		refused = tooManyHeaders(s.opts.MaxRequestHeaders)
	case len(req.GetRecords()) == 0:
		return nil, status.Error(codes.InvalidArgument, "records is empty: send at least one record")
	case overCap(len(req.GetRecords()), s.opts.MaxRequestRecords):
		refused = tooManyRecords(s.opts.MaxRequestRecords)
	}
	if refused != nil {
		_, err := s.opts.Sender.Deliver(ctx, record.Request{API: API, Topic: req.GetTopic(), Err: refusal(record.ReasonTooLarge, refused)})
		return nil, answerOf(err)
	}
	results := send(ctx, s.opts, req.GetTopic(), req.GetRecords())
	if st := commonFailure(results); st != nil {
		return nil, st.Err()
	}
	return &ingestv1.ProduceResponse{Results: toResults(results)}, nil
}

// commonFailure is the status of the batch's failure when every record
// failed with the same code, else nil.
func commonFailure(results []record.Result) *status.Status {
	if !record.FailedAlike(results, func(err error) codes.Code { return statusOf(err).Code() }) {
		return nil
	}
	return statusOf(results[0].Err)
}

// ProduceStream takes requests while fewer than the stream window wait for
// Kafka (then it stops reading, and gRPC flow control pushes back on the
// client), delivers each concurrently, and acknowledges each one's
// sequence number once its records are answered, in whatever order that
// happens. On shutdown it stops taking requests, acknowledges those it
// took, and ends the stream with UNAVAILABLE.
func (s *ingestServer) ProduceStream(stream grpc.BidiStreamingServer[ingestv1.ProduceStreamRequest, ingestv1.ProduceStreamResponse]) error {
	ctx := stream.Context()
	requests, recvErr := receive(ctx, stream.Recv)
	window := make(chan struct{}, s.opts.Config.StreamWindow)
	var (
		wg      sync.WaitGroup
		sendMu  sync.Mutex
		sendErr error
	)
	defer wg.Wait() // no Send after the handler returns
	for {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		var req *ingestv1.ProduceStreamRequest
		select {
		case req = <-requests:
		case err := <-recvErr:
			wg.Wait()
			if errors.Is(err, io.EOF) {
				sendMu.Lock()
				defer sendMu.Unlock()
				return sendErr
			}
			return err
		case <-s.opts.Draining:
			wg.Wait()
			return errShuttingDown
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		if over := overHeaders(req); over || overCap(len(req.GetRecords()), s.opts.MaxRequestRecords) {
			// The requests before it are answered; the stream ends.
			st := tooManyRecords(s.opts.MaxRequestRecords)
			if over {
				st = tooManyHeaders(s.opts.MaxRequestHeaders)
			}
			_, err := s.opts.Sender.Deliver(ctx, record.Request{API: API, Topic: req.GetTopic(), Err: refusal(record.ReasonTooLarge, st)}) // counted as one, as HTTP counts a refused body
			wg.Wait()
			st = status.Convert(answerOf(err))
			return status.Errorf(st.Code(), "sequence %d: %s", req.GetSequence(), st.Message())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-window }()
			var results []record.Result
			if len(req.GetRecords()) > 0 {
				results = send(ctx, s.opts, req.GetTopic(), req.GetRecords())
			}
			resp := &ingestv1.ProduceStreamResponse{Sequence: req.GetSequence(), Results: toResults(results)}
			sendMu.Lock()
			defer sendMu.Unlock()
			if sendErr == nil {
				sendErr = stream.Send(resp)
			}
		}()
	}
}

// errShuttingDown ends a stream when the server shuts down, after the
// requests it took are acknowledged.
var errShuttingDown = status.Error(codes.Unavailable, "the server is shutting down: send the unacknowledged requests again on a new stream")

// receive calls recv in a goroutine and hands each message over only when
// the caller takes it, so that a caller that stops taking stops reading.
// The goroutine ends with the stream.
func receive[T any](ctx context.Context, recv func() (*T, error)) (<-chan *T, <-chan error) {
	out := make(chan *T)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case out <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, errc
}

// ListTopics lists Kafka's topics.
func (s *ingestServer) ListTopics(ctx context.Context, _ *ingestv1.ListTopicsRequest) (*ingestv1.ListTopicsResponse, error) {
	topics, err := s.opts.Topics.Topics(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "cannot list topics: Kafka did not answer: %v", err)
	}
	return &ingestv1.ListTopicsResponse{Topics: topics}, nil
}
