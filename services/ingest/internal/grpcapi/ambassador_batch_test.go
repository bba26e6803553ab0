package grpcapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// ambValue is the message of the record at a stream offset.
func ambValue(offset uint64) string { return fmt.Sprintf("v%06d", offset) }

// ambSend sends the ProdRqs for offsets [from, to) to topic without
// waiting for acknowledgements, as kafka-ambassador's client does; the
// one at badAt (if in range) names badTopic instead. It closes the send
// side when closeSend is set. The returned channel gives the first send
// error, or nil.
func ambSend(stream grpc.BidiStreamingClient[kafkaambassador.ProdRq, kafkaambassador.ProdRs], topic string, from, to uint64, badAt uint64, badTopic string, closeSend bool) <-chan error {
	done := make(chan error, 1)
	go func() {
		for o := from; o < to; o++ {
			t := topic
			if o == badAt {
				t = badTopic
			}
			if err := stream.Send(&kafkaambassador.ProdRq{Topic: t, Message: []byte(ambValue(o)), StreamOffset: o}); err != nil {
				done <- err
				return
			}
		}
		if closeSend {
			done <- stream.CloseSend()
			return
		}
		done <- nil
	}()
	return done
}

// ambAcks reads acknowledgements until the stream ends and returns their
// offsets in the order they came, and how the stream ended (nil for EOF).
// onAck, if set, is called after each one with the count so far.
func ambAcks(stream grpc.BidiStreamingClient[kafkaambassador.ProdRq, kafkaambassador.ProdRs], onAck func(n int)) ([]uint64, error) {
	var acks []uint64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return acks, nil
		}
		if err != nil {
			return acks, err
		}
		acks = append(acks, resp.StreamOffset)
		if onAck != nil {
			onAck(len(acks))
		}
	}
}

// offsets is from, from+1, ..., to-1.
func offsets(from, to uint64) []uint64 {
	out := make([]uint64, 0, to-from)
	for o := from; o < to; o++ {
		out = append(out, o)
	}
	return out
}

// consumeValues reads topic from the start until every value in want has
// been seen, or timeout passes, and returns the wanted values it did not
// see.
func consumeValues(t *testing.T, addr, topic string, want []string, timeout time.Duration) (missing []string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	require.NoError(t, err)
	defer cl.Close()
	left := make(map[string]bool, len(want))
	for _, v := range want {
		left[v] = true
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for len(left) > 0 && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) { delete(left, string(r.Value)) })
	}
	for v := range left {
		missing = append(missing, v)
	}
	return missing
}

// produceCounter counts the produce requests, and the records in them,
// that the broker receives for one topic.
type produceCounter struct {
	mu                sync.Mutex
	requests, records int
}

func (pc *produceCounter) counts() (requests, records int) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.requests, pc.records
}

func countProduces(c *kfake.Cluster, topic string) *produceCounter {
	pc := &produceCounter{}
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		n := 0
		eachRecord(req.(*kmsg.ProduceRequest), topic, func(kmsg.Record) { n++ })
		if n > 0 {
			pc.mu.Lock()
			pc.requests++
			pc.records += n
			pc.mu.Unlock()
		}
		return nil, nil, false
	})
	return pc
}

// eachRecord calls fn for each record of topic in req.
func eachRecord(req *kmsg.ProduceRequest, topic string, fn func(kmsg.Record)) {
	kafkatest.EachBatch(req, topic, func(b kmsg.RecordBatch) {
		recs, err := kfake.BatchRecords(b)
		if err != nil {
			return
		}
		for _, r := range recs {
			fn(r)
		}
	})
}

// TestAmbassadorStreamBurstInOrder: a client that sends many records
// without waiting (kafka-ambassador's own) gets every streamOffset
// acknowledged once, in order, and every record is in Kafka once with its
// value.
func TestAmbassadorStreamBurstInOrder(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	stream, err := kafkaambassador.NewKafkaAmbassadorClient(dial(t, in.GRPC)).Produce(ctx(t))
	require.NoError(t, err)

	const n = 3000
	sent := ambSend(stream, "burst", 0, n, n, "", true)
	acks, err := ambAcks(stream, nil)
	require.NoError(t, err, "the stream ends with OK once the client closed its side")
	require.NoError(t, <-sent)
	assert.Equal(t, offsets(0, n), acks, "each streamOffset acknowledged once, in order")

	got := kafkatest.Consume(t, addr, "burst", n, readTimeout)
	want := map[string]bool{}
	for o := range uint64(n) {
		want[ambValue(o)] = true
	}
	for _, r := range got {
		assert.True(t, want[string(r.Value)], "unexpected or duplicate record %q", r.Value)
		delete(want, string(r.Value))
	}
	assert.Empty(t, want, "records missing from Kafka")
	assert.Equal(t, float64(n), ingesttest.Metric(t, in.Monitor, `spillway_records_received_total{api="grpc",topic="burst"}`))
	assert.Equal(t, float64(n), ingesttest.Metric(t, in.Monitor, `spillway_records_delivered_total{topic="burst"}`))
}

