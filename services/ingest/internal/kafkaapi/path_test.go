package kafkaapi_test

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/spilltest"
	"github.com/spillway/spillway/pkg/telemetry"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// traceparents returns the values of r's traceparent headers.
func traceparents(r *kgo.Record) []string {
	var out []string
	for _, h := range r.Headers {
		if strings.EqualFold(h.Key, "traceparent") {
			out = append(out, string(h.Value))
		}
	}
	return out
}

// TestTraceparentThroughTheListener: a record produced through the
// listener with a traceparent header continues the client's trace. With
// spans exported, the ingest's send span is in the client's trace, a
// child of the client's span, and the record in Kafka carries that span's
// context; without an exporter the record carries the client's context
// as it was. A record without traceparent is not put in the client's
// trace.
func TestTraceparentThroughTheListener(t *testing.T) {
	const clientTrace, clientSpan = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	clientTP := "00-" + clientTrace + "-" + clientSpan + "-01"
	for _, exporting := range []bool{true, false} {
		t.Run(fmt.Sprintf("exporting=%v", exporting), func(t *testing.T) {
			_, addr := kafkatest.NewCluster(t)
			kafkatest.CreateTopic(t, addr, "traced", 1)
			spans := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
			t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
			in := ingesttest.StartTraced(t, addr, &telemetry.Tracing{Provider: tp, Propagators: propagation.TraceContext{}, Exporting: exporting})
			cl := kgoClient(t, in.Kafka)

			withTrace := &kgo.Record{Topic: "traced", Key: []byte("with"), Value: []byte("traced"),
				Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte(clientTP)}, {Key: "source", Value: []byte("shop")}}}
			without := &kgo.Record{Topic: "traced", Key: []byte("without"), Value: []byte("plain")}
			require.NoError(t, cl.ProduceSync(t.Context(), withTrace, without).FirstErr())

			got := kafkatest.Consume(t, addr, "traced", 2, 10*time.Second)
			byKey := map[string]*kgo.Record{}
			for _, r := range got {
				byKey[string(r.Key)] = r
			}
			require.Contains(t, byKey, "with")
			require.Contains(t, byKey, "without")
			assert.Equal(t, "shop", headers(byKey["with"])["source"], "the other headers are kept")
			tps := traceparents(byKey["with"])
			require.Len(t, tps, 1, "one traceparent header in Kafka: %q", tps)
			parts := strings.Split(tps[0], "-")
			require.Len(t, parts, 4, "traceparent %q", tps[0])
			assert.Equal(t, clientTrace, parts[1], "the record in Kafka is in the client's trace")
			for _, tp := range traceparents(byKey["without"]) {
				assert.NotContains(t, tp, clientTrace, "a record without traceparent is not put in the client's trace")
			}

			if !exporting {
				assert.Equal(t, clientTP, tps[0], "no span of the ingest's: the client's context as it was")
				return
			}
			var send sdktrace.ReadOnlySpan
			for _, s := range spans.Ended() {
				if s.Name() == "send traced" && s.SpanContext().TraceID().String() == clientTrace {
					send = s
				}
			}
			require.NotNil(t, send, "a send span in the client's trace")
			assert.Equal(t, trace.SpanKindProducer, send.SpanKind())
			assert.Equal(t, clientSpan, send.Parent().SpanID().String(), "a child of the client's span")
			assert.True(t, send.Parent().IsRemote(), "the parent came from the record's header")
			assert.Equal(t, send.SpanContext().SpanID().String(), parts[2], "the record in Kafka carries the send span")
			id, _ := kafkatest.HeaderValue(byKey["with"], "spillway-id")
			var attr string
			for _, kv := range send.Attributes() {
				if kv.Key == "messaging.message.id" {
					attr = kv.Value.AsString()
				}
			}
			assert.Equal(t, id, attr, "the span names the record")
		})
	}
}

