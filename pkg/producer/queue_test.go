package producer

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// TestPartitionsShareARequest: records for every partition of a topic,
// from concurrent callers, go to the broker in requests that carry
// several partitions each, not one request per partition.
func TestPartitionsShareARequest(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(3, "spread"))
	var mu sync.Mutex
	var requests, partitions int
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		defer mu.Unlock()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			if tp.Topic == "spread" {
				requests++
				partitions += len(tp.Partitions)
			}
		}
		return nil, nil, false
	})
	p := newProducer(t, addr, "SPILLWAY_KAFKA_LINGER_MS=20")
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			res := p.Produce(t.Context(), []record.Record{{Topic: "spread", Key: []byte(strconv.Itoa(i)), Value: []byte("v"), Partition: int32(i % 3)}})
			assert.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("300 records over 3 partitions: %d requests carrying %d partition batches", requests, partitions)
	require.Positive(t, requests)
	assert.Greater(t, float64(partitions)/float64(requests), 1.5, "a request carries the partitions that have records")
}

// TestRetriedBatchKeepsItsPlace: a batch Kafka refuses with an error that
// may pass is sent again before the records queued after it, so a
// partition's records land in the order they were produced.
func TestRetriedBatchKeepsItsPlace(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "ordered"))
	var refused atomic.Int32
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if refused.Add(1) <= 2 { // the first two produce requests
			return kafkatest.FailProduce(req.(*kmsg.ProduceRequest), kerr.NotLeaderForPartition), nil, true
		}
		return nil, nil, false
	})
	// Batches of 3, so that records wait behind the refused batch.
	p := newProducer(t, addr, "SPILLWAY_KAFKA_RETRIES=5", "SPILLWAY_KAFKA_RETRY_BACKOFF_MS=50", "SPILLWAY_KAFKA_BATCH_NUM_MESSAGES=3")
	_, err := p.topicLayout("ordered") // so that Start queues at once, in call order
	require.NoError(t, err)
	var results [][]record.Result
	var mu sync.Mutex
	done := make(chan struct{})
	for i := range 20 {
		recs := []record.Record{{Topic: "ordered", Value: fmt.Appendf(nil, "%02d", i), Partition: 0}}
		p.Start(recs, func(res []record.Result) {
			mu.Lock()
			defer mu.Unlock()
			results = append(results, res)
			if len(results) == 20 {
				close(done)
			}
		})
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("not every record was answered")
	}
	for _, res := range results {
		require.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)
	}
	assert.GreaterOrEqual(t, refused.Load(), int32(3), "Kafka refused the first requests")
	got := kafkatest.Consume(t, addr, "ordered", 20, 10*time.Second)
	for i, r := range got {
		assert.Equal(t, fmt.Sprintf("%02d", i), string(r.Value), "offset %d", r.Offset)
	}
}

// TestCloseSendsLingeringRecords: Close sends what waits for linger.ms at
// once, and answers it; a record produced after Close is refused.
func TestCloseSendsLingeringRecords(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "late"))
	p := newProducer(t, addr, "SPILLWAY_KAFKA_LINGER_MS=60000")
	_, err := p.topicLayout("late") // so that Start queues at once
	require.NoError(t, err)
	answered := make(chan []record.Result, 1)
	p.Start([]record.Record{{Topic: "late", Value: []byte("waiting"), Partition: record.AnyPartition}}, func(res []record.Result) { answered <- res })
	closed := make(chan struct{})
	go func() { _ = p.Close(); close(closed) }()
	select {
	case res := <-answered:
		require.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close left the lingering record unsent")
	}
	<-closed
	got := kafkatest.Consume(t, addr, "late", 1, 10*time.Second)
	assert.Equal(t, "waiting", string(got[0].Value))

	res := p.Produce(context.Background(), []record.Record{{Topic: "late", Value: []byte("after"), Partition: record.AnyPartition}})
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(res[0].Err), res[0].Err)
}