// TestAmbassadorStreamSharesBatches: with server.grpc.stream_window 1, a
// stream that delivered one record at a time made one produce request per
// record (or per two); gathered into batches, far fewer requests carry
// every record once.
func TestAmbassadorStreamSharesBatches(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	produces := countProduces(c, "shared")
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_GRPC_STREAM_WINDOW=1")
	stream, err := kafkaambassador.NewKafkaAmbassadorClient(dial(t, in.GRPC)).Produce(ctx(t))
	require.NoError(t, err)

	const n = 2000
	sent := ambSend(stream, "shared", 0, n, n, "", true)
	acks, err := ambAcks(stream, nil)
	require.NoError(t, err)
	require.NoError(t, <-sent)
	assert.Equal(t, offsets(0, n), acks)

	requests, records := produces.counts()
	sends := ingesttest.Metric(t, in.Monitor, `spillway_client_requests_total{library="grpc-go",principal="anonymous",version="1.85.0"}`)
	t.Logf("%d records: %d produce requests at the broker, %v delivery calls", n, requests, sends)
	assert.Equal(t, n, records, "the broker saw every record once")
	assert.LessOrEqual(t, requests, n/10, "records share produce requests")
}

// TestAmbassadorStreamBadTopicMidBurst: a record with a bad topic in the
// middle of a burst ends the stream at its streamOffset; every record
// before it is acknowledged and in Kafka, and none after it is
// acknowledged or sent to Kafka.
func TestAmbassadorStreamBadTopicMidBurst(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	stream, err := kafkaambassador.NewKafkaAmbassadorClient(dial(t, in.GRPC)).Produce(ctx(t))
	require.NoError(t, err)

	const n, bad = 1000, 600
	ambSend(stream, "mid", 0, n, bad, "no/slash", true)
	acks, err := ambAcks(stream, nil)
	st := status.Convert(err)
	assert.Equal(t, codes.InvalidArgument, st.Code(), "%v", err)
	assert.Contains(t, st.Message(), `streamOffset 600: invalid topic name "no/slash"`)
	assert.Equal(t, offsets(0, bad), acks, "the records before it acknowledged in order, none after")

	got := kafkatest.Consume(t, addr, "mid", bad, readTimeout) // fails on any record past 599
	assert.Equal(t, bad, len(got))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="invalid",topic=""}`))
	assert.Equal(t, float64(bad), ingesttest.Metric(t, in.Monitor, `spillway_records_delivered_total{topic="mid"}`))
}

// TestAmbassadorStreamKafkaFailureMidBurst: Kafka refusing every batch
// that holds one poisoned record in the middle of a burst (INVALID_RECORD,
// not retriable, naming no record) fails that record alone (the producer
// splits the batch until it is alone) and ends the stream at its
// streamOffset; the records before it are acknowledged and in Kafka, none
// after it acknowledged.
func TestAmbassadorStreamKafkaFailureMidBurst(t *testing.T) {
	const topic, n, warm, poison = "poisoned", 1000, 100, 500
	// One partition: the hook fails a whole request, as Kafka fails only
	// the partition whose batch holds the poison.
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, topic))
	var mu sync.Mutex
	refused := map[uint64]bool{} // the offsets of every record Kafka refused
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		pr := req.(*kmsg.ProduceRequest)
		var in []uint64
		hit := false
		eachRecord(pr, topic, func(r kmsg.Record) {
			var o uint64
			if _, err := fmt.Sscanf(string(r.Value), "v%d", &o); err == nil {
				in = append(in, o)
				hit = hit || o == poison
			}
		})
		if !hit {
			return nil, nil, false
		}
		mu.Lock()
		for _, o := range in {
			refused[o] = true
		}
		mu.Unlock()
		return kafkatest.FailProduce(pr, kerr.InvalidRecord), nil, true
	})
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_RETRIES=0")
	stream, err := kafkaambassador.NewKafkaAmbassadorClient(dial(t, in.GRPC)).Produce(ctx(t))
	require.NoError(t, err)

	// A first part, acknowledged, then the burst with the poison in it.
	warmed := make(chan struct{})
	ambSend(stream, topic, 0, warm, n, "", false)
	var (
		acks []uint64
		end  error
	)
	read := make(chan struct{})
	go func() {
		defer close(read)
		acks, end = ambAcks(stream, func(k int) {
			if k == warm {
				close(warmed)
			}
		})
	}()
	select {
	case <-warmed:
	case <-read:
		t.Fatalf("the stream ended before %d acknowledgements: %v", warm, end)
	}
	ambSend(stream, topic, warm, n, n, "", true)
	<-read

	mu.Lock()
	lowest := uint64(n)
	for o := range refused {
		lowest = min(lowest, o)
	}
	mu.Unlock()
	require.True(t, refused[poison], "Kafka was asked for the poisoned record")
	t.Logf("Kafka refused batches holding %d records, the lowest at streamOffset %d", len(refused), lowest)
	first := uint64(poison) // its neighbours in a refused batch are sent again
	st := status.Convert(end)
	assert.Equal(t, codes.InvalidArgument, st.Code(), "%v", end)
	assert.Contains(t, st.Message(), fmt.Sprintf("streamOffset %d: Kafka refused the record", first))
	assert.Equal(t, offsets(0, first), acks, "the records before the first refused one acknowledged in order, none after")

	want := make([]string, 0, first)
	for o := range first {
		want = append(want, ambValue(o))
	}
	assert.Empty(t, consumeValues(t, addr, topic, want, readTimeout), "acknowledged records missing from Kafka")
}

// TestAmbassadorStreamShutdownMidBurst: when the ingest shuts down during
// a burst, the stream stops taking records, acknowledges (in order) the
// ones it took once they are in Kafka, and ends with UNAVAILABLE.
func TestAmbassadorStreamShutdownMidBurst(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	stream, err := kafkaambassador.NewKafkaAmbassadorClient(dial(t, in.GRPC)).Produce(ctx(t))
	require.NoError(t, err)

	const n = 20000
	ambSend(stream, "drained", 0, n, n, "", false) // never closes: only the shutdown ends the stream
	stopped := make(chan error, 1)
	acks, err := ambAcks(stream, func(k int) {
		if k == 500 {
			go func() { stopped <- in.Stop() }()
		}
	})
	st := status.Convert(err)
	assert.Equal(t, codes.Unavailable, st.Code(), "%v", err)
	assert.Contains(t, st.Message(), "the server is shutting down")
	require.GreaterOrEqual(t, len(acks), 500)
	assert.Equal(t, offsets(0, uint64(len(acks))), acks, "acknowledged in order, none skipped")
	require.NoError(t, <-stopped)

	want := make([]string, 0, len(acks))
	for _, o := range acks {
		want = append(want, ambValue(o))
	}
	assert.Empty(t, consumeValues(t, addr, "drained", want, readTimeout), "acknowledged records missing from Kafka")
}

// BenchmarkAmbassadorStream drives one KafkaAmbassador/Produce stream as
// kafka-ambassador's client does: it sends b.N 100-byte records without
// waiting and reads the acknowledgements concurrently. The process holds
// the client, the ingest and the broker: cpu-us/record is the CPU of all
// three (getrusage), records/produce the records per produce request at
// the broker.
//
//	go test -run '^$' -bench BenchmarkAmbassadorStream -benchtime 200000x -count 3 ./internal/grpcapi/
func BenchmarkAmbassadorStream(b *testing.B) {
	c, addr := kafkatest.NewCluster(b)
	produces := countProduces(c, "bench")
	in := ingesttest.Start(b, addr)
	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := kafkaambassador.NewKafkaAmbassadorClient(conn)
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	value := make([]byte, 100)
	run := func(n int) error {
		stream, err := client.Produce(ctx)
		if err != nil {
			return err
		}
		sent := make(chan error, 1)
		go func() {
			for i := range uint64(n) {
				if err := stream.Send(&kafkaambassador.ProdRq{Topic: "bench", Message: value, StreamOffset: i}); err != nil {
					sent <- err
					return
				}
			}
			sent <- stream.CloseSend()
		}()
		var next uint64
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if resp.StreamOffset != next {
				return fmt.Errorf("acknowledged %d, want %d", resp.StreamOffset, next)
			}
			next++
		}
		if next != uint64(n) {
			return fmt.Errorf("%d acknowledged, want %d", next, n)
		}
		return <-sent
	}
	if err := run(100); err != nil { // the topic exists, the connections are open
		b.Fatal(err)
	}
	requests0, records0 := produces.counts()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	start := time.Now()
	if err := run(b.N); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuTime(b) - cpu0
	requests, records := produces.counts()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/record")
	if requests > requests0 {
		b.ReportMetric(float64(records-records0)/float64(requests-requests0), "records/produce")
	}
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
