package spill_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func walConfig(t *testing.T, env ...string) config.WAL {
	t.Helper()
	c, err := config.Parse(nil, append([]string{"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(), "SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0"}, env...))
	require.NoError(t, err)
	return c.Producer.WAL
}

func startBuffer(t *testing.T, c config.WAL) (*spill.Buffer, jetstream.JetStream, func()) {
	t.Helper()
	srv, err := embeddednats.Start(c, discard)
	require.NoError(t, err)
	nc, js, err := spill.Connect(t.Context(), c, srv, "test", discard)
	require.NoError(t, err)
	stop := func() { nc.Close(); srv.Shutdown(); srv.WaitForShutdown() }
	t.Cleanup(stop)
	return spill.NewBuffer(js, c), js, stop
}

func TestPublishAndDecode(t *testing.T) {
	c := walConfig(t)
	b, js, _ := startBuffer(t, c)
	ts := time.UnixMilli(1700000000789).UTC()
	recs := []record.Record{
		{ID: "id-1", Topic: "orders.eu", Key: []byte("k"), Value: []byte{0, 1}, Headers: []record.Header{{Key: "h", Value: []byte("v")}}, Partition: 2, Timestamp: ts},
		{ID: "id-2", Topic: "orders.eu", Key: []byte{}, Value: []byte{}, Partition: record.AnyPartition},
		{ID: "id-3", Topic: "orders.eu", Value: nil, Partition: record.AnyPartition},
	}
	res := b.Publish(t.Context(), spill.Spilled, recs, "unavailable")
	for _, r := range res {
		require.Equal(t, record.Buffered, r.Outcome, r.Err)
	}

	var got []record.Record
	for _, m := range spilltest.Messages(t, js, c.Stream, spill.Subjects{c.SubjectPrefix}.All(spill.Spilled), 3) {
		want := "spillway.spill.orders%2Eeu.k197" // the lane token: the partition, or the key hash's lane
		if len(got) == 0 {
			want = "spillway.spill.orders%2Eeu.2"
		}
		assert.Equal(t, want, m.Subject)
		r, err := spill.Decode(m.Data)
		require.NoError(t, err)
		got = append(got, r)
	}
	require.Len(t, got, 3)
	assert.Equal(t, recs[0], got[0])
	assert.NotNil(t, got[1].Key, "an empty key stays empty, not null")
	assert.Empty(t, got[1].Key)
	assert.NotNil(t, got[1].Value, "an empty value stays empty, not a tombstone")
	assert.Empty(t, got[1].Value)
	assert.Equal(t, record.AnyPartition, got[1].Partition)
	assert.Nil(t, got[2].Key)
	assert.Nil(t, got[2].Value, "a tombstone stays a tombstone")
}

func TestDuplicateIDIsStoredOnce(t *testing.T) {
	c := walConfig(t)
	b, js, _ := startBuffer(t, c)
	rec := []record.Record{{ID: "same", Topic: "t", Value: []byte("x"), Partition: record.AnyPartition}}
	require.Equal(t, record.Buffered, b.Publish(t.Context(), spill.WriteAhead, rec, "write_ahead")[0].Outcome)
	require.Equal(t, record.Buffered, b.Publish(t.Context(), spill.WriteAhead, rec, "write_ahead")[0].Outcome)
	s, err := js.Stream(t.Context(), c.Stream)
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	assert.EqualValues(t, 1, info.State.Msgs)
}

func TestFullStreamRefuses(t *testing.T) {
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_MAX_BYTES=2000")
	b, _, _ := startBuffer(t, c)
	var last record.Result
	for i := range 100 {
		last = b.Publish(t.Context(), spill.Spilled, []record.Record{{ID: string(rune('a'+i%26)) + time.Now().String(), Topic: "t", Value: make([]byte, 200), Partition: record.AnyPartition}}, "unavailable")[0]
		if last.Outcome == record.Failed {
			break
		}
	}
	require.Equal(t, record.Failed, last.Outcome)
	assert.Equal(t, record.ReasonBufferFull, record.ReasonOf(last.Err), last.Err)
}

func TestUnavailableBuffer(t *testing.T) {
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_PUBLISH_TIMEOUT=500ms")
	b, _, stop := startBuffer(t, c)
	stop()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	res := b.Publish(ctx, spill.Spilled, []record.Record{{ID: "x", Topic: "t", Value: []byte("x"), Partition: record.AnyPartition}}, "unavailable")
	require.Equal(t, record.Failed, res[0].Outcome)
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(res[0].Err), res[0].Err)
}

// TestPublishHeadersAndSubjects: in one batch of several topics, each
// message has its own topic's subject and its record's id as the
// JetStream message id (a mirror's copy and a dead letter their own). A
// record on its way to Kafka has no other header (its topic and trace
// context are in the record); a dead letter has its topic, reason and
// trace context as headers too, for a person reading it.
func TestPublishHeadersAndSubjects(t *testing.T) {
	c := walConfig(t)
	b, js, _ := startBuffer(t, c)
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	recs := []record.Record{
		{ID: "a1", Topic: "a", Value: []byte("1"), Partition: record.AnyPartition,
			Headers: []record.Header{{Key: "traceparent", Value: []byte(tp)}, {Key: "other", Value: []byte("x")}}},
		{ID: "b1", Topic: "b.x", Value: []byte("2"), Partition: record.AnyPartition},
		{ID: "a2", Topic: "a", Value: []byte("3"), Partition: record.AnyPartition},
	}
	for _, r := range b.Publish(t.Context(), spill.Spilled, recs, "breaker_open") {
		require.Equal(t, record.Buffered, r.Outcome, r.Err)
	}
	for _, r := range b.Publish(t.Context(), spill.DeadLetter, recs[:2], "too_large: over the limit") {
		require.Equal(t, record.Buffered, r.Outcome, r.Err)
	}
	for _, r := range b.Publish(t.Context(), spill.Mirror("dr"), recs[2:], "unavailable") {
		require.Equal(t, record.Buffered, r.Outcome, r.Err)
	}
	msgs := spilltest.Messages(t, js, c.Stream, "spillway.>", 6)
	require.Len(t, msgs, 6)
	type stored struct {
		subject, id, value string
		headers            int
		topic, reason, tp  string
	}
	var got []stored
	for _, m := range msgs {
		r, err := spill.Decode(m.Data)
		require.NoError(t, err)
		got = append(got, stored{m.Subject, m.Header.Get("Nats-Msg-Id"), string(r.Value), len(m.Header),
			m.Header.Get(spill.HeaderTopic), m.Header.Get(spill.HeaderReason), m.Header.Get("traceparent")})
	}
	assert.Equal(t, []stored{
		{"spillway.spill.a.k197", "a1", "1", 1, "", "", ""},
		{"spillway.spill.b%2Ex.k197", "b1", "2", 1, "", "", ""},
		{"spillway.spill.a.k197", "a2", "3", 1, "", "", ""},
		{"spillway.dlq.a", "dlq:a1", "1", 4, "a", "too_large: over the limit", tp},
		{"spillway.dlq.b%2Ex", "dlq:b1", "2", 3, "b.x", "too_large: over the limit", ""},
		{"spillway.mirror.dr.a", "mirror.dr:a2", "3", 1, "", "", ""},
	}, got)
	r, err := spill.Decode(msgs[0].Data)
	require.NoError(t, err)
	assert.Equal(t, recs[0].Headers, r.Headers, "the trace context travels in the record")
}

// TestPublishRefusesRecordItCannotEncode: a record whose topic is not
// UTF-8 fails as invalid; the others of its batch are buffered.
func TestPublishRefusesRecordItCannotEncode(t *testing.T) {
	c := walConfig(t)
	b, _, _ := startBuffer(t, c)
	res := b.Publish(t.Context(), spill.Spilled, []record.Record{
		{ID: "ok1", Topic: "t", Value: []byte("1"), Partition: record.AnyPartition},
		{ID: "bad", Topic: "t\xff", Value: []byte("2"), Partition: record.AnyPartition},
		{ID: "ok2", Topic: "t", Value: []byte("3"), Partition: record.AnyPartition},
	}, "unavailable")
	assert.Equal(t, record.Buffered, res[0].Outcome, res[0].Err)
	assert.Equal(t, record.Failed, res[1].Outcome)
	assert.Equal(t, record.ReasonInvalid, record.ReasonOf(res[1].Err))
	assert.Equal(t, "cannot encode the record for the buffer", record.ClientMessage(res[1].Err))
	assert.Equal(t, record.Buffered, res[2].Outcome, res[2].Err)
}
