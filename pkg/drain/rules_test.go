package drain

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

// The drains' rules, as docs/operations.md states them: a retriable
// failure is redelivered with backoff (1 s doubling to 10 s); if a dead
// letter cannot be stored, the record stays buffered; with several
// replicas on one durable consumer, a record is sent twice only after a
// failure or an ack timeout. These tests watch from outside the drain:
// the acknowledgements it sends JetStream (a plain NATS subscription on
// the ack subjects), the produce requests Kafka receives, what Kafka and
// the stream hold, and the exported metrics.

// metricValue is the value of the series name{labels} in reg, or -1 when
// there is none.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(want) {
				continue
			}
			for _, l := range m.GetLabel() {
				if want[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// jsAck is one answer a drain sent JetStream for a message.
type jsAck struct {
	kind      string        // +ACK, -NAK, +TERM, +WPI
	delay     time.Duration // of a -NAK with a delay
	delivered uint64        // the message's delivery count when answered
	streamSeq uint64
}

// watchAcks records every answer sent for messages of the consumer, read
// from the JetStream ack subjects over a connection of the test's own.
type watchAcks struct {
	mu   sync.Mutex
	acks []jsAck
}

func newWatchAcks(t *testing.T, e *env, stream, consumer string) *watchAcks {
	t.Helper()
	nc := spilltest.Connect(t, e.url, spill.EmbeddedCredentials(e.cfg.Producer.WAL))
	w := &watchAcks{}
	_, err := nc.Subscribe("$JS.ACK.>", func(m *nats.Msg) {
		// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
		// or with <domain>.<account hash> after ACK and a token at the end.
		tokens := strings.Split(m.Subject, ".")
		var rest []string
		switch {
		case len(tokens) == 9:
			rest = tokens[2:]
		case len(tokens) >= 11:
			rest = tokens[4:]
		default:
			return
		}
		if rest[0] != stream || rest[1] != consumer {
			return
		}
		a := jsAck{kind: string(m.Data)}
		a.delivered, _ = strconv.ParseUint(rest[2], 10, 64)
		a.streamSeq, _ = strconv.ParseUint(rest[3], 10, 64)
		if kind, body, ok := strings.Cut(string(m.Data), " "); ok {
			a.kind = kind
			var d struct {
				Delay int64 `json:"delay"`
			}
			if json.Unmarshal([]byte(body), &d) == nil {
				a.delay = time.Duration(d.Delay)
			}
		}
		w.mu.Lock()
		w.acks = append(w.acks, a)
		w.mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return w
}

// of returns the answers sent for the message at stream sequence seq.
func (w *watchAcks) of(seq uint64) []jsAck {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []jsAck
	for _, a := range w.acks {
		if a.streamSeq == seq {
			out = append(out, a)
		}
	}
	return out
}

// lastSeq is the stream sequence of the last message on subject.
func lastSeq(t *testing.T, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), "SPILLWAY")
	require.NoError(t, err)
	m, err := s.GetLastMsgForSubject(t.Context(), subject)
	require.NoError(t, err)
	return m.Sequence
}

// startDrainer runs a drainer of role, as one replica: its own NATS
// connection, Kafka producer and metrics registry.
func startDrainer(t *testing.T, e *env, role Role, period time.Duration) *prometheus.Registry {
	t.Helper()
	nc := spilltest.Connect(t, e.url, spill.EmbeddedCredentials(e.cfg.Producer.WAL))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	d, err := New(t.Context(), Options{
		JS: js, WAL: e.cfg.Producer.WAL, Kind: role.Kind, Consumer: role.Name, Producer: p,
		Period: period, Breaker: e.cfg.Producer.CB, BatchSize: 100,
		Metrics: NewMetrics(reg, 100), Logger: discard,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; _ = p.Close(); nc.Close() })
	return reg
}

// TestRetryBacksOff: a record Kafka fails with a retriable error is given
// back to JetStream with a delay that starts at 1 s and doubles (the delay
// each negative acknowledgement asks for, not a measured time), is sent to
// Kafka again only after each failure, and is in Kafka once when Kafka
// takes it.
func TestRetryBacksOff(t *testing.T) {
	const failures = 2
	c, addr := kafkatest.NewCluster(t)
	var mu sync.Mutex
	sends := 0 // produce requests carrying the topic
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		pr := req.(*kmsg.ProduceRequest)
		if len(pr.Topics) == 0 || pr.Topics[0].Topic != "flaky" {
			return nil, nil, false
		}
		mu.Lock()
		defer mu.Unlock()
		sends++
		if sends > failures {
			return nil, nil, false // Kafka takes it
		}
		return kafkatest.FailProduce(pr, kerr.NotEnoughReplicas), nil, true // retriable
	})
	// One produce request per attempt (no retries inside the producer), and
	// a breaker that stays closed, so that only the drain's backoff acts.
	// producer.order none: the concurrent drain, which gives a failed
	// record back to JetStream (the ordered one keeps it in place:
	// TestOrderedDrainKeepsEachKeysOrder).
	e := setup(t, addr, "SPILLWAY_KAFKA_RETRIES=0", "SPILLWAY_PRODUCER_CB_FAILS=100", "SPILLWAY_PRODUCER_ORDER=none")
	acks := newWatchAcks(t, e, "SPILLWAY", Resender.Name)
	e.spill(t, spill.Spilled, record.Record{ID: "retry-me", Topic: "flaky", Key: []byte("k"), Value: []byte("the value"), Partition: record.AnyPartition})
	seq := lastSeq(t, e.js, "spillway.spill.flaky.>")
	e.run(t, Resender, 0, 50*time.Millisecond)

	require.Eventually(t, func() bool {
		got := acks.of(seq)
		return len(got) > 0 && got[len(got)-1].kind == "+ACK"
	}, 20*time.Second, 20*time.Millisecond, "the record is acknowledged once Kafka takes it")
	got := acks.of(seq)
	require.Len(t, got, failures+1, "%+v", got)
	for i, want := range []time.Duration{time.Second, 2 * time.Second} {
		assert.Equal(t, "-NAK", got[i].kind, "answer %d", i+1)
		assert.EqualValues(t, i+1, got[i].delivered, "answer %d", i+1)
		assert.Equal(t, want, got[i].delay, "the delay asked after failure %d", i+1)
	}
	assert.EqualValues(t, failures+1, got[failures].delivered, "acknowledged at the third delivery")

	mu.Lock()
	assert.Equal(t, failures+1, sends, "sent to Kafka once per delivery: again only after a failure")
	mu.Unlock()
	recs := kafkatest.Consume(t, addr, "flaky", 1, 10*time.Second)
	require.Len(t, recs, 1)
	assert.Equal(t, "the value", string(recs[0].Value))
	assert.Equal(t, "k", string(recs[0].Key))
	id, _ := kafkatest.HeaderValue(recs[0], record.IDHeader)
	assert.Equal(t, "retry-me", id)
	assert.Equal(t, float64(failures), metricValue(t, e.reg, "spillway_records_retried_total", "consumer", "resender", "reason", "unavailable"))
	assert.Equal(t, 1.0, metricValue(t, e.reg, "spillway_records_drained_total", "consumer", "resender", "topic", "flaky"))
}

