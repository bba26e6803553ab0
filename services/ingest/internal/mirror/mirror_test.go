package mirror

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

// jetStream starts an embedded JetStream with the stream and returns a
// buffer on it.
func jetStream(t *testing.T, env ...string) (*spill.Buffer, jetstream.JetStream) {
	t.Helper()
	cfg, err := config.Parse(nil, append([]string{"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(), "SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0"}, env...))
	require.NoError(t, err)
	srv, err := embeddednats.Start(cfg.Producer.WAL, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, js, err := spill.Connect(t.Context(), cfg.Producer.WAL, srv, "test", slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	// The test reads over a connection of its own, as a user would.
	reader := spilltest.Connect(t, srv.ClientURL(), spill.EmbeddedCredentials(cfg.Producer.WAL))
	rjs, err := jetstream.New(reader)
	require.NoError(t, err)
	return spill.NewBuffer(js, cfg.Producer.WAL), rjs
}

func newMirror(t *testing.T, brokers string, buffer Buffer, env ...string) (*Mirror, *Metrics) {
	t.Helper()
	cfg, err := config.Parse(fmt.Appendf(nil, "mirrors: [{name: dr, topics: ['*'], kafka: {brokers: [%q], %s}}]", brokers, strings.Join(env, ", ")), nil)
	require.NoError(t, err)
	mc := cfg.Mirrors[0]
	p, err := producer.New(mc.Kafka, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	m := NewMetrics(prometheus.NewRegistry())
	return New(mc, p, buffer, cfg.Producer.CB, m, slog.New(slog.DiscardHandler)), m
}

func records(topic string, n int) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		out[i] = record.Record{ID: fmt.Sprintf("%s-%d", topic, i), Topic: topic, Value: []byte("v"), Partition: record.AnyPartition, Timestamp: time.Now()}
	}
	return out
}

func count(m *Metrics, outcome string) float64 {
	return testutil.ToFloat64(m.records.WithLabelValues("dr", outcome))
}

// TestCloseSpillsWhatIsQueued: at shutdown, copies waiting for a mirror
// that does not answer go to JetStream at once, not after the message
// timeout, and none is lost.
func TestCloseSpillsWhatIsQueued(t *testing.T) {
	buffer, js := jetStream(t)
	// A mirror that accepts connections and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	mr, m := newMirror(t, ln.Addr().String(), buffer, `message.timeout.ms: 60000`)
	for i := range 10 {
		mr.Offer(records(fmt.Sprintf("t%d", i), 10))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_ = mr.Close(ctx)
	t.Logf("closed in %v", time.Since(start))
	assert.Less(t, time.Since(start), 20*time.Second, "Close ends before its deadline")
	assert.Equal(t, 100.0, count(m, OutcomeSpilled))
	assert.Equal(t, 0.0, count(m, OutcomeDropped))
	assert.Len(t, spilltest.Messages(t, js, "SPILLWAY", "spillway.mirror.dr.>", 100), 100)
}

// TestDeadLetterIsStoredBesidePrimarySpill: a copy the mirror will never
// take is stored as a mirror dead letter even when the primary spilled
// the same record a moment before (same record id).
func TestDeadLetterIsStoredBesidePrimarySpill(t *testing.T) {
	buffer, js := jetStream(t)
	_, mirrorAddr := kafkatest.NewCluster(t)
	mr, m := newMirror(t, mirrorAddr, buffer, `message.max.bytes: 10`)
	// Over the mirror's limit and the room kept for Spillway's own headers.
	recs := []record.Record{{ID: "same-id", Topic: "orders", Value: make([]byte, 2000), Partition: record.AnyPartition, Timestamp: time.Now()}}
	res := buffer.Publish(t.Context(), spill.Spilled, recs, "unavailable")
	require.Equal(t, record.Buffered, res[0].Outcome)

	mr.Offer(recs)
	require.Eventually(t, func() bool { return count(m, OutcomeDeadLettered) == 1 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, mr.Close(t.Context()))
	dl := spilltest.Messages(t, js, "SPILLWAY", "spillway.dlq.>", 1)
	require.Len(t, dl, 1)
	assert.Equal(t, "spillway.dlq.mirror.dr.orders", dl[0].Subject)
	assert.Contains(t, dl[0].Header.Get(spill.HeaderReason), "mirror dr: too_large")
	assert.Len(t, spilltest.Messages(t, js, "SPILLWAY", "spillway.spill.>", 1), 1, "the primary's spill is still there")
}

// TestMissingTopicAtMirrorIsSpilled: a topic the mirror does not have
// (auto-creation off there) may be created later: its copies are spilled
// for the resender to try again, never dead-lettered.
func TestMissingTopicAtMirrorIsSpilled(t *testing.T) {
	buffer, js := jetStream(t)
	_, mirrorAddr := kafkatest.NewCluster(t)
	mr, m := newMirror(t, mirrorAddr, buffer, `allow.auto.create.topics: false`)
	mr.Offer(records("not-there-yet", 3))
	require.Eventually(t, func() bool { return count(m, OutcomeSpilled) == 3 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, mr.Close(t.Context()))
	assert.Equal(t, 0.0, count(m, OutcomeDeadLettered))
	spilled := spilltest.Messages(t, js, "SPILLWAY", "spillway.mirror.dr.>", 3)
	require.Len(t, spilled, 3)
	assert.Equal(t, "spillway.mirror.dr.not-there-yet", spilled[0].Subject)
}

// TestStreamShareLimit: when the stream is fuller than MaxStreamShare,
// copies are dropped and counted rather than spilled.
func TestStreamShareLimit(t *testing.T) {
	buffer, _ := jetStream(t, "SPILLWAY_PRODUCER_WAL_MAX_BYTES=20000")
	filler := records("fill", 40)
	for i := range filler {
		filler[i].Value = make([]byte, 200)
	}
	for _, r := range buffer.Publish(t.Context(), spill.Spilled, filler, "unavailable") {
		require.Equal(t, record.Buffered, r.Outcome)
	}
	require.Greater(t, buffer.Fill(t.Context()), MaxStreamShare)
	mr, m := newMirror(t, "127.0.0.1:1", buffer, `message.timeout.ms: 500`)
	mr.Offer(records("t", 5))
	require.NoError(t, mr.Close(t.Context()))
	assert.Equal(t, 5.0, count(m, OutcomeDropped))
	assert.Equal(t, 0.0, count(m, OutcomeSpilled))
}

// gathered is the value of the series name{labels} in reg, or -1 when
// there is none.
func gathered(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel())*2 != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if !slices.Contains(labels, l.GetName()) || labels[slices.Index(labels, l.GetName())+1] != l.GetValue() {
					continue metrics
				}
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestBreakerClosesWhenMirrorReturns: while the mirror cluster fails every
// produce with a retriable error, copies are spilled for the resender and
// the mirror's breaker opens; once the mirror is healthy again, after the
// breaker's timeout copies are mirrored again (within a bound) and the
// breaker closes. The mirror holds exactly the copies counted as mirrored,
// with their values.
func TestBreakerClosesWhenMirrorReturns(t *testing.T) {
	buffer, js := jetStream(t)
	c, addr := kafkatest.NewCluster(t)
	var failing atomic.Bool
	failing.Store(true)
	kafkatest.RefuseProduce(c, &failing, kerr.NotEnoughReplicas) // retriable: the mirror cannot take it now
	const cbTimeout = time.Second
	cfg, err := config.Parse(fmt.Appendf(nil, `
producer: {cb: {fails: 2, timeout: %s, requests: 2}}
mirrors: [{name: dr, topics: ['*'], kafka: {brokers: [%q], retries: 0, message.timeout.ms: 2000}}]`, cbTimeout, addr), nil)
	require.NoError(t, err)
	p, err := producer.New(cfg.Mirrors[0].Kafka, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	reg := prometheus.NewRegistry()
	mr := New(cfg.Mirrors[0], p, buffer, cfg.Producer.CB, NewMetrics(reg), slog.New(slog.DiscardHandler))
	t.Cleanup(func() { _ = mr.Close(context.Background()) })
	outcome := func(o string) float64 {
		return gathered(t, reg, "spillway_mirror_records_total", "mirror", "dr", "outcome", o)
	}
	state := func() float64 { return gathered(t, reg, "spillway_mirror_breaker_state", "mirror", "dr") }

	// offer hands one copy over and waits until the mirror has dealt with
	// it, and says whether it was mirrored.
	n := 0
	offer := func() bool {
		t.Helper()
		n++
		mirrored, spilled := outcome(OutcomeMirrored), outcome(OutcomeSpilled)
		mr.Offer([]record.Record{{ID: fmt.Sprintf("c%d", n), Topic: "orders", Value: fmt.Appendf(nil, "copy %d", n), Partition: record.AnyPartition, Timestamp: time.Now()}})
		require.Eventually(t, func() bool { return outcome(OutcomeMirrored)+outcome(OutcomeSpilled) == mirrored+spilled+1 }, 10*time.Second, 5*time.Millisecond)
		return outcome(OutcomeMirrored) == mirrored+1
	}
	for i := 0; state() != 2; i++ {
		require.Less(t, i, 10, "the breaker opens after 2 failed produces")
		require.False(t, offer(), "the mirror is failing: the copy is spilled")
	}
	require.False(t, offer(), "breaker open: spilled without trying the mirror")

	failing.Store(false)
	const bound = cbTimeout + 15*time.Second
	deadline := time.Now().Add(bound)
	for !offer() {
		require.True(t, time.Now().Before(deadline), "no copy was mirrored within %v of the mirror's return: the breaker never closed", bound)
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; state() != 0; i++ {
		require.Less(t, i, 10, "the breaker closes after 2 successful probes")
		require.True(t, offer(), "half-open, mirror healthy")
	}
	for range 3 {
		require.True(t, offer(), "closed")
	}
	require.NoError(t, mr.Close(t.Context()))

	mirrored, spilled := int(outcome(OutcomeMirrored)), int(outcome(OutcomeSpilled))
	t.Logf("%d copies: %d mirrored, %d spilled", n, mirrored, spilled)
	assert.Equal(t, n, mirrored+spilled)
	assert.Equal(t, 0.0, outcome(OutcomeDropped))
	got := kafkatest.Consume(t, addr, "orders", mirrored, 10*time.Second)
	require.Len(t, got, mirrored)
	for _, r := range got {
		id, _ := kafkatest.HeaderValue(r, record.IDHeader)
		assert.Equal(t, "copy "+strings.TrimPrefix(id, "c"), string(r.Value))
	}
	assert.Len(t, spilltest.Messages(t, js, "SPILLWAY", "spillway.mirror.dr.>", spilled), spilled, "the spilled copies wait for the resender")
}
