package kafkaapi_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/spilltest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestBufferFailsMidway: with Kafka cut off, an idempotent batch of 20
// records of 300 bytes fills the buffer (a stream of 4000 bytes) midway:
// its first records are buffered, the others refused. The partition is
// answered NOT_ENOUGH_REPLICAS (retriable), and the records stored are
// counted in spillway_records_possible_duplicates_total. Once Kafka is
// back, the client's retry of the same batch (same producer id, epoch
// and sequences) sends only the records not stored and is answered
// success, offset -1 (part is buffered): the buffer and Kafka together
// hold each of the 20 exactly once. (Before, the retry stored the
// buffered part again, and nothing was counted.) With producer.order
// none: under partition, the rest would rightly wait behind the buffered
// part, and no resender runs here.
func TestBufferFailsMidway(t *testing.T) {
	k := kafkatest.NewCuttable(t)
	kafkatest.CreateTopic(t, k.Addr, "half", 1)
	in := ingesttest.Start(t, k.Addr, "SPILLWAY_PRODUCER_WAL_MAX_BYTES=4000", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000",
		"SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1s", "SPILLWAY_PRODUCER_ORDER=none")
	cl := kgoClient(t, in.Kafka)
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "half", Value: []byte("before")}).FirstErr())
	const (
		pid = 1 << 41
		n   = 20
	)
	tag := strings.Repeat("x", 300)
	short := func(v string) string { return strings.TrimPrefix(v, tag) } // "-<i>"

	k.Cut()
	first := idempotentProduce(t, cl, "half", pid, 0, 0, tag, n)
	require.Equal(t, kerr.NotEnoughReplicas.Code, first.ErrorCode, "the buffer failed midway: %v", kerr.ErrorForCode(first.ErrorCode))
	assert.Equal(t, int64(-1), first.BaseOffset)
	require.NotEmpty(t, first.ErrorRecords, "the first record not stored is named")

	nc := spilltest.Connect(t, "nats://"+in.App.NATSAddr(), in.App.NATSCredentials())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	buffered := func() []string {
		var out []string
		for _, m := range spilltest.Messages(t, js, "SPILLWAY", "spillway.>", 1) {
			rec, err := spill.Decode(m.Data)
			require.NoError(t, err)
			out = append(out, short(string(rec.Value)))
		}
		return out
	}
	inBuffer := buffered()
	require.NotEmpty(t, inBuffer, "some of the batch buffered")
	require.Less(t, len(inBuffer), n, "not all of the batch buffered: a stream of 4000 bytes")
	assert.Equal(t, float64(len(inBuffer)), ingesttest.Metric(t, in.Monitor, `spillway_records_possible_duplicates_total{topic="half"}`),
		"the records stored of a partition answered with an error")
	assert.Equal(t, int32(len(inBuffer)), first.ErrorRecords[0].RelativeOffset, "the first record not stored")

	k.Restore()
	// The client's retry, until Kafka takes the rest (the breaker closes
	// within a second of Kafka's return; until then the rest fails again).
	deadline := time.Now().Add(30 * time.Second)
	retry := idempotentProduce(t, cl, "half", pid, 0, 0, tag, n)
	for retry.ErrorCode != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		retry = idempotentProduce(t, cl, "half", pid, 0, 0, tag, n)
	}
	require.Equal(t, int16(0), retry.ErrorCode, "the retry: %v", kerr.ErrorForCode(retry.ErrorCode))
	assert.Equal(t, int64(-1), retry.BaseOffset, "part of the batch is buffered: no offset")

	got := kafkatest.Consume(t, k.Addr, "half", 1+n-len(inBuffer), 10*time.Second)
	var all []string
	for _, r := range got {
		if string(r.Value) != "before" {
			all = append(all, short(string(r.Value)))
		}
	}
	assert.Equal(t, inBuffer, buffered(), "the retry stored nothing again in the buffer")
	all = append(all, inBuffer...)
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("-%d", i)
	}
	sort.Strings(all)
	sort.Strings(want)
	assert.Equal(t, want, all, "Kafka and the buffer hold each record of the batch exactly once")
	assert.Equal(t, float64(len(inBuffer)), ingesttest.Metric(t, in.Monitor, `spillway_records_possible_duplicates_total{topic="half"}`),
		"the retry stored no record twice")
}
