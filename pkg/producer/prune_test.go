package producer

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// cpuTime is the process's user and system CPU time so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// counts are what the producer keeps: queues, topic layouts, sinks.
func (p *Producer) counts() (queues, layouts, sinks int) {
	p.mu.Lock()
	queues, sinks = p.queueCount, len(p.senders)
	p.mu.Unlock()
	p.layoutMu.RLock()
	layouts = len(p.layouts)
	p.layoutMu.RUnlock()
	return queues, layouts, sinks
}

// TestCostDoesNotGrowWithPartitionsSeen: the work of sending a record
// (queues visited by the sinks' passes, a count that does not depend on
// the machine's speed) at 10 partitions stays within 1.2× after 10,000
// partitions of other topics were written to and then deleted, and the
// producer forgets those topics: their queues, layouts and the names of
// topics that never existed. The CPU per record is logged, not asserted.
func TestCostDoesNotGrowWithPartitionsSeen(t *testing.T) {
	const (
		steady     = "steady"
		records    = 2000
		topics     = 100
		partitions = 100
	)
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(10, steady))
	p := newProducer(t, addr, "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false")

	// work sends records to steady, one a call from one caller, and
	// returns the queues visited and the CPU time a record.
	round := 0
	work := func() (visits float64, cpu time.Duration) {
		round++
		v0, c0 := p.visits.Load(), cpuTime(t)
		for i := range records {
			res := p.Produce(t.Context(), []record.Record{{Topic: steady, Key: fmt.Appendf(nil, "%d-%d", round, i), Value: []byte("v"), Partition: record.AnyPartition}})
			require.Equal(t, record.Delivered, res[0].Outcome, res[0].Err)
		}
		return float64(p.visits.Load()-v0) / records, (cpuTime(t) - c0) / records
	}
	work() // warm up
	before, cpuBefore := work()
	queues0, layouts0, sinks0 := p.counts()

	// 10,000 partitions of 100 topics, a record to each, then the topics
	// are deleted; and calls to 100 topics that never existed.
	names := make([]string, topics)
	for i := range names {
		names[i] = fmt.Sprintf("many-%03d", i)
		kafkatest.CreateTopic(t, addr, names[i], partitions)
	}
	require.Eventually(t, func() bool { // in the transport's metadata (auto-creation is off)
		for _, name := range names {
			if _, err := p.readLayout(t.Context(), name); err != nil {
				return false
			}
		}
		return true
	}, 10*time.Second, 100*time.Millisecond)
	for _, name := range names {
		recs := make([]record.Record, partitions)
		for j := range recs {
			recs[j] = record.Record{Topic: name, Value: []byte("x"), Partition: int32(j)}
		}
		for j, r := range p.Produce(t.Context(), recs) {
			require.Equal(t, record.Delivered, r.Outcome, "%s/%d: %v", name, j, r.Err)
		}
		res := p.Produce(t.Context(), []record.Record{{Topic: "missing-" + name, Value: []byte("x"), Partition: record.AnyPartition}})
		require.Equal(t, record.ReasonUnknownTopic, record.ReasonOf(res[0].Err), res[0].Err)
	}
	seenQueues, seenLayouts, _ := p.counts()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	require.NoError(t, err)
	defer cl.Close()
	del := kmsg.NewPtrDeleteTopicsRequest()
	for _, name := range names {
		del.Topics = append(del.Topics, kmsg.DeleteTopicsRequestTopic{Topic: kmsg.StringPtr(name)})
	}
	_, err = del.RequestWith(t.Context(), cl)
	require.NoError(t, err)

	// Two prunes with steady in use between them (the janitor's, a minute
	// apart, in production) forget what no call used in between.
	var heapSeen runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapSeen)
	p.prune()
	work()
	p.prune()
	var heapAfter runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapAfter)
	queues, layouts, sinks := p.counts()
	t.Logf("kept: %d queues and %d layouts with 10 partitions; %d and %d after 10,000 partitions and 100 unknown topics; %d and %d once pruned (%d sinks); heap in use %d KiB, then %d KiB",
		queues0, layouts0, seenQueues, seenLayouts, queues, layouts, sinks, heapSeen.HeapInuse>>10, heapAfter.HeapInuse>>10)
	assert.Equal(t, topics*partitions+queues0, seenQueues, "queues before pruning")
	assert.Equal(t, queues0, queues, "queues kept once the deleted topics were pruned")
	assert.Equal(t, layouts0, layouts, "layouts kept once the deleted and unknown topics were pruned")
	assert.Equal(t, sinks0, sinks, "sinks kept")

	after, cpuAfter := work()
	t.Logf("queues visited a record: %.2f at 10 partitions, %.2f after 10,000 seen; CPU a record: %v, then %v", before, after, cpuBefore, cpuAfter)
	assert.LessOrEqual(t, after, before*1.2, "queues visited a record, after 10,000 partitions seen, against before")
}
