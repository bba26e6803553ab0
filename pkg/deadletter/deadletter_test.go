package deadletter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

type env struct {
	wal    config.WAL
	js     jetstream.JetStream
	buffer *spill.Buffer
	store  *Store
	listen string // the embedded server's host:port
}

// setup starts an embedded JetStream with the stream the services make.
func setup(t *testing.T) *env {
	t.Helper()
	cfg, err := config.Parse(nil, []string{"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(), "SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0"})
	require.NoError(t, err)
	srv, err := embeddednats.Start(cfg.Producer.WAL, discard)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, js, err := spill.Connect(t.Context(), cfg.Producer.WAL, srv, "test", discard)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	s, err := Open(t.Context(), js, cfg.Producer.WAL)
	require.NoError(t, err)
	u, err := url.Parse(srv.ClientURL())
	require.NoError(t, err)
	return &env{wal: cfg.Producer.WAL, js: js, buffer: spill.NewBuffer(js, cfg.Producer.WAL), store: s, listen: u.Host}
}

func rec(id, topic, key, value string) record.Record {
	return record.Record{ID: id, Topic: topic, Key: []byte(key), Value: []byte(value), Partition: record.AnyPartition}
}

// deadLetter stores recs as dead letters of kind as the drains do, with
// the Spillway-Reason header reason.
func (e *env) deadLetter(t *testing.T, kind spill.Kind, reason string, recs ...record.Record) {
	t.Helper()
	for _, r := range e.buffer.Publish(t.Context(), kind, recs, reason) {
		require.Equal(t, record.Buffered, r.Outcome, "%v", r.Err)
	}
}

// fill stores dead letters of two topics (one with a dot), two reasons, a
// mirror's, one that is not a Spillway record, and a spilled record that
// is not a dead letter.
func (e *env) fill(t *testing.T) {
	t.Helper()
	e.deadLetter(t, spill.DeadLetter, "too_large: Kafka refused the record as too large",
		rec("a1", "orders", "k1", strings.Repeat("x", 100)), rec("a2", "orders", "k2", "v2"))
	e.deadLetter(t, spill.DeadLetter, "invalid: the record's timestamp is invalid", rec("b1", "orders", "k3", "v3"))
	e.deadLetter(t, spill.DeadLetter, "too_large: Kafka refused the record as too large", rec("c1", "web.clicks", "", "v4"))
	e.deadLetter(t, spill.MirrorDeadLetter("dr"), "mirror dr: too_large: Kafka refused the record as too large", rec("m1", "orders", "k5", "v5"))
	_, err := e.js.PublishMsg(t.Context(), &nats.Msg{
		Subject: spill.Subjects{Prefix: e.wal.SubjectPrefix}.For(spill.DeadLetter, ""),
		Data:    []byte{0xff, 0xff, 0xff},
		Header:  nats.Header{spill.HeaderReason: []string{"invalid: the buffered message is not a Spillway record"}},
	})
	require.NoError(t, err)
	for _, r := range e.buffer.Publish(t.Context(), spill.Spilled, []record.Record{rec("s1", "orders", "k", "v")}, "kafka unavailable") {
		require.Equal(t, record.Buffered, r.Outcome)
	}
}

func TestSummaryCountsByTopicMirrorAndReason(t *testing.T) {
	e := setup(t)
	e.fill(t)

	counts, err := e.store.Summary(t.Context(), Filter{})
	require.NoError(t, err)
	assert.Equal(t, []Count{
		{Topic: "orders", Reason: "too_large", Count: 2},
		{Topic: "orders", Reason: "invalid", Count: 1},
		{Topic: "web.clicks", Reason: "too_large", Count: 1},
		{Topic: "orders", Mirror: "dr", Reason: "too_large", Count: 1},
		{Topic: spill.NoTopic, Reason: "invalid", Count: 1},
	}, counts)

	for name, tc := range map[string]struct {
		f    Filter
		want int
	}{
		"topic":             {Filter{Topic: "orders"}, 4},
		"topic with a dot":  {Filter{Topic: "web.clicks"}, 1},
		"reason":            {Filter{Reason: "too_large"}, 4},
		"topic and reason":  {Filter{Topic: "orders", Reason: "too_large"}, 3},
		"primary only":      {Filter{Topic: "orders", Mirror: Primary}, 3},
		"mirror":            {Filter{Mirror: "dr"}, 1},
		"mirror and topic":  {Filter{Mirror: "dr", Topic: "orders"}, 1},
		"another mirror":    {Filter{Mirror: "other"}, 0},
		"no such reason":    {Filter{Reason: "unknown_topic"}, 0},
		"all but spilled":   {Filter{}, 6},
		"primary, no topic": {Filter{Mirror: Primary}, 5},
	} {
		t.Run(name, func(t *testing.T) {
			letters, err := e.store.List(t.Context(), tc.f, 0)
			require.NoError(t, err)
			assert.Len(t, letters, tc.want)
		})
	}

	first, err := e.store.List(t.Context(), Filter{Topic: "orders"}, 1)
	require.NoError(t, err)
	require.Len(t, first, 1)
	l := first[0]
	assert.Equal(t, "a1", l.Record.ID)
	assert.Equal(t, "k1", string(l.Record.Key))
	assert.Equal(t, strings.Repeat("x", 100), string(l.Record.Value))
	assert.Equal(t, "too_large: Kafka refused the record as too large", l.Detail)
	assert.False(t, l.Time.IsZero())
}

func TestMoveBackIntoTheBuffer(t *testing.T) {
	e := setup(t)
	e.fill(t)
	subjects := spill.Subjects{Prefix: e.wal.SubjectPrefix}

	res, err := e.store.Move(t.Context(), Filter{Topic: "orders", Reason: "too_large"}, 0)
	require.NoError(t, err)
	// The primary's two and the mirror's one.
	assert.Equal(t, MoveResult{Moved: 3}, res)

	spilled := spilltest.Messages(t, e.js, e.wal.Stream, subjects.For(spill.Spilled, "orders")+".>", 3)
	require.Len(t, spilled, 3) // s1, then a1 and a2
	var ids []string
	for _, m := range spilled {
		r, err := spill.Decode(m.Data)
		require.NoError(t, err)
		ids = append(ids, r.ID)
		assert.Equal(t, "orders", r.Topic)
		if r.ID == "a1" {
			assert.Equal(t, "k1", string(r.Key))
			assert.Equal(t, strings.Repeat("x", 100), string(r.Value))
		}
	}
	assert.Equal(t, []string{"s1", "a1", "a2"}, ids)
	mirrored := spilltest.Messages(t, e.js, e.wal.Stream, subjects.For(spill.Mirror("dr"), "orders"), 1)
	require.Len(t, mirrored, 1)
	r, err := spill.Decode(mirrored[0].Data)
	require.NoError(t, err)
	assert.Equal(t, "m1", r.ID)

	// Only the moved ones left the dead letters.
	counts, err := e.store.Summary(t.Context(), Filter{})
	require.NoError(t, err)
	assert.Equal(t, []Count{
		{Topic: "orders", Reason: "invalid", Count: 1},
		{Topic: "web.clicks", Reason: "too_large", Count: 1},
		{Topic: spill.NoTopic, Reason: "invalid", Count: 1},
	}, counts)

	// -n caps; the message that is not a record is skipped and stays.
	res, err = e.store.Move(t.Context(), Filter{Reason: "invalid"}, 0)
	require.NoError(t, err)
	assert.Equal(t, MoveResult{Moved: 1, Skipped: 1}, res)
	res, err = e.store.Move(t.Context(), Filter{}, 1)
	require.NoError(t, err)
	assert.Equal(t, MoveResult{Moved: 1}, res)
	left, err := e.store.List(t.Context(), Filter{}, 0)
	require.NoError(t, err)
	require.Len(t, left, 1)
	assert.Error(t, left[0].Err)
}

// TestMoveAgainAfterACrashStoresOneCopy: a move that stored the copy and
// died before deleting the dead letter, run again within the duplicate
// window, leaves one copy in the buffer and no dead letter.
func TestMoveAgainAfterACrashStoresOneCopy(t *testing.T) {
	e := setup(t)
	e.deadLetter(t, spill.DeadLetter, "too_large: x", rec("a1", "orders", "k1", "v1"))
	subjects := spill.Subjects{Prefix: e.wal.SubjectPrefix}
	letters, err := e.store.List(t.Context(), Filter{}, 0)
	require.NoError(t, err)
	require.Len(t, letters, 1)
	require.NoError(t, e.store.publishCopy(t.Context(), letters[0], subjects.For(spill.Spilled, "orders"))) // then the crash

	res, err := e.store.Move(t.Context(), Filter{Topic: "orders"}, 0)
	require.NoError(t, err)
	assert.Equal(t, MoveResult{Moved: 1}, res)
	assert.Len(t, spilltest.Messages(t, e.js, e.wal.Stream, subjects.All(spill.Spilled), 1), 1)
	left, err := e.store.List(t.Context(), Filter{}, 0)
	require.NoError(t, err)
	assert.Empty(t, left)
}

// TestMovedAgainAfterFailingAgain: a record moved back before its cause
// was fixed comes back as a new dead letter (with the moved copy's id and
// "-dlq", as the drains do); moved again within the duplicate window, it
// is stored again, not taken for a duplicate and lost.
func TestMovedAgainAfterFailingAgain(t *testing.T) {
	e := setup(t)
	e.deadLetter(t, spill.DeadLetter, "too_large: x", rec("a1", "orders", "k1", "v1"))
	subjects := spill.Subjects{Prefix: e.wal.SubjectPrefix}
	res, err := e.store.Move(t.Context(), Filter{Topic: "orders"}, 0)
	require.NoError(t, err)
	require.Equal(t, MoveResult{Moved: 1}, res)

	copies := spilltest.Messages(t, e.js, e.wal.Stream, subjects.All(spill.Spilled), 1)
	require.Len(t, copies, 1)
	_, err = e.js.PublishMsg(t.Context(), &nats.Msg{
		Subject: subjects.For(spill.DeadLetter, "orders"),
		Data:    copies[0].Data,
		Header: nats.Header{
			spill.HeaderReason: []string{"too_large: x"},
			spill.HeaderTopic:  []string{"orders"},
			nats.MsgIdHdr:      []string{copies[0].Header.Get(nats.MsgIdHdr) + "-dlq"},
		},
	})
	require.NoError(t, err)
	res, err = e.store.Move(t.Context(), Filter{Topic: "orders"}, 0)
	require.NoError(t, err)
	require.Equal(t, MoveResult{Moved: 1}, res)
	assert.Len(t, spilltest.Messages(t, e.js, e.wal.Stream, subjects.All(spill.Spilled), 2), 2)
}

// TestMoveRefusedKeepsTheDeadLetter: when the buffer refuses the copy (it
// is full), the dead letter stays and the error says so.
func TestMoveRefusedKeepsTheDeadLetter(t *testing.T) {
	e := setup(t)
	e.deadLetter(t, spill.DeadLetter, "too_large: x", rec("a1", "orders", "k1", "v1"), rec("a2", "orders", "k2", "v2"))
	s, err := e.js.Stream(t.Context(), e.wal.Stream)
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	cfg := info.Config
	cfg.MaxBytes = int64(info.State.Bytes) // full: the stream refuses anything new
	_, err = e.js.UpdateStream(t.Context(), cfg)
	require.NoError(t, err)

	res, err := e.store.Move(t.Context(), Filter{Topic: "orders"}, 0)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "it stays a dead letter")
	assert.Equal(t, MoveResult{}, res)
	left, err := e.store.List(t.Context(), Filter{}, 0)
	require.NoError(t, err)
	assert.Len(t, left, 2)
}

func TestGaugeCountsHeldDeadLetters(t *testing.T) {
	e := setup(t)
	e.fill(t)
	reg := prometheus.NewRegistry()
	g := NewGauge(reg, 100)
	require.NoError(t, g.Refresh(t.Context(), e.store))
	want := func(topic, mirror string, n float64) {
		t.Helper()
		assert.Equal(t, n, testutil.ToFloat64(g.held.WithLabelValues(topic, mirror)), "topic %q mirror %q", topic, mirror)
	}
	want("orders", "", 3)
	want("orders", "dr", 1)
	want("web.clicks", "", 1)
	want(spill.NoTopic, "", 1)
	assert.Equal(t, 6.0, sumGauge(t, reg)) // the spilled record is not counted

	// Capped at one topic label: the others are counted as "other".
	capped := prometheus.NewRegistry()
	require.NoError(t, NewGauge(capped, 1).Refresh(t.Context(), e.store))
	assert.Equal(t, 6.0, sumGauge(t, capped))
	assert.LessOrEqual(t, testutil.CollectAndCount(capped, "spillway_dead_letters"), 3) // one topic and "other", by two mirrors at most

	_, err := e.store.Move(t.Context(), Filter{Topic: "orders"}, 0)
	require.NoError(t, err)
	require.NoError(t, g.Refresh(t.Context(), e.store))
	want("orders", "", 0) // a series once set goes to 0 rather than vanish
	want("orders", "dr", 0)
	want("web.clicks", "", 1)
	assert.Equal(t, 2.0, sumGauge(t, reg))
}

func sumGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "spillway_dead_letters" {
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// command runs the dead-letters command against e's server.
func (e *env) command(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	// As an operator runs it beside the ingest: the same configuration,
	// whose producer.wal.path holds the embedded server's credentials.
	code = Command("spillway-resender", args, []string{"SPILLWAY_PRODUCER_WAL_LISTEN=" + e.listen, "SPILLWAY_PRODUCER_WAL_PATH=" + e.wal.Path}, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCommand(t *testing.T) {
	e := setup(t)
	e.fill(t)

	code, out, errOut := e.command(t, "list")
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, `TOPIC       MIRROR  REASON     COUNT
orders      -       too_large  2
orders      -       invalid    1
web.clicks  -       too_large  1
orders      dr      too_large  1
_unknown    -       invalid    1
6 dead letters
`, out)

	code, out, errOut = e.command(t, "list", "-json", "-topic", "web.clicks")
	require.Equal(t, 0, code, errOut)
	assert.JSONEq(t, `[{"topic":"web.clicks","reason":"too_large","count":1}]`, out)

	code, out, errOut = e.command(t, "show", "-topic", "orders", "-n", "1")
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `^seq \d+  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  topic orders  reason too_large
  id:     a1
  why:    too_large: Kafka refused the record as too large
  key:    "k1"
  value:  "x{40}…" \(100 bytes\)
$`, out)

	code, out, errOut = e.command(t, "show", "-json", "-topic", "web.clicks")
	require.Equal(t, 0, code, errOut)
	var shownJSON []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &shownJSON))
	require.Len(t, shownJSON, 1)
	assert.Equal(t, "c1", shownJSON[0]["id"])
	assert.Equal(t, "", shownJSON[0]["key"]) // an empty key, not a null one
	assert.Equal(t, "v4", shownJSON[0]["value_preview"])

	code, _, errOut = e.command(t, "move")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "say which dead letters: -topic, -reason, or -all")
	code, _, errOut = e.command(t, "purge")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "list|show|move")

	code, out, errOut = e.command(t, "move", "-topic", "orders", "-mirror", "-")
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, "3 dead letters moved back into the buffer; the resender delivers them\n", out)
	code, out, errOut = e.command(t, "move", "-all", "-json")
	require.Equal(t, 0, code, errOut)
	assert.JSONEq(t, `{"moved":2,"skipped":1}`, out)
	code, out, _ = e.command(t, "list")
	require.Equal(t, 0, code)
	assert.True(t, strings.HasSuffix(out, "1 dead letters\n"), out)
}