// TestUnstorableDeadLetterStaysBuffered: a record Kafka will never accept
// (too large) whose dead letter the stream refuses (it is full) is not
// acknowledged: it stays in the stream, to be tried again, and is not
// counted as dead-lettered. The other record of the round is delivered.
// The concurrent drain (producer.order none) gives the message back for
// later; the ordered one keeps it in its place, neither acknowledged nor
// given back.
func TestUnstorableDeadLetterStaysBuffered(t *testing.T) {
	for _, order := range []string{"none", "partition"} {
		t.Run(order, func(t *testing.T) { testUnstorableDeadLetter(t, order) })
	}
}

func testUnstorableDeadLetter(t *testing.T, order string) {
	_, addr := kafkatest.NewCluster(t)
	e := setup(t, addr, "SPILLWAY_KAFKA_MESSAGE_MAX_BYTES=50", "SPILLWAY_PRODUCER_ORDER="+order)
	e.spill(t, spill.Spilled, record.Record{ID: "big", Topic: "t", Value: make([]byte, 2000), Partition: record.AnyPartition})
	e.spill(t, spill.Spilled, record.Record{ID: "small", Topic: "ok", Value: []byte("fits"), Partition: record.AnyPartition})
	bigSeq := lastSeq(t, e.js, "spillway.spill.t.>")

	// The stream is full: no room for a dead letter, even once the small
	// record has left it.
	s, err := e.js.Stream(t.Context(), "SPILLWAY")
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	full := info.Config
	full.MaxBytes = int64(info.State.Bytes)
	_, err = e.js.UpdateStream(t.Context(), full)
	require.NoError(t, err)

	// Dead letters published, whether the stream keeps them or not.
	nc := spilltest.Connect(t, e.url, spill.EmbeddedCredentials(e.cfg.Producer.WAL))
	attempts, err := nc.SubscribeSync("spillway.dlq.>")
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	acks := newWatchAcks(t, e, "SPILLWAY", Resender.Name)
	e.run(t, Resender, 0, 100*time.Millisecond)

	dl, err := attempts.NextMsg(10 * time.Second)
	require.NoError(t, err, "the drain tries to store the dead letter")
	assert.Equal(t, "spillway.dlq.t", dl.Subject)
	if order == "none" {
		require.Eventually(t, func() bool { return len(acks.of(bigSeq)) > 0 }, 10*time.Second, 10*time.Millisecond, "the drain answers the message")
		assert.Never(t, func() bool {
			return slices.ContainsFunc(acks.of(bigSeq), func(a jsAck) bool { return a.kind != "-NAK" })
		}, time.Second, 20*time.Millisecond, "the message is only given back, never acknowledged or terminated")
		for _, a := range acks.of(bigSeq) {
			assert.Positive(t, a.delay, "given back for later: %+v", a)
		}
	} else {
		_, err := attempts.NextMsg(10 * time.Second)
		require.NoError(t, err, "the drain tries again to store the dead letter, in place")
		assert.Never(t, func() bool {
			return slices.ContainsFunc(acks.of(bigSeq), func(a jsAck) bool { return a.kind != "+WPI" })
		}, time.Second, 20*time.Millisecond, "the message is kept, never acknowledged, given back or terminated")
	}

	m, err := s.GetMsg(t.Context(), bigSeq)
	require.NoError(t, err, "the record is still in the stream")
	r, err := spill.Decode(m.Data)
	require.NoError(t, err)
	assert.Equal(t, "big", r.ID)
	_, err = s.GetLastMsgForSubject(t.Context(), "spillway.dlq.>")
	assert.ErrorIs(t, err, jetstream.ErrMsgNotFound, "no dead letter was stored")
	assert.Equal(t, 0.0, metricValue(t, e.reg, "spillway_records_dead_lettered_total", "consumer", "resender", "reason", "too_large"))

	got := kafkatest.Consume(t, addr, "ok", 1, 10*time.Second)
	require.Len(t, got, 1)
	assert.Equal(t, "fits", string(got[0].Value))
	require.Eventually(t, func() bool {
		return metricValue(t, e.reg, "spillway_records_drained_total", "consumer", "resender", "topic", "ok") == 1
	}, 5*time.Second, 20*time.Millisecond)
}

