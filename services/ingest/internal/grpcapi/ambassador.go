package grpcapi

import (
	"context"
	"errors"
	"io"
	"sync"

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

// ambassadorBatch is the records of consecutive ProdRqs, delivered with
// one Send.
type ambassadorBatch struct {
	offsets []uint64
	recs    []record.Record
	bytes   int
	// refused is set when the ProdRq after the batch's records was refused
	// before delivery (its topic): the stream ends at refusedAt.
	refused   error
	refusedAt uint64
	results   []record.Result // set before done closes
	done      chan struct{}
}

// gather holds the batch a stream is gathering and decides when it goes
// to delivery. The receiver adds to it; the dispatcher takes from it.
type gather struct {
	maxRecords, maxBytes, depth int

	mu         sync.Mutex
	cur        *ambassadorBatch // being gathered; nil: empty
	inDelivery int              // batches whose Send has not returned
	ended      bool             // no more requests are taken
	endErr     error            // why, when it is to end the stream (not EOF)

	wake chan struct{} // the dispatcher may have a batch to take
	room chan struct{} // the receiver may have room to add
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// ready says whether cur should go to delivery now: when nothing of the
// stream is in delivery (a client that waits is not kept waiting), when
// it is full (a client that sends without waiting keeps Kafka busy), or
// when nothing more will come. Caller holds mu.
func (g *gather) ready() bool {
	if g.cur == nil || g.inDelivery >= g.depth {
		return false
	}
	return g.inDelivery == 0 || g.ended || g.full(0)
}

// full says whether cur cannot take another record of size bytes. A batch
// takes at least one record, whatever its size; a bound of 0 is no bound,
// as Options has it. Caller holds mu.
func (g *gather) full(size int) bool {
	return g.cur != nil && len(g.cur.recs) > 0 &&
		((g.maxRecords > 0 && len(g.cur.recs) >= g.maxRecords) || (g.maxBytes > 0 && g.cur.bytes+size > g.maxBytes))
}

// end stops taking requests; err (nil for the client's EOF) ends the
// stream once what was taken is answered. The first end wins.
func (g *gather) end(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended {
		return
	}
	g.ended, g.endErr = true, err
	signal(g.wake)
	signal(g.room)
}

// receive reads the stream's requests into the gathered batch until the
// stream ends, a request is refused, or the stream stops taking requests.
// While the batch is full it does not read, so that gRPC's flow control
// pushes back on the client.
func (s *ambassadorServer) receive(ctx context.Context, g *gather, recv func() (*kafkaambassador.ProdRq, error)) {
	checked := "" // the last topic delivery found valid
	for {
		req, err := recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			g.end(err)
			return
		}
		topic := req.GetTopic()
		var invalid error
		if topic != checked || topic == "" {
			// A request of a topic alone: delivery checks the name, and
			// counts the request when it is refused. Records of a valid
			// topic then go in their batch's one call.
			if _, invalid = s.opts.Sender.Deliver(ctx, record.Request{API: API, Topic: topic}); invalid == nil {
				checked = topic
			}
		}
		size := len(topic) + len(req.GetMessage())
		g.mu.Lock()
		for !g.ended && invalid == nil && g.full(size) {
			g.mu.Unlock()
			select {
			case <-g.room:
			case <-ctx.Done():
				return
			}
			g.mu.Lock()
		}
		if g.ended { // shutting down: this request is not taken
			g.mu.Unlock()
			return
		}
		if g.cur == nil {
			g.cur = &ambassadorBatch{done: make(chan struct{})}
		}
		b := g.cur
		if invalid != nil {
			// The stream ends at this record: the ones before it are
			// delivered and acknowledged, none after it is taken.
			b.refused, b.refusedAt = invalid, req.GetStreamOffset()
			g.ended = true
			signal(g.wake)
			g.mu.Unlock()
			return
		}
		b.offsets = append(b.offsets, req.GetStreamOffset())
		b.recs = append(b.recs, record.Record{Topic: topic, Value: req.GetMessage(), Partition: record.AnyPartition})
		b.bytes += size
		if g.ready() {
			signal(g.wake)
		}
		g.mu.Unlock()
	}
}

// take hands over the gathered batch when it is ready; done says nothing
// more will be.
func (g *gather) take() (b *ambassadorBatch, done bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ready() {
		b, g.cur = g.cur, nil
		g.inDelivery++
		signal(g.room)
		return b, false
	}
	return nil, g.ended && g.cur == nil
}

// delivered is called when a batch's Send returned.
func (g *gather) delivered() {
	g.mu.Lock()
	g.inDelivery--
	g.mu.Unlock()
	signal(g.wake)
}

// dispatch sends the gathered batches on, in order, to queue for the
// writer and to delivery, each with one Send. It closes queue once the
// stream takes no more requests and every batch is on its way.
func (s *ambassadorServer) dispatch(ctx context.Context, g *gather, queue chan<- *ambassadorBatch) {
	defer close(queue)
	draining := s.opts.Draining
	for {
		b, done := g.take()
		if done {
			return
		}
		if b == nil {
			select {
			case <-g.wake:
			case <-draining:
				// Take no more requests; answer the ones taken.
				g.end(errShuttingDown)
				draining = nil
			case <-ctx.Done():
				return
			}
			continue
		}
		select {
		case queue <- b:
		case <-ctx.Done():
			return
		}
		go func() {
			defer g.delivered()
			defer close(b.done)
			if len(b.recs) > 0 {
				b.results, _ = s.opts.Sender.Deliver(ctx, record.Request{API: API, Records: b.recs}) // no whole-request refusal: its topics were checked
			}
		}()
	}
}

// Produce delivers the stream's records and answers each ProdRq's
// streamOffset once its record is durable, in the order the requests came
// (kafka-ambassador answered in order too). ProdRs has no room for an
// error: the first record that fails ends the stream with its status code
// and a message that names its streamOffset; records after it are not
// acknowledged, so the client knows to send them again.
//
// The records a client sends without waiting are gathered into batches,
// as an NDJSON body is one: a batch goes to delivery, in one Send, as soon
// as nothing else of the stream is in delivery, or once it is full
// (server.max_request_records records, or server.grpc.max.request.size
// bytes). So while one batch is in delivery the next one gathers, and a
// client that sends faster than Kafka answers gets larger batches. At
// most two batches (one with server.grpc.stream_window 1) wait for Kafka
// at once; with the next one full, the stream stops reading and gRPC's
// flow control pushes back on the client.
func (s *ambassadorServer) Produce(stream grpc.BidiStreamingServer[kafkaambassador.ProdRq, kafkaambassador.ProdRs]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	g := &gather{
		maxRecords: s.opts.MaxRequestRecords,
		maxBytes:   s.opts.Config.MaxRequestSize,
		depth:      max(1, min(s.opts.Config.StreamWindow, 2)),
		wake:       make(chan struct{}, 1),
		room:       make(chan struct{}, 1),
	}
	queue := make(chan *ambassadorBatch, g.depth)
	go s.receive(ctx, g, stream.Recv)
	go s.dispatch(ctx, g, queue)

	for b := range queue {
		select {
		case <-b.done:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		for i, res := range b.results {
			if res.Outcome == record.Failed {
				return ambassadorFailure(b.offsets[i], res.Err)
			}
			if err := stream.Send(&kafkaambassador.ProdRs{StreamOffset: b.offsets[i]}); err != nil {
				return err
			}
		}
		if b.refused != nil {
			return ambassadorFailure(b.refusedAt, b.refused)
		}
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.endErr
}

// ambassadorFailure ends a stream at the record at offset, which failed
// with err.
func ambassadorFailure(offset uint64, err error) error {
	st := statusOf(err)
	return status.Errorf(st.Code(), "streamOffset %d: %s", offset, st.Message())
}

// ListTopics lists Kafka's topics.
func (s *ambassadorServer) ListTopics(ctx context.Context, _ *kafkaambassador.ListTopicsRq) (*kafkaambassador.ListTopicsRs, error) {
	topics, err := s.opts.Topics.Topics(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "cannot list topics: Kafka did not answer: %v", err)
	}
	return &kafkaambassador.ListTopicsRs{Topics: topics}, nil
}
