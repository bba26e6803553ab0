package backlog

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/spillway/spillway/pkg/config"
)

// CountsBucket is the key-value bucket of the topics' partition counts,
// by topic.
func CountsBucket(c config.WAL) string { return c.Stream + "_PARTITIONS" }

// counts shares the topics' partition counts between the ingests through
// a key-value bucket: a record's lane is its partition, chosen from the
// count, and every ingest, one restarted while Kafka is down too, must
// choose the same lane for a key as the one that buffered its earlier
// records.
type counts struct {
	mu      sync.Mutex
	known   map[string]int // as put in the bucket, or read from it
	kv      jetstream.KeyValue
	loaded  chan struct{} // closed once the bucket's counts have been read
	gaveUp  atomic.Bool   // a wait for them timed out: later ones do not wait
	learned func(topic string, n int)
}

// OnPartitionCount sets what is told each topic's partition count read
// from the bucket (the producer, which places records by it). Call it
// before Run.
func (t *Tracker) OnPartitionCount(f func(topic string, n int)) { t.counts.learned = f }

// PartitionCount records topic's partition count, read from Kafka, in the
// bucket for the other ingests, when it is new.
func (t *Tracker) PartitionCount(topic string, n int) {
	c := &t.counts
	c.mu.Lock()
	kv := c.kv
	if c.known[topic] == n || kv == nil { // no bucket yet: put at a later reading
		c.mu.Unlock()
		return
	}
	c.known[topic] = n
	c.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := kv.Put(ctx, topic, []byte(strconv.Itoa(n))); err != nil {
			t.logger.Warn("cannot share a topic's partition count with the other ingests", "topic", topic, "error", err)
			c.mu.Lock()
			delete(c.known, topic)
			c.mu.Unlock()
		}
	}()
}

// WaitCounts waits, at most for wait, until the bucket's counts have been
// read (at start). Once a wait timed out (the buffer is not reached),
// later ones return at once.
func (t *Tracker) WaitCounts(wait time.Duration) {
	select {
	case <-t.counts.loaded:
		return
	default:
	}
	if t.counts.gaveUp.Load() {
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-t.counts.loaded:
	case <-timer.C:
		t.counts.gaveUp.Store(true)
	}
}

// watchCounts reads the bucket's counts and follows them.
func (t *Tracker) watchCounts(ctx context.Context) {
	c := &t.counts
	var once sync.Once
	for ctx.Err() == nil {
		kv, err := t.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      CountsBucket(t.wal),
			Description: "Spillway: topics' partition counts, by which every ingest places records in the same lane",
			History:     1,
			Storage:     storage(t.wal),
			Replicas:    t.wal.Replicas,
		})
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		w, err := kv.WatchAll(ctx)
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		c.mu.Lock()
		c.kv = kv
		c.mu.Unlock()
		for e := range w.Updates() {
			if e == nil {
				once.Do(func() { close(c.loaded) })
				continue
			}
			n, err := strconv.Atoi(string(e.Value()))
			if e.Operation() != jetstream.KeyValuePut || err != nil || n <= 0 {
				continue
			}
			c.mu.Lock()
			c.known[e.Key()] = n
			c.mu.Unlock()
			if c.learned != nil {
				c.learned(e.Key(), n)
			}
		}
		_ = w.Stop()
	}
}
