package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/config"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
)

func newSender(o Options) (Sender, error) {
	switch o.Target {
	case "http", "answer", "ndjson", "v2":
		return newHTTPSender(o), nil
	case "grpc", "grpc-stream":
		return newGRPCSender(o)
	case "kafka":
		return newKafkaSender(o), nil
	case "kgo":
		return newKgoSender(o)
	case "jetstream":
		return newJetStreamSender(o)
	default:
		return nil, fmt.Errorf("unknown -target %q; want http, ndjson, v2, grpc, grpc-stream, ambassador-stream, kafka, kgo or jetstream", o.Target)
	}
}

// seqs lists the records' sequence numbers.
func seqs(recs []Rec) []int64 {
	out := make([]int64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

type httpSender struct {
	o      Options
	client *http.Client
}

func newHTTPSender(o Options) *httpSender {
	tr := &http.Transport{MaxIdleConns: o.Concurrency * 2, MaxIdleConnsPerHost: o.Concurrency * 2, DisableCompression: true, IdleConnTimeout: time.Minute}
	return &httpSender{o: o, client: &http.Client{Transport: tr, Timeout: time.Minute}}
}

func (s *httpSender) Close() { s.client.CloseIdleConnections() }

func (s *httpSender) Send(ctx context.Context, _ int, recs []Rec) Result {
	var (
		url, contentType string
		body             []byte
	)
	topic := recs[0].Topic
	switch s.o.Target {
	case "ndjson":
		url, contentType = s.o.Addr+"/topics/"+topic+"/messages", "application/x-ndjson"
		var b bytes.Buffer
		for _, r := range recs {
			b.WriteByte('"')
			b.Write(r.Value)
			b.WriteString("\"\n")
		}
		body = b.Bytes()
	case "v2":
		url, contentType = s.o.Addr+"/topics/"+topic, "application/vnd.kafka.json.v2+json"
		type rec struct {
			Key   *string `json:"key,omitempty"`
			Value string  `json:"value"`
		}
		req := struct {
			Records []rec `json:"records"`
		}{}
		for _, r := range recs {
			var k *string
			if r.Key != nil {
				ks := string(r.Key)
				k = &ks
			}
			req.Records = append(req.Records, rec{Key: k, Value: string(r.Value)})
		}
		body, _ = json.Marshal(req)
	default:
		url, contentType, body = s.o.Addr+"/topics/"+topic+"/messages", "text/plain", recs[0].Value
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	if recs[0].Key != nil {
		req.Header.Set("X-Kafka-Key", string(recs[0].Key))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return Result{Failed: len(recs), Err: "connection"}
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		_, _ = io.Copy(io.Discard, resp.Body)
		return Result{Delivered: seqs(recs)}
	case http.StatusAccepted:
		_, _ = io.Copy(io.Discard, resp.Body)
		return Result{Buffered: seqs(recs)}
	case http.StatusMultiStatus:
		return s.mixed(resp.Body, recs)
	default:
		_, _ = io.Copy(io.Discard, resp.Body)
		return Result{Failed: len(recs), Err: fmt.Sprintf("http %d", resp.StatusCode)}
	}
}

// mixed reads a 207 answer's per-record outcomes.
func (s *httpSender) mixed(body io.Reader, recs []Rec) Result {
	var ans struct {
		Results []struct{ Outcome string } `json:"results"`
		Offsets []struct{ Outcome string } `json:"offsets"`
	}
	if err := json.NewDecoder(body).Decode(&ans); err != nil {
		return Result{Failed: len(recs), Err: "http 207 unreadable"}
	}
	outcomes := ans.Results
	if len(ans.Offsets) > 0 {
		outcomes = ans.Offsets
	}
	var res Result
	for i, o := range outcomes {
		if i >= len(recs) {
			break
		}
		switch o.Outcome {
		case "delivered":
			res.Delivered = append(res.Delivered, recs[i].Seq)
		case "buffered":
			res.Buffered = append(res.Buffered, recs[i].Seq)
		default:
			res.Failed++
			res.Err = "http 207 failed record"
		}
	}
	return res
}

type grpcSender struct {
	o       Options
	conns   []*grpc.ClientConn
	streams []*stream
}

// stream is one ProduceStream shared by -window goroutines: requests are
// matched to their acknowledgements by sequence number.
type stream struct {
	mu      sync.Mutex // guards Send and pending
	s       grpc.BidiStreamingClient[ingestv1.ProduceStreamRequest, ingestv1.ProduceStreamResponse]
	next    uint64
	pending map[uint64]chan *ingestv1.ProduceStreamResponse
	err     error
}

func newGRPCSender(o Options) (*grpcSender, error) {
	s := &grpcSender{o: o}
	for i := range o.Concurrency {
		conn, err := grpc.NewClient(o.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		s.conns = append(s.conns, conn)
		if o.Target == "grpc-stream" {
			ps, err := ingestv1.NewIngestServiceClient(conn).ProduceStream(context.Background())
			if err != nil {
				return nil, fmt.Errorf("stream %d: %w", i, err)
			}
			st := &stream{s: ps, pending: map[uint64]chan *ingestv1.ProduceStreamResponse{}}
			go st.receive()
			s.streams = append(s.streams, st)
		}
	}
	return s, nil
}

func (st *stream) receive() {
	for {
		resp, err := st.s.Recv()
		st.mu.Lock()
		if err != nil {
			st.err = err
			for _, ch := range st.pending {
				close(ch)
			}
			st.pending = map[uint64]chan *ingestv1.ProduceStreamResponse{}
			st.mu.Unlock()
			return
		}
		ch := st.pending[resp.Sequence]
		delete(st.pending, resp.Sequence)
		st.mu.Unlock()
		if ch != nil {
			ch <- resp
		}
	}
}

func (s *grpcSender) Close() {
	for _, st := range s.streams {
		_ = st.s.CloseSend()
	}
	for _, c := range s.conns {
		_ = c.Close()
	}
}

func protoRecords(recs []Rec) []*ingestv1.Record {
	out := make([]*ingestv1.Record, len(recs))
	for i, r := range recs {
		out[i] = &ingestv1.Record{Key: r.Key, Value: r.Value}
	}
	return out
}

func fromResults(recs []Rec, results []*ingestv1.RecordResult) Result {
	var res Result
	for i, r := range results {
		switch r.Outcome {
		case ingestv1.Outcome_OUTCOME_DELIVERED:
			res.Delivered = append(res.Delivered, recs[i].Seq)
		case ingestv1.Outcome_OUTCOME_BUFFERED:
			res.Buffered = append(res.Buffered, recs[i].Seq)
		default:
			res.Failed++
			res.Err = "grpc record " + r.ErrorReason
		}
	}
	return res
}

func (s *grpcSender) Send(ctx context.Context, worker int, recs []Rec) Result {
	topic := recs[0].Topic
	if s.o.Target == "grpc" {
		resp, err := ingestv1.NewIngestServiceClient(s.conns[worker]).Produce(ctx, &ingestv1.ProduceRequest{Topic: topic, Records: protoRecords(recs)})
		if err != nil {
			return Result{Failed: len(recs), Err: "grpc " + status.Code(err).String()}
		}
		return fromResults(recs, resp.Results)
	}
	st := s.streams[worker]
	ch := make(chan *ingestv1.ProduceStreamResponse, 1)
	st.mu.Lock()
	if st.err != nil {
		st.mu.Unlock()
		return Result{Failed: len(recs), Err: "grpc stream " + status.Code(st.err).String()}
	}
	st.next++
	seq := st.next
	st.pending[seq] = ch
	err := st.s.Send(&ingestv1.ProduceStreamRequest{Sequence: seq, Topic: topic, Records: protoRecords(recs)})
	st.mu.Unlock()
	if err != nil {
		return Result{Failed: len(recs), Err: "grpc stream send"}
	}
	resp, ok := <-ch
	if !ok {
		return Result{Failed: len(recs), Err: "grpc stream ended"}
	}
	return fromResults(recs, resp.Results)
}

type kafkaSender struct {
	w *kafka.Writer
}

// newKafkaSender writes straight into Kafka with kafka-go, with the
// settings that suit a batched load: the limit the ingest is compared to.
func newKafkaSender(o Options) *kafkaSender {
	return &kafkaSender{w: &kafka.Writer{
		Addr:                   kafka.TCP(strings.Split(o.Brokers, ",")...),
		Balancer:               kafka.Murmur2Balancer{},
		BatchTimeout:           5 * time.Millisecond,
		BatchSize:              max(o.Batch, 100),
		Compression:            config.Compression(o.Compression).Codec(),
		RequiredAcks:           kafka.RequireAll,
		AllowAutoTopicCreation: true,
		MaxAttempts:            3,
		Transport:              &kafka.Transport{MetadataTTL: time.Second},
	}}
}

func (s *kafkaSender) Close() { _ = s.w.Close() }

func (s *kafkaSender) Send(ctx context.Context, _ int, recs []Rec) Result {
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value}
	}
	if err := s.w.WriteMessages(ctx, msgs...); err != nil {
		return Result{Failed: len(recs), Err: "kafka " + err.Error()}
	}
	return Result{Delivered: seqs(recs)}
}

// kgoSender produces with franz-go's kgo (idempotent, acks all, as kgo
// is by default) to -brokers: a Kafka broker, or the ingest's Kafka
// listener. One client is shared by every caller, as an application
// would; each call waits for its records.
type kgoSender struct{ cl *kgo.Client }

func newKgoSender(o Options) (*kgoSender, error) {
	if o.CreateTopicsOn != "" {
		// The ingest's listener does not create topics: create them on
		// the broker first, as an operator would.
		admin, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(o.CreateTopicsOn, ",")...), kgo.AllowAutoTopicCreation())
		if err != nil {
			return nil, err
		}
		req := kmsg.NewPtrMetadataRequest()
		req.AllowAutoTopicCreation = true
		for i := range max(o.Topics, 1) {
			t := kmsg.NewMetadataRequestTopic()
			name := o.Topic
			if o.Topics > 1 {
				name = fmt.Sprintf("%s-%d", o.Topic, i)
			}
			t.Topic = &name
			req.Topics = append(req.Topics, t)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = req.RequestWith(ctx, admin)
		cancel()
		admin.Close()
		if err != nil {
			return nil, fmt.Errorf("create topics on %s: %w", o.CreateTopicsOn, err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(o.Brokers, ",")...), kgo.AllowAutoTopicCreation(),
		kgo.RecordDeliveryTimeout(30*time.Second))
	if err != nil {
		return nil, err
	}
	return &kgoSender{cl: cl}, nil
}

func (s *kgoSender) Close() { s.cl.Close() }

func (s *kgoSender) Send(ctx context.Context, _ int, recs []Rec) Result {
	krs := make([]*kgo.Record, len(recs))
	for i, r := range recs {
		krs[i] = &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value}
	}
	var res Result
	for i, pr := range s.cl.ProduceSync(ctx, krs...) {
		switch {
		case pr.Err != nil:
			res.Failed++
			res.Err = "kgo " + pr.Err.Error()
		case pr.Record.Offset < 0:
			res.Buffered = append(res.Buffered, recs[i].Seq)
		default:
			res.Delivered = append(res.Delivered, recs[i].Seq)
		}
	}
	return res
}

// jetStreamSender publishes straight into a JetStream stream with async
// publish, each record with a message id: the limit the spill path is
// compared to.
type jetStreamSender struct {
	nc *nats.Conn
	js jetstream.JetStream
}

func newJetStreamSender(o Options) (*jetStreamSender, error) {
	var opts []nats.Option
	if o.NATSCredentials != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NATSCredentials)
		if err != nil {
			return nil, err
		}
		opts = append(opts, opt)
	}
	nc, err := nats.Connect(o.Addr, opts...)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	_, err = js.CreateOrUpdateStream(context.Background(), jetstream.StreamConfig{Name: "LOADGEN", Subjects: []string{"loadgen.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &jetStreamSender{nc: nc, js: js}, nil
}

func (s *jetStreamSender) Close() { s.nc.Close() }

func (s *jetStreamSender) Send(_ context.Context, _ int, recs []Rec) Result {
	futures := make([]jetstream.PubAckFuture, len(recs))
	for i, r := range recs {
		f, err := s.js.PublishAsync("loadgen."+r.Topic, r.Value, jetstream.WithMsgID(string(r.Value[:bytes.IndexByte(r.Value, ' ')])))
		if err != nil {
			return Result{Failed: len(recs), Err: "jetstream publish"}
		}
		futures[i] = f
	}
	var res Result
	for i, f := range futures {
		select {
		case <-f.Ok():
			res.Buffered = append(res.Buffered, recs[i].Seq)
		case <-f.Err():
			res.Failed++
			res.Err = "jetstream ack"
		}
	}
	return res
}