// TestMirrorThroughTheListener: with a mirror of "orders" configured, the
// records a Kafka client produces through the listener are in the primary
// and in the mirror cluster with their key, value and headers (the
// spillway-id too); a topic the mirror does not take is not copied.
func TestMirrorThroughTheListener(t *testing.T) {
	_, primary := kafkatest.NewCluster(t)
	_, mirrorAddr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, primary, "orders", 3)
	kafkatest.CreateTopic(t, primary, "private", 1)
	in := ingesttest.StartYAML(t, primary, `
mirrors:
  - name: dr
    topics: ["orders"]
    kafka: {brokers: ["`+mirrorAddr+`"]}
`)
	cl := kgoClient(t, in.Kafka)
	var sent []*kgo.Record
	for i := range 4 {
		sent = append(sent, &kgo.Record{Topic: "orders", Key: fmt.Appendf(nil, "k%d", i), Value: []byte{0, byte(i), 0xff, 'v'},
			Headers: []kgo.RecordHeader{{Key: "source", Value: []byte("shop")}, {Key: "n", Value: fmt.Appendf(nil, "%d", i)}}})
	}
	require.NoError(t, cl.ProduceSync(t.Context(), sent...).FirstErr())
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "private", Value: []byte("not mirrored")}).FirstErr())

	byKey := func(rs []*kgo.Record) map[string]*kgo.Record {
		out := map[string]*kgo.Record{}
		for _, r := range rs {
			out[string(r.Key)] = r
		}
		return out
	}
	inPrimary := byKey(kafkatest.Consume(t, primary, "orders", 4, 10*time.Second))
	inMirror := byKey(kafkatest.Consume(t, mirrorAddr, "orders", 4, 10*time.Second))
	for i, s := range sent {
		p, m := inPrimary[string(s.Key)], inMirror[string(s.Key)]
		require.NotNil(t, p, "record %d not in the primary", i)
		require.NotNil(t, m, "record %d not in the mirror", i)
		assert.Equal(t, s.Value, p.Value, "record %d in the primary", i)
		assert.Equal(t, s.Value, m.Value, "record %d in the mirror", i)
		h := headers(m)
		assert.Equal(t, "shop", h["source"], "record %d in the mirror", i)
		assert.Equal(t, fmt.Sprint(i), h["n"], "record %d in the mirror", i)
		assert.NotEmpty(t, h["spillway-id"])
		assert.Equal(t, p.Headers, m.Headers, "record %d: the copy's headers are the primary's, spillway-id included", i)
	}
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_mirror_records_total{mirror="dr",outcome="mirrored"}`) == 4
	}, 10*time.Second, 20*time.Millisecond, "the 4 orders are mirrored; private is not")
	assert.Equal(t, 0.0, ingesttest.Metric(t, in.Monitor, `spillway_mirror_queued_records{mirror="dr"}`))
	assert.Len(t, kafkatest.Consume(t, primary, "private", 1, 10*time.Second), 1)
}

// TestFullBufferIsRetriable: with Kafka cut off, records produced through
// the listener are buffered (offset -1) until the JetStream buffer is
// full; then the Kafka client gets NOT_ENOUGH_REPLICAS, a retriable
// error, with "the buffer is full" as the partition's message, not a
// success. The buffer holds exactly the acknowledged records and none of
// the refused ones. Once Kafka is back, the client's own retries of a
// record refused meanwhile succeed, and it is in Kafka once.
func TestFullBufferIsRetriable(t *testing.T) {
	k := kafkatest.NewCuttable(t)
	kafkatest.CreateTopic(t, k.Addr, "full", 1)
	// producer.order none: with partition order the retried record would
	// rightly wait behind partition 0's backlog, which no resender drains
	// here.
	in := ingesttest.Start(t, k.Addr, "SPILLWAY_PRODUCER_WAL_MAX_BYTES=4000", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000",
		"SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1s", "SPILLWAY_PRODUCER_ORDER=none")
	// kgo asks for metadata again before it retries a retriable error, at
	// most every MetadataMinAge (5 s by default).
	cl := kgoClient(t, in.Kafka, kgo.RecordRetries(2), kgo.MetadataMinAge(50*time.Millisecond))
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "full", Value: []byte("before")}).FirstErr())

	k.Cut()
	var acked []string
	refused := ""
	for i := 0; i < 100 && refused == ""; i++ {
		v := fmt.Sprintf("%03d %s", i, strings.Repeat("x", 300))
		r := &kgo.Record{Topic: "full", Key: fmt.Appendf(nil, "k%d", i), Value: []byte(v)}
		err := cl.ProduceSync(t.Context(), r).FirstErr()
		if err == nil {
			require.Equal(t, int64(-1), r.Offset, "record %d: acknowledged while Kafka is cut off, so buffered", i)
			acked = append(acked, v)
			continue
		}
		var ke *kerr.Error
		require.True(t, errors.As(err, &ke), "record %d: %v", i, err)
		require.Equal(t, kerr.NotEnoughReplicas.Code, ke.Code, "record %d: %v", i, err)
		assert.True(t, kerr.IsRetriable(err), "a full buffer is a retriable error")
		refused = v
	}
	require.NotEmpty(t, refused, "100 records of 300 bytes buffered in a stream of 4000 bytes, none refused")
	require.GreaterOrEqual(t, len(acked), 3, "a stream of 4000 bytes holds several records of 300 bytes")
	failed := ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="buffer_full",topic="full"}`)
	assert.Equal(t, 3.0, failed, "kgo's try and its 2 retries")

	// The partition's answer names the cause.
	resp := rawProduce(t, in.Kafka, "full", &kmsg.Record{Value: []byte("raw " + strings.Repeat("x", 300))})
	p := resp.Topics[0].Partitions[0]
	assert.Equal(t, kerr.NotEnoughReplicas.Code, p.ErrorCode)
	require.NotNil(t, p.ErrorMessage)
	assert.Contains(t, *p.ErrorMessage, "the buffer is full")
	assert.Equal(t, int64(-1), p.BaseOffset)
	failed++

	nc := spilltest.Connect(t, "nats://"+in.App.NATSAddr(), in.App.NATSCredentials())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	buffered := func() []string {
		var out []string
		for _, m := range spilltest.Messages(t, js, "SPILLWAY", "spillway.>", len(acked)) {
			rec, err := spill.Decode(m.Data)
			require.NoError(t, err)
			out = append(out, string(rec.Value))
		}
		sort.Strings(out)
		return out
	}
	sort.Strings(acked)
	require.Equal(t, acked, buffered(), "the buffer holds every acknowledged record and no refused one")

	// A client that keeps retrying: refused while the buffer is full and
	// Kafka cut off, it succeeds once Kafka is back.
	retrier := kgoClient(t, in.Kafka, kgo.RecordRetries(math.MaxInt32), kgo.RecordDeliveryTimeout(30*time.Second), kgo.MetadataMinAge(50*time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 100 * time.Millisecond }))
	retried := &kgo.Record{Topic: "full", Key: []byte("retried"), Value: []byte(refused)}
	done := make(chan error, 1)
	go func() { done <- retrier.ProduceSync(t.Context(), retried).FirstErr() }()
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="buffer_full",topic="full"}`) > failed
	}, 10*time.Second, 20*time.Millisecond, "the retrying client is refused while the buffer is full")
	k.Restore()
	select {
	case err := <-done:
		require.NoError(t, err, "the retried produce succeeds once Kafka is back")
	case <-time.After(40 * time.Second):
		t.Fatal("the retried produce was not answered")
	}
	assert.GreaterOrEqual(t, retried.Offset, int64(1), "delivered to Kafka after the record before the cut, not buffered")

	got := kafkatest.Consume(t, k.Addr, "full", 2, 10*time.Second)
	values := map[string]string{}
	for _, r := range got {
		values[string(r.Key)] = string(r.Value)
	}
	assert.Equal(t, map[string]string{"": "before", "retried": refused}, values, "Kafka holds the record before the cut and the retried one, once")
	assert.Equal(t, acked, buffered(), "the buffered records wait in the buffer for the resender")
}
