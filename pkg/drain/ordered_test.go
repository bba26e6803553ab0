package drain

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// keyed makes n records of topic spread over keys, each value "KEY:SEQ"
// with SEQ the key's own count, in the order a client of each key sent
// them (interleaved across keys).
func keyed(topic string, keys, n int, partition int32) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		k := i % keys
		out[i] = record.Record{ID: fmt.Sprintf("%s-%d", topic, i), Topic: topic, Key: fmt.Appendf(nil, "key-%d", k),
			Value: fmt.Appendf(nil, "key-%d:%d", k, i/keys), Partition: partition}
	}
	return out
}

// orderCheck counts, per key, the records stored before one their client
// sent earlier (inversions), in each partition's offset order; a later
// copy of a record already seen is a duplicate and is not counted. It
// returns the inversions, the distinct records and the duplicates.
func orderCheck(recs []*kgo.Record) (inversions, distinct, duplicates int) {
	seen := map[string]bool{}
	last := map[string]int{}
	for _, r := range recs {
		v := string(r.Value)
		if seen[v] {
			duplicates++
			continue
		}
		seen[v] = true
		key, seqStr, _ := strings.Cut(v, ":")
		seq, _ := strconv.Atoi(seqStr)
		if l, ok := last[key]; ok && seq < l {
			inversions++
			continue
		}
		last[key] = seq
	}
	return inversions, len(seen), duplicates
}

// readDistinct reads topic from the start, in each partition's offset
// order, until it holds want distinct values, or timeout.
func readDistinct(t *testing.T, addr, topic string, want int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	require.NoError(t, err)
	defer cl.Close()
	var out []*kgo.Record
	seen := map[string]bool{}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for len(seen) < want && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			seen[string(r.Value)] = true
		})
	}
	require.Len(t, seen, want, "every record reaches Kafka")
	return out
}

// runOrdered starts an ordered drainer of role on its own NATS
// connection; crash closes that connection and stops the drainer without
// releasing its lease or answering what it holds, as a kill -9 would.
func (e *env) runOrdered(t *testing.T, role Role, rateLimit float64, holder string) (crash func()) {
	t.Helper()
	conn, js := e.connect(t)
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	d, err := New(t.Context(), Options{
		JS: js, WAL: e.cfg.Producer.WAL, Kind: role.Kind, Consumer: role.Name, Producer: p,
		RateLimit: rateLimit, Breaker: e.cfg.Producer.CB, BatchSize: 100, Ordered: true, Holder: holder,
		Metrics: e.metrics, Logger: discard,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	var once atomic.Bool
	stop := func(crashed bool) {
		if !once.CompareAndSwap(false, true) {
			return
		}
		if crashed {
			conn.Close() // no ack, no release reaches JetStream any more
		}
		cancel()
		<-done
		_ = p.Close()
		conn.Close()
	}
	t.Cleanup(func() { stop(false) })
	return func() { stop(true) }
}

// connect opens another connection to the embedded JetStream.
func (e *env) connect(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	c := e.cfg.Producer.WAL
	c.Listen = strings.TrimPrefix(e.url, "nats://")
	nc, js, err := spill.Dial(c, nil, "test-drain", discard)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc, js
}

// failEvery makes every nth produce request fail with a retriable error,
// while on.
func failEvery(c *kfake.Cluster, n int64, on *atomic.Bool) {
	var count atomic.Int64
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !on.Load() || count.Add(1)%n != 0 {
			return nil, nil, false
		}
		return kafkatest.FailProduce(req.(*kmsg.ProduceRequest), kerr.NotLeaderForPartition), nil, true
	})
}

// TestOrderedDrainKeepsEachKeysOrder: with every third produce request
// failing (and no retries in the producer, so the drain sees each
// failure), 24 keys' records, some placed by the partitioner and some
// with their partition, all reach Kafka, and each key's records are
// stored in the order their client sent them. The failures are retried
// in place: counted as retried, nothing dead-lettered.
func TestOrderedDrainKeepsEachKeysOrder(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(4, "ordered"))
	var on atomic.Bool
	on.Store(true)
	failEvery(c, 3, &on)
	e := setup(t, addr, "SPILLWAY_KAFKA_RETRIES=0", "SPILLWAY_PRODUCER_CB_FAILS=1000")
	const n = 3000
	recs := keyed("ordered", 16, n, record.AnyPartition)
	for i := range recs {
		if i%16 >= 12 { // keys 12-15 carry their partition, as the Kafka listener's records do
			recs[i].Partition = int32(i % 4)
		}
	}
	for i := 0; i < n; i += 500 {
		e.spill(t, spill.Spilled, recs[i:i+500]...)
	}
	e.runOrdered(t, Resender, 0, "a")
	got := readDistinct(t, addr, "ordered", n, 60*time.Second)
	inv, distinct, dups := orderCheck(got)
	t.Logf("%d records read, %d distinct, %d duplicates, %d inversions", len(got), distinct, dups, inv)
	assert.Zero(t, inv, "no record stored before one its client sent earlier")
	assert.Positive(t, metricValue(t, e.reg, "spillway_records_retried_total", "consumer", "resender", "reason", string(record.ReasonUnavailable)),
		"failures happened, and were retried")
	noDeadLetters(t, e.js)
}