// TestReplicasShareConsumerWithoutDuplicates: two replicas of a drain on
// one durable consumer, with Kafka healthy, deliver every record exactly
// once between them, with its value, and empty the stream.
func TestReplicasShareConsumerWithoutDuplicates(t *testing.T) {
	for _, tc := range []struct {
		role   Role
		kind   spill.Kind
		period time.Duration
	}{
		{Forwarder, spill.WriteAhead, 0},
		{Resender, spill.Spilled, 50 * time.Millisecond},
	} {
		t.Run(tc.role.Name, func(t *testing.T) {
			const n = 3000
			_, addr := kafkatest.NewCluster(t)
			// A message the server sent as a fetch's context ended is
			// stranded until ack_wait passes (seen on this machine under
			// -race: 400 of 3000 records waiting): a short ack_wait brings it
			// back within the test's bound. Kafka is healthy and a batch
			// takes milliseconds, so no record outlives it in flight.
			e := setup(t, addr, "SPILLWAY_PRODUCER_WAL_ACK_WAIT=5s")
			topic := "shared-" + tc.role.Name
			replicas := []*prometheus.Registry{startDrainer(t, e, tc.role, tc.period), startDrainer(t, e, tc.role, tc.period)}
			for batch := range 10 {
				recs := records(topic, n/10)
				for i := range recs {
					recs[i].ID = fmt.Sprintf("%s-%d", topic, batch*n/10+i)
					recs[i].Value = []byte("value of " + recs[i].ID)
				}
				e.spill(t, tc.kind, recs...)
			}

			got := kafkatest.Consume(t, addr, topic, n, 30*time.Second)
			seen := map[string]int{}
			for _, r := range got {
				id, _ := kafkatest.HeaderValue(r, record.IDHeader)
				seen[id]++
				assert.Equal(t, "value of "+id, string(r.Value))
			}
			dups, twice := 0, []string{}
			for id, k := range seen {
				if k > 1 {
					dups += k - 1
					twice = append(twice, id)
				}
			}
			assert.Zero(t, dups, "records in Kafka more than once, e.g. %v", twice[:min(5, len(twice))])
			assert.Equal(t, n, len(seen), "distinct records in Kafka")
			assert.Equal(t, n, len(got), "records in Kafka")

			var perReplica []float64
			total := 0.0
			require.Eventually(t, func() bool {
				perReplica, total = perReplica[:0], 0
				for _, reg := range replicas {
					v := metricValue(t, reg, "spillway_records_drained_total", "consumer", tc.role.Name, "topic", topic)
					perReplica = append(perReplica, v)
					total += max(v, 0)
				}
				return total >= n
			}, 10*time.Second, 20*time.Millisecond, "the replicas count every record drained")
			t.Logf("drained per replica: %v", perReplica)
			assert.Equal(t, float64(n), total, "the replicas' drained counts add up to the records")
			for i, v := range perReplica {
				assert.Positive(t, v, "replica %d took part", i)
			}
			require.Eventually(t, func() bool {
				s, err := e.js.Stream(t.Context(), "SPILLWAY")
				require.NoError(t, err)
				info, err := s.Info(t.Context())
				require.NoError(t, err)
				return info.State.Msgs == 0
			}, 10*time.Second, 20*time.Millisecond, "every record was acknowledged")
		})
	}
}