// Without the embedded server's credentials file the command is refused
// by the server: reading and deleting dead letters needs the credentials.
func TestCommandWithoutCredentials(t *testing.T) {
	e := setup(t)
	e.fill(t)
	for name, env := range map[string][]string{
		"another store":  {"SPILLWAY_PRODUCER_WAL_LISTEN=" + e.listen, "SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir()},
		"no credentials": {"SPILLWAY_PRODUCER_WAL_NATS_URLS=nats://" + e.listen},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Command("spillway-resender", []string{"move", "-all"}, env, &out, &errOut)
			assert.Equal(t, 1, code, out.String())
			assert.Empty(t, out.String())
			assert.Regexp(t, `credentials|Authorization Violation`, errOut.String())
		})
	}
	code, out, errOut := e.command(t, "list", "-json", "-topic", "web.clicks")
	require.Equal(t, 0, code, errOut)
	assert.JSONEq(t, `[{"topic":"web.clicks","reason":"too_large","count":1}]`, out, "nothing was moved")
}

func TestCommandWithoutJetStream(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Command("spillway-resender", []string{"list"}, []string{"SPILLWAY_PRODUCER_WAL_NATS_URLS=nats://127.0.0.1:1"}, &out, &errOut)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut.String(), "connect to NATS at nats://127.0.0.1:1")
}

func TestReasonCode(t *testing.T) {
	for _, tc := range []struct{ header, mirror, want string }{
		{"too_large: Kafka refused the record as too large", "", "too_large"},
		{"mirror dr: too_large: Kafka refused", "dr", "too_large"},
		{"invalid: the buffered message is not a Spillway record: proto: x", "", "invalid"},
		{"", "", "unknown"},
		{"something went wrong", "", "unknown"},
	} {
		t.Run(fmt.Sprintf("%q", tc.header), func(t *testing.T) {
			assert.Equal(t, tc.want, ReasonCode(tc.header, tc.mirror))
		})
	}
}
