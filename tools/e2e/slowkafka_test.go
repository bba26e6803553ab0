package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// e2eHook is a kgo hook that sees each request's end.
type e2eHook func(key int16, e2e kgo.BrokerE2E)

func (h e2eHook) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) { h(key, e2e) }

// TestKgoDefaultsAgainstASlowKafka: a kgo producer with its default batch
// settings (1 MB a partition, requests up to 100 MiB, retries for ever)
// against the built ingest whose Kafka answers every request 2 s late,
// and whose request bound is 1 MiB. Every record gets its callback, a
// success or an error, none lost; no produce request kgo wrote goes
// unanswered (no silently closed connection); and every record kgo was
// told is stored is in Kafka, once the delay is gone and the resender
// drained what was buffered.
//
// warm: Kafka slows while the ingest runs (it wrote to Kafka before).
// cold: Kafka is slow before the ingest first reads its layout; the
// ingest's topic.metadata.refresh.interval.ms is then 10 s, because
// kafka-go's transport gives each reading of the cluster's layout that
// long and no longer: at the default 1 s, an ingest that never saw
// Kafka's layout does not learn it while Kafka is 2 s late, and no
// client of the listener learns a leader (see docs/api.md).
func TestKgoDefaultsAgainstASlowKafka(t *testing.T) {
	parallel(t, waits)
	t.Run("warm", func(t *testing.T) {
		k := newFaultyKafka(t)
		kafkatest.CreateTopic(t, k.addr, "slow", 4)
		in := startIngest(t, k.addr, "SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=1048576")
		if status, body := postStatus(t, in.httpAddr, "slow", "before"); status != 200 {
			t.Fatalf("a record before Kafka slows: %d %s", status, body)
		}
		k.slow(t, 2*time.Second)
		kgoDefaultsAgainstSlowKafka(t, k, in, 1)
	})
	t.Run("cold", func(t *testing.T) {
		k := newFaultyKafka(t)
		kafkatest.CreateTopic(t, k.addr, "slow", 4)
		in := startIngest(t, k.addr, "SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=1048576", "SPILLWAY_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS=10000")
		k.slow(t, 2*time.Second)
		kgoDefaultsAgainstSlowKafka(t, k, in, 0)
	})
}

func kgoDefaultsAgainstSlowKafka(t *testing.T, k *faultyKafka, in *ingestProcess, before int) {

	var unanswered atomic.Int64
	var lostMu sync.Mutex
	var lost error
	hook := e2eHook(func(key int16, e2e kgo.BrokerE2E) {
		if key == int16(kmsg.Produce) && e2e.Err() != nil {
			unanswered.Add(1)
			lostMu.Lock()
			if lost == nil {
				lost = e2e.Err()
			}
			lostMu.Unlock()
		}
	})
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.kafkaAddr), kgo.WithHooks(hook))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	const n = 3000 // 3 MB of values that do not compress
	var (
		mu        sync.Mutex
		callbacks = map[string]int{}
		failed    = map[string]error{}
		stored    []string
		answered  atomic.Int64
	)
	for i := range n {
		v := make([]byte, 512)
		_, _ = rand.Read(v)
		key := fmt.Sprintf("r%04d", i)
		cl.Produce(t.Context(), &kgo.Record{Topic: "slow", Key: []byte(key), Value: []byte(hex.EncodeToString(v))}, func(r *kgo.Record, err error) {
			mu.Lock()
			callbacks[key]++
			if err != nil {
				failed[key] = err
			} else {
				stored = append(stored, key)
			}
			mu.Unlock()
			answered.Add(1)
		})
	}
	// kgo retries a record for ever by default: the wait is bounded here,
	// generously (with every Kafka request 2 s late, the ingest's first
	// look at the layout takes a few of them).
	deadline := time.Now().Add(120 * time.Second)
	for answered.Load() < n && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := answered.Load(); got < n {
		lostMu.Lock()
		defer lostMu.Unlock()
		t.Fatalf("%d of %d records got no callback within 120 s; %d produce requests unanswered (first: %v)", n-got, n, unanswered.Load(), lost)
	}
	lostMu.Lock()
	if unanswered.Load() != 0 {
		t.Errorf("%d produce requests kgo wrote were never answered (first: %v)", unanswered.Load(), lost)
	}
	lostMu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	for key, c := range callbacks {
		if c != 1 {
			t.Errorf("record %s got %d callbacks, want 1", key, c)
		}
	}
	for key, err := range failed {
		t.Logf("record %s answered with an error: %v", key, err)
	}
	t.Logf("%d records stored, %d answered with an error", len(stored), len(failed))
	if len(stored) == 0 {
		t.Fatal("no record was stored")
	}

	k.fast(t)
	startResender(t, k.addr, in.natsAddr) // for what was buffered
	eventually(t, 90*time.Second, "every stored record in Kafka", func() bool {
		return len(kcatConsumeMaybe(k.addr, "slow")) >= len(stored)+before
	})
	seen := map[string]int{}
	for _, r := range settledRead(t, k.addr, "slow") {
		seen[deref(r.Key)]++
	}
	for _, key := range stored {
		if seen[key] == 0 {
			t.Errorf("record %s: kgo was told it is stored, and Kafka does not hold it", key)
		}
	}
}
