package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// answerDropper is a TCP proxy in front of the ingest's Kafka listener
// that lets every byte through except, once armed, the answer to the
// next produce request: it reads that answer from the ingest (so the
// ingest has sent it, and stored the records) and closes both
// connections instead of passing it on, as a network that breaks at the
// wrong moment does. The client never learns its records were taken.
type answerDropper struct {
	addr    string
	armed   atomic.Bool
	dropped atomic.Int32
}

// newAnswerDropper listens on a reserved port (the ingest advertises it
// before the proxy knows the ingest's address) and forwards to the
// address upstream returns, asked once per connection.
func newAnswerDropper(t *testing.T, upstream func() string) *answerDropper {
	t.Helper()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", reservedPort(t)))
	if err != nil {
		t.Fatal(err)
	}
	d := &answerDropper{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.relay(client, upstream())
			}()
		}
	}()
	return d
}

// relay carries one connection: requests as they are, noting each one's
// API key by correlation id; answers frame by frame.
func (d *answerDropper) relay(client net.Conn, upstream string) {
	defer client.Close()
	server, err := net.DialTimeout("tcp", upstream, 5*time.Second)
	if err != nil {
		return
	}
	defer server.Close()
	var mu sync.Mutex
	keys := map[int32]int16{} // correlation id -> API key
	go func() {
		defer server.Close()
		defer client.Close()
		for {
			frame, err := readFrame(client)
			if err != nil {
				return
			}
			if len(frame) >= 12 {
				mu.Lock()
				keys[int32(binary.BigEndian.Uint32(frame[8:12]))] = int16(binary.BigEndian.Uint16(frame[4:6]))
				mu.Unlock()
			}
			if _, err := server.Write(frame); err != nil {
				return
			}
		}
	}()
	for {
		frame, err := readFrame(server)
		if err != nil || len(frame) < 8 {
			return
		}
		mu.Lock()
		key := keys[int32(binary.BigEndian.Uint32(frame[4:8]))]
		mu.Unlock()
		if key == 0 && d.armed.CompareAndSwap(true, false) { // Produce
			d.dropped.Add(1)
			return
		}
		if _, err := client.Write(frame); err != nil {
			return
		}
	}
}

// readFrame reads one size-prefixed Kafka frame, its prefix included.
func readFrame(r io.Reader) ([]byte, error) {
	size := make([]byte, 4)
	if _, err := io.ReadFull(r, size); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(size)
	if n > 200<<20 {
		return nil, errors.New("frame too large")
	}
	frame := make([]byte, 4+n)
	copy(frame, size)
	_, err := io.ReadFull(r, frame[4:])
	return frame, err
}