// TestStartNowDoesNotLinger: with linger.ms a minute, a StartNow call's
// record goes at once, and takes with it in the same request the record
// lingering for another partition of the broker; its queue lingers again
// afterwards.
func TestStartNowDoesNotLinger(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(2, "now"))
	var requests, batches atomic.Int64
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			if tp.Topic == "now" {
				requests.Add(1)
				batches.Add(int64(len(tp.Partitions)))
			}
		}
		return nil, nil, false
	})
	p := newProducer(t, addr, "SPILLWAY_KAFKA_LINGER_MS=60000")
	_, err := p.topicLayout("now") // so that the calls queue at once
	require.NoError(t, err)

	lingering, now := make(chan []record.Result, 1), make(chan []record.Result, 1)
	p.Start([]record.Record{{Topic: "now", Value: []byte("lingering"), Partition: 0}}, func(res []record.Result) { lingering <- res })
	p.StartNow([]record.Record{{Topic: "now", Value: []byte("now"), Partition: 1}}, func(res []record.Result) { now <- res })
	for name, ch := range map[string]chan []record.Result{"the StartNow record": now, "the record lingering beside it": lingering} {
		select {
		case res := <-ch:
			require.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s waited for linger.ms (a minute)", name)
		}
	}
	assert.EqualValues(t, 1, requests.Load(), "one produce request")
	assert.EqualValues(t, 2, batches.Load(), "carrying both partitions")

	for _, partition := range []int{0, 1} {
		q := p.queueOf(topicPartition{"now", partition}, 0)
		q.mu.Lock()
		assert.Zero(t, q.nowUntil, "partition %d's queue lingers again once its records went", partition)
		q.mu.Unlock()
	}
}

// TestNowUntilCoversTheStartNowRecords: a queue skips linger while it
// holds a StartNow call's record, and lingers again once the batches
// taken reached past the last of them, though records of Start calls
// queued behind are left.
func TestNowUntilCoversTheStartNowRecords(t *testing.T) {
	plain, now := &call{}, &call{now: true}
	q := &partitionQueue{}
	add := func(c *call, n int) {
		q.push(slices.Repeat([]queued{{call: c, size: 1}}, n))
	}
	add(plain, 1) // record 0
	add(now, 2)   // records 1 and 2
	add(plain, 3) // records 3 to 5
	require.Equal(t, 3, q.nowUntil)
	q.takeRecords(2, 1<<20) // record 0 alone: with the StartNow call's two (one unit) it would be over 2
	assert.Positive(t, q.nowUntil, "a StartNow record is still queued")
	for q.nowUntil > 0 {
		q.takeRecords(1, 1<<20)
	}
	assert.Len(t, q.recs, 3, "the Start records behind are left, lingering")
}

// TestSlowPartitionCopiesOutAJoinedRun: a call's queue entries share one
// array of partition runs (start), so a partition that holds a run keeps
// the whole call's entries alive. A queue holds at most the run its empty
// queue took: the next call's records joining it copy that run out. Here
// the broker holds the first produce request; the second call, over two
// partitions, waits in its queues; a third call joins partition 1's.
func TestSlowPartitionCopiesOutAJoinedRun(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(2, "runs"))
	p := newProducer(t, addr)
	release := make(chan struct{})
	var held atomic.Bool
	c.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if held.CompareAndSwap(false, true) {
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	defer close(release)

	// recs are values to partitions 1, 0, 1, 0...: partition 1's run comes
	// first in a call's array, with partition 0's run behind it.
	recs := func(values ...string) []record.Record {
		var out []record.Record
		for i, v := range values {
			out = append(out, record.Record{Topic: "runs", Value: []byte(v), Partition: int32(1 - i%2)})
		}
		return out
	}
	var wg sync.WaitGroup
	start := func(rs []record.Record) {
		wg.Add(1)
		p.Start(rs, func(res []record.Result) {
			defer wg.Done()
			for i, r := range res {
				assert.Equal(t, record.Delivered, r.Outcome, "record %d: %v", i, r.Err)
			}
		})
	}
	queue := func() *partitionQueue {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.queues["runs"][1]
	}

	start(recs("a1", "a0")) // sent, and held by the broker
	require.Eventually(t, held.Load, 10*time.Second, 10*time.Millisecond, "the first produce request held")
	start(recs("b1", "b0", "b3", "b2")) // over both partitions: one array of two runs
	q := queue()
	q.mu.Lock()
	run := q.recs
	q.mu.Unlock()
	require.Len(t, run, 2, "partition 1's run of the second call, waiting")
	require.Equal(t, len(run), cap(run), "the run is capped at its end")

	start(recs("c1")) // to partition 1
	q.mu.Lock()
	joined := q.recs
	q.mu.Unlock()
	require.Len(t, joined, 3)
	assert.NotSame(t, &run[0], &joined[0], "the joined queue still holds the second call's array")
	assert.Equal(t, []string{"b1", "b3", "c1"}, []string{string(joined[0].value), string(joined[1].value), string(joined[2].value)})

	release <- struct{}{}
	wg.Wait()
}