// TestOrderedDrainBlocksOnlyItsLane: records of a topic Kafka does not
// have (auto-creation off) stay at the head of their lanes while the
// records of another topic, buffered between them, are all delivered; once
// the topic exists its records arrive, in order.
func TestOrderedDrainBlocksOnlyItsLane(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(2, "flows"))
	e := setup(t, addr, "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false", "SPILLWAY_PRODUCER_CB_FAILS=1000")
	late, flows := keyed("late", 4, 200, record.AnyPartition), keyed("flows", 4, 400, record.AnyPartition)
	for i := range 4 {
		e.spill(t, spill.Spilled, late[i*50:(i+1)*50]...)
		e.spill(t, spill.Spilled, flows[i*100:(i+1)*100]...)
	}
	e.runOrdered(t, Resender, 0, "a")
	got := readDistinct(t, addr, "flows", 400, 20*time.Second)
	inv, _, _ := orderCheck(got)
	assert.Zero(t, inv)
	require.Eventually(t, func() bool {
		return blockedValue(t, e.reg, "resender", "late", record.ReasonUnknownTopic) == 1
	}, 10*time.Second, 20*time.Millisecond, "the missing topic shows as blocked")
	kafkatest.CreateTopic(t, addr, "late", 3)
	got = readDistinct(t, addr, "late", 200, 30*time.Second)
	inv, _, dups := orderCheck(got)
	assert.Zero(t, inv)
	assert.Zero(t, dups)
}

// TestOrderedDrainAfterACrash: two resenders; the one holding the lease
// is killed mid-drain (its connection closed: no ack, no release). The
// other takes over within the lease's life and restarts from the first
// record not acknowledged: every record arrives, each key in order;
// records the dead one had delivered but not acknowledged may come again.
func TestOrderedDrainAfterACrash(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(4, "crash"))
	e := setup(t, addr)
	const n = 4000
	recs := keyed("crash", 32, n, record.AnyPartition)
	for i := 0; i < n; i += 500 {
		e.spill(t, spill.Spilled, recs[i:i+500]...)
	}
	crashA := e.runOrdered(t, Resender, 1000, "a")
	require.Eventually(t, func() bool {
		return metricValue(t, e.reg, "spillway_records_drained_total", "consumer", "resender", "topic", "crash") >= 500
	}, 20*time.Second, 10*time.Millisecond, "the first resender drains")
	e.runOrdered(t, Resender, 0, "b") // waits: a holds the lease
	crashA()
	start := time.Now()
	got := readDistinct(t, addr, "crash", n, 30*time.Second)
	t.Logf("the second resender finished %v after the crash", time.Since(start).Round(time.Millisecond))
	inv, distinct, dups := orderCheck(got)
	t.Logf("%d records read, %d distinct, %d duplicates, %d inversions", len(got), distinct, dups, inv)
	assert.Zero(t, inv, "no record stored before one its client sent earlier")
}

// TestOrderedDrainOfRecordsBufferedBeforeTheUpgrade: records stored
// under the subjects of before the partition token (PREFIX.spill.TOPIC)
// drain with those stored after, in buffer order.
func TestOrderedDrainOfRecordsBufferedBeforeTheUpgrade(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(3, "upgraded"))
	e := setup(t, addr)
	recs := keyed("upgraded", 8, 400, record.AnyPartition)
	for _, r := range recs[:200] { // as the previous version stored them
		data, err := spill.Encode(&r, "unavailable")
		require.NoError(t, err)
		msg := &nats.Msg{Subject: "spillway.spill.upgraded", Data: data, Header: nats.Header{nats.MsgIdHdr: []string{r.ID}}}
		_, err = e.js.PublishMsg(t.Context(), msg)
		require.NoError(t, err)
	}
	e.spill(t, spill.Spilled, recs[200:]...)
	e.runOrdered(t, Resender, 0, "a")
	got := readDistinct(t, addr, "upgraded", 400, 20*time.Second)
	inv, _, dups := orderCheck(got)
	assert.Zero(t, inv)
	assert.Zero(t, dups)
}
