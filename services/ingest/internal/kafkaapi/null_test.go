package kafkaapi_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/drain"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/spill/spilltest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// nullCases are records whose key and value are null (nil), empty or
// set, named by their "case" header.
func nullCases(topic, phase string) []*kgo.Record {
	rec := func(name string, key, value []byte) *kgo.Record {
		return &kgo.Record{Topic: topic, Key: key, Value: value, Headers: []kgo.RecordHeader{{Key: "case", Value: []byte(phase + " " + name)}}}
	}
	return []*kgo.Record{
		rec("tombstone", []byte("k"), nil),
		rec("null key and value", nil, nil),
		rec("empty key and value", []byte{}, []byte{}),
		rec("null key", nil, []byte("v")),
	}
}

// resend runs a resender over the ingest's buffer into the Kafka at addr
// until the test ends.
func resend(t *testing.T, in *ingesttest.Ingest, addr string) {
	t.Helper()
	cfg, err := config.Parse(nil, []string{"SPILLWAY_KAFKA_BROKERS=" + addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000"})
	require.NoError(t, err)
	nc := spilltest.Connect(t, "nats://"+in.App.NATSAddr(), in.App.NATSCredentials())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := producer.New(cfg.Kafka, logger)
	require.NoError(t, err)
	d, err := drain.New(t.Context(), drain.Options{JS: js, WAL: cfg.Producer.WAL, Kind: drain.Resender.Kind, Consumer: drain.Resender.Name,
		Producer: p, Breaker: cfg.Producer.CB, BatchSize: 100, Metrics: drain.NewMetrics(prometheus.NewRegistry(), 100), Logger: logger})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; _ = p.Close() })
}

// TestNullStaysNull: a record produced through the listener with a null
// value (a tombstone, which deletes its key on a compacted topic) or a
// null key is in Kafka with a null value or key, and one with an empty
// key and value with empty ones; both when Kafka takes them at once and
// when they are buffered while Kafka is cut off and a resender delivers
// them later.
func TestNullStaysNull(t *testing.T) {
	k := kafkatest.NewCuttable(t)
	kafkatest.CreateTopic(t, k.Addr, "compacted", 1)
	in := ingesttest.Start(t, k.Addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1")
	cl := kgoClient(t, in.Kafka)

	direct := nullCases("compacted", "direct")
	require.NoError(t, cl.ProduceSync(t.Context(), direct...).FirstErr())
	k.Cut()
	buffered := nullCases("compacted", "buffered")
	require.NoError(t, cl.ProduceSync(t.Context(), buffered...).FirstErr())
	for _, r := range buffered {
		require.Equal(t, int64(-1), r.Offset, "buffered while Kafka is cut off: %v", r.Headers)
	}
	k.Restore()
	resend(t, in, k.Addr)

	sent := append(direct, buffered...)
	got := kafkatest.Consume(t, k.Addr, "compacted", len(sent), 20*time.Second)
	byCase := map[string]*kgo.Record{}
	for _, r := range got {
		c, _ := kafkatest.HeaderValue(r, "case")
		byCase[c] = r
	}
	for _, s := range sent {
		c := string(s.Headers[0].Value)
		r := byCase[c]
		require.NotNil(t, r, "%s: not in Kafka", c)
		assert.Equal(t, s.Value == nil, r.Value == nil, "%s: value null in Kafka", c)
		assert.Equal(t, s.Key == nil, r.Key == nil, "%s: key null in Kafka", c)
		assert.Equal(t, string(s.Value), string(r.Value), c)
		assert.Equal(t, string(s.Key), string(r.Key), c)
	}
}