// idempotentIngest starts the built ingest against k behind an
// answerDropper, which its Metadata names, so that clients reach it only
// through the proxy. With cut, Kafka is cut off first.
func idempotentIngest(t *testing.T, k *faultyKafka) (*ingestProcess, *answerDropper) {
	t.Helper()
	var kafkaAddr atomic.Value
	d := newAnswerDropper(t, func() string { return kafkaAddr.Load().(string) })
	in := startIngest(t, k.addr, "SPILLWAY_SERVER_KAFKA_ADVERTISED="+d.addr,
		"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	kafkaAddr.Store(in.kafkaAddr)
	return in, d
}

// onceEach checks that topic in Kafka holds each of want exactly once,
// and nothing else.
func onceEach(t *testing.T, broker, topic string, want []string) {
	t.Helper()
	eventually(t, 60*time.Second, "every acknowledged record in Kafka", func() bool {
		return len(kcatConsumeMaybe(broker, topic)) >= len(want)
	})
	seen := map[string]int{}
	for _, r := range settledRead(t, broker, topic) {
		seen[deref(r.Payload)]++
		if header(r, "spillway-id") == "" {
			t.Errorf("record %q has no spillway-id", deref(r.Payload))
		}
	}
	for _, v := range want {
		if seen[v] != 1 {
			t.Errorf("record %q is in Kafka %d times, want once", v, seen[v])
		}
		delete(seen, v)
	}
	for v, n := range seen {
		t.Errorf("record %q is in Kafka %d times, and was never sent", v, n)
	}
}

// lostAnswerCases runs produce with Kafka up and with Kafka cut (the
// records buffered, then drained by the resender), through a proxy that
// drops the answer to the first produce: each record must be in Kafka
// exactly once, and the ingest must have answered the client's resend
// from its idempotence state.
func lostAnswerCases(t *testing.T, produce func(t *testing.T, addr, topic string, values []string, cut bool)) {
	for _, cut := range []bool{false, true} {
		t.Run(fmt.Sprintf("kafka_cut=%v", cut), func(t *testing.T) {
			k := newFaultyKafka(t)
			kafkatest.CreateTopic(t, k.addr, "idem", 1)
			in, d := idempotentIngest(t, k)
			// One record first, so that the ingest knows the topic's
			// layout before Kafka is cut.
			produce(t, d.addr, "idem", []string{"first"}, false)
			if cut {
				k.cut()
			}
			values := make([]string, 10)
			for i := range values {
				values[i] = fmt.Sprintf("record %d", i)
			}
			d.armed.Store(true)
			produce(t, d.addr, "idem", values, cut)
			values = append(values, "first")
			if d.dropped.Load() != 1 {
				t.Fatalf("the proxy dropped %d produce answers, want 1", d.dropped.Load())
			}
			if n := metricValue(t, in.monitorAddr, "spillway_kafka_duplicate_batches_total"); n < 1 {
				t.Errorf("spillway_kafka_duplicate_batches_total is %v: the resend was not answered from the idempotence state", n)
			}
			if cut {
				k.restore()
				startResender(t, k.addr, in.natsAddr)
			}
			onceEach(t, k.addr, "idem", values)
		})
	}
}

// TestKgoIdempotentResendAfterLostAnswer: kgo (idempotent by default)
// sends a batch of 10; the ingest stores it and answers, and the answer
// is lost with the connection. kgo sends the batch again on a new
// connection with the same sequence; the ingest answers it as the first
// time (the offset, or -1 when buffered) without storing it again: Kafka
// holds each record exactly once, with Kafka up and with Kafka cut.
func TestKgoIdempotentResendAfterLostAnswer(t *testing.T) {
	parallel(t, waits)
	lostAnswerCases(t, func(t *testing.T, addr, topic string, values []string, cut bool) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RecordDeliveryTimeout(30*time.Second), kgo.ProducerLinger(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		var recs []*kgo.Record
		for _, v := range values {
			recs = append(recs, &kgo.Record{Topic: topic, Value: []byte(v)})
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatalf("kgo: %v", err)
		}
		for _, r := range recs {
			if cut && r.Offset != -1 {
				t.Errorf("record %q: kgo was told offset %d while Kafka was cut, want -1", r.Value, r.Offset)
			}
		}
		if !cut {
			for i, r := range recs {
				if r.Offset != recs[0].Offset+int64(i) {
					t.Errorf("record %d at offset %d, the batch's base %d + %d", i, r.Offset, recs[0].Offset, i)
				}
			}
		}
	})
}

// TestSaramaIdempotentResendAfterLostAnswer: the same with IBM/sarama's
// idempotent SyncProducer.
func TestSaramaIdempotentResendAfterLostAnswer(t *testing.T) {
	parallel(t, waits)
	lostAnswerCases(t, func(t *testing.T, addr, topic string, values []string, cut bool) {
		cfg := sarama.NewConfig()
		cfg.Version = sarama.V2_8_0_0
		cfg.Producer.Idempotent = true
		cfg.Net.MaxOpenRequests = 1
		cfg.Producer.RequiredAcks = sarama.WaitForAll
		cfg.Producer.Return.Successes = true
		cfg.Producer.Retry.Max = 10
		cfg.Producer.Retry.Backoff = 200 * time.Millisecond
		cfg.Producer.Timeout = 10 * time.Second
		cfg.Producer.Flush.Frequency = 50 * time.Millisecond
		p, err := sarama.NewSyncProducer([]string{addr}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var msgs []*sarama.ProducerMessage
		for _, v := range values {
			msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(v)})
		}
		if err := p.SendMessages(msgs); err != nil {
			t.Fatalf("sarama: %v", err)
		}
		// sarama gives each message the partition's base offset plus its
		// index in the batch: -1 for the first of a buffered batch, then
		// 0, 1, ...
		if cut && msgs[0].Offset != -1 {
			t.Errorf("sarama was told base offset %d while Kafka was cut, want -1", msgs[0].Offset)
		}
	})
}

// TestKgoIdempotentAcrossIngestRestart: a kgo client keeps its producer
// id and sequences while the ingest restarts (a new process, which knows
// nothing of it, on the same address). The new ingest takes the old id
// at its next sequence, as Kafka takes a producer whose state it no
// longer has: kgo goes on without an error, no record is lost and none
// is stored twice.
func TestKgoIdempotentAcrossIngestRestart(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	kafkatest.CreateTopic(t, k.addr, "restart", 1)
	listen := fmt.Sprintf("127.0.0.1:%d", reservedPort(t))
	in := startIngest(t, k.addr, "SPILLWAY_SERVER_KAFKA_LISTEN="+listen)
	cl, err := kgo.NewClient(kgo.SeedBrokers(listen), kgo.RecordDeliveryTimeout(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var values []string
	produce := func(from, to int) []*kgo.Record {
		var recs []*kgo.Record
		for i := from; i < to; i++ {
			v := fmt.Sprintf("record %d", i)
			values = append(values, v)
			recs = append(recs, &kgo.Record{Topic: "restart", Value: []byte(v)})
		}
		return recs
	}
	if err := cl.ProduceSync(t.Context(), produce(0, 5)...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the ingest did not stop on SIGTERM")
	}
	// Records produced while the ingest is down: kgo retries them.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, r := range produce(5, 10) {
		wg.Add(1)
		cl.Produce(t.Context(), r, func(_ *kgo.Record, err error) {
			defer wg.Done()
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	startIngest(t, k.addr, "SPILLWAY_SERVER_KAFKA_LISTEN="+listen)
	wg.Wait()
	if err := cl.ProduceSync(t.Context(), produce(10, 15)...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for _, err := range errs {
		if err != nil {
			t.Errorf("a record produced across the restart: %v", err)
		}
	}
	onceEach(t, k.addr, "restart", values)
}
