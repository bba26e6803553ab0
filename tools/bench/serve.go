package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
)

// serveAnswer is the answer-only HTTP server, the limit of HTTP on this
// machine: it reads the request and answers 200 with a small JSON body,
// and nothing else. bench runs it as its own process (bench
// -serve-answer ADDR) so that its CPU per request is read from
// /proc/PID/stat as the ingest's is.
func serveAnswer(addr string) int {
	answer := []byte(`{"outcome":"delivered"}`)
	err := http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(answer)
	}))
	fmt.Fprintln(os.Stderr, "bench -serve-answer:", err)
	return 1
}

// serveAnswerWaiting is the answer-only HTTP server with the wait that
// answering after Kafka takes, and none of the work: each request
// queues itself for one sender goroutine and parks until the sender has
// sent the batch it joined, as the ingest's producer does. The sender
// takes everything queued, holds it for a millisecond (a produce
// request in flight to a broker; linger.ms is 1 too), and wakes each
// request. Held against the answer-only server, its CPU per request is
// what parking and waking a request costs, a floor for any server that
// answers after an asynchronous step.
func serveAnswerWaiting(addr string) int {
	queue := make(chan chan struct{}, 4096)
	go func() {
		var batch []chan struct{}
		for {
			batch = append(batch[:0], <-queue)
			for len(queue) > 0 {
				batch = append(batch, <-queue)
			}
			time.Sleep(time.Millisecond)
			for _, sent := range batch {
				close(sent)
			}
		}
	}()
	answer := []byte(`{"outcome":"delivered"}`)
	err := http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		sent := make(chan struct{})
		queue <- sent
		<-sent
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(answer)
	}))
	fmt.Fprintln(os.Stderr, "bench -serve-answer-waiting:", err)
	return 1
}

// answerAmbassador is the answer-only kafka-ambassador server: it answers
// each ProdRq of a Produce stream with its ProdRs at once, and does
// nothing else. It receives on one goroutine and sends on another, as the
// ingest does (one goroutine doing both was slower). Its records/s on
// one stream is what gRPC itself allows kafka-ambassador's one message a
// record, the limit of the ambassador row.
type answerAmbassador struct {
	kafkaambassador.UnimplementedKafkaAmbassadorServer
}

func (answerAmbassador) Produce(stream grpc.BidiStreamingServer[kafkaambassador.ProdRq, kafkaambassador.ProdRs]) error {
	offsets := make(chan uint64, 4096)
	recvErr := make(chan error, 1)
	go func() {
		defer close(offsets)
		for {
			rq, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case offsets <- rq.GetStreamOffset():
			case <-stream.Context().Done(): // the sender gave up
				recvErr <- stream.Context().Err()
				return
			}
		}
	}()
	for o := range offsets {
		if err := stream.Send(&kafkaambassador.ProdRs{StreamOffset: o}); err != nil {
			return err
		}
	}
	if err := <-recvErr; err != io.EOF {
		return err
	}
	return nil
}

// serveAmbassadorAnswer runs answerAmbassador on addr, with gRPC's
// defaults, as its own process (bench -serve-ambassador ADDR).
func serveAmbassadorAnswer(addr string) int {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		s := grpc.NewServer()
		kafkaambassador.RegisterKafkaAmbassadorServer(s, answerAmbassador{})
		err = s.Serve(l)
	}
	fmt.Fprintln(os.Stderr, "bench -serve-ambassador:", err)
	return 1
}

// The buffer's stream and the subjects of the spilled records: the
// ingest's defaults (producer.wal.stream and subject_prefix).
const (
	spillStream  = "SPILLWAY"
	spillPrefix  = "spillway"
	spillSubject = spillPrefix + ".spill.>"
	// pipeConsumer is the bare pipe's durable consumer.
	pipeConsumer = "bench-pipe"
	// pipeBatch is the records the bare pipe fetches and writes at once,
	// as the resender's batches (producer.resend.batch_size).
	pipeBatch = 500
)

// runPipe is the bare pipe the resender is held against, with nothing of
// Spillway's around it: a JetStream pull consumer on the spilled records
// fetches batches of 500, decodes them, writes each batch with one
// kafka-go Writer.WriteMessages (synchronous, acks all, into brokers),
// then acknowledges its messages. bench runs it as its own process (bench
// -pipe NATS_URL) so that its CPU is read as the resender's is. It runs
// until SIGINT or SIGTERM.
func runPipe(natsURL, credentials, brokers string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "bench -pipe:", err)
		return 1
	}
	var opts []nats.Option
	if credentials != "" {
		opt, err := nats.NkeyOptionFromSeed(credentials)
		if err != nil {
			return fail(err)
		}
		opts = append(opts, opt)
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(err)
	}
	stream, err := js.Stream(ctx, spillStream)
	if err != nil {
		return fail(err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       pipeConsumer,
		FilterSubject: spillSubject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		MaxAckPending: 2 * pipeBatch,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fail(err)
	}
	w := &kafka.Writer{
		Addr:                   kafka.TCP(strings.Split(brokers, ",")...),
		Balancer:               kafka.Murmur2Balancer{},
		BatchSize:              pipeBatch,
		Compression:            ingestCodec().Codec(),
		BatchTimeout:           time.Millisecond, // the resender's linger.ms
		RequiredAcks:           kafka.RequireAll,
		AllowAutoTopicCreation: true,
		MaxAttempts:            3,
		Transport:              &kafka.Transport{MetadataTTL: time.Second},
	}
	defer w.Close()
	msgs := make([]jetstream.Msg, 0, pipeBatch)
	kms := make([]kafka.Message, 0, pipeBatch)
	for ctx.Err() == nil {
		batch, err := cons.Fetch(pipeBatch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return fail(err)
		}
		msgs, kms = msgs[:0], kms[:0]
		for m := range batch.Messages() {
			r, err := spill.Decode(m.Data())
			if err != nil {
				return fail(err)
			}
			km := kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value, Time: r.Timestamp,
				Headers: []kafka.Header{{Key: record.IDHeader, Value: []byte(r.ID)}}}
			for _, h := range r.Headers {
				km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
			}
			msgs, kms = append(msgs, m), append(kms, km)
		}
		if len(kms) == 0 {
			continue
		}
		// The batch is finished even when a signal comes meanwhile.
		if err := w.WriteMessages(context.WithoutCancel(ctx), kms...); err != nil {
			return fail(fmt.Errorf("write %d records: %w", len(kms), err))
		}
		for _, m := range msgs {
			if err := m.Ack(); err != nil {
				return fail(err)
			}
		}
	}
	return 0
}
