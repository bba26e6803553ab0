package e2e

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// keyClients are closed-loop clients, one per key: each sends its key's
// next record only once the last was answered 200 or 202, and sends the
// same record again after any other answer or none. Each record's value
// is "KEY:SEQ", SEQ counting the key's records from 0.
type keyClients struct {
	mu       sync.Mutex
	acked    map[string]bool // values answered 200 or 202
	statuses map[int]int
	noAnswer int
	// since is when the test started watching for delivered answers
	// (zero: not yet); delivered is, per key, when it was first answered
	// 200 after since.
	since     time.Time
	delivered map[string]time.Time

	addrs []string // the ingests' HTTP addresses, used in turn per key
	stop  chan struct{}
	done  sync.WaitGroup
}

func startKeyClients(keys int, topic string, addrs ...string) *keyClients {
	c := &keyClients{acked: map[string]bool{}, statuses: map[int]int{}, delivered: map[string]time.Time{},
		addrs: addrs, stop: make(chan struct{})}
	client := &http.Client{Timeout: 15 * time.Second}
	for k := range keys {
		key := fmt.Sprintf("key-%02d", k)
		c.done.Add(1)
		go func() {
			defer c.done.Done()
			for seq, try := 0, 0; ; try++ {
				select {
				case <-c.stop:
					return
				default:
				}
				// Clients spread over the ingests: a key's records go
				// through each in turn.
				addr := c.addrs[(seq+k)%len(c.addrs)]
				value := fmt.Sprintf("%s:%d", key, seq)
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/topics/"+topic+"/messages", strings.NewReader(value))
				req.Header.Set("Content-Type", "text/plain")
				req.Header.Set("X-Kafka-Key", key)
				resp, err := client.Do(req)
				if err != nil {
					c.mu.Lock()
					c.noAnswer++
					c.mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				c.mu.Lock()
				c.statuses[resp.StatusCode]++
				ok := resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusAccepted
				if ok {
					c.acked[value] = true
				}
				if resp.StatusCode == http.StatusOK && !c.since.IsZero() && c.delivered[key].IsZero() {
					c.delivered[key] = time.Now()
				}
				c.mu.Unlock()
				if !ok {
					time.Sleep(20 * time.Millisecond)
					continue // the same record again
				}
				seq++
			}
		}()
	}
	return c
}

// watchDelivered starts noting, per key, its first answer 200 from now.
func (c *keyClients) watchDelivered() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.since = time.Now()
	c.delivered = map[string]time.Time{}
	return c.since
}

// deliveredKeys is how many keys were answered 200 since watchDelivered,
// and the longest any took.
func (c *keyClients) deliveredKeys() (int, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var longest time.Duration
	for _, at := range c.delivered {
		longest = max(longest, at.Sub(c.since))
	}
	return len(c.delivered), longest
}

func (c *keyClients) finish() {
	close(c.stop)
	c.done.Wait()
}

func (c *keyClients) buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.statuses[http.StatusAccepted]
}

// orderFigures is what kcat read back of the clients' records.
type orderFigures struct {
	acked, missing, duplicates, inversions int
	keysOutOfOrder                         int
}

// assertNoneMissing fails the test when an acknowledged record is not
// in Kafka.
func (f orderFigures) assertNoneMissing(t *testing.T) {
	t.Helper()
	if f.missing > 0 {
		t.Errorf("%d acknowledged records are not in Kafka", f.missing)
	}
}

// assertKept fails the test when an acknowledged record is not in Kafka,
// or a record is stored before one its client sent earlier.
func (f orderFigures) assertKept(t *testing.T) {
	t.Helper()
	f.assertNoneMissing(t)
	if f.inversions > 0 {
		t.Errorf("%d records stored before one their client sent earlier, in %d keys", f.inversions, f.keysOutOfOrder)
	}
}

// readBackOrder waits until every acknowledged record is in topic (read
// with kcat, an independent client), then counts per key the inversions:
// records stored before one their client sent earlier, in each
// partition's offset order; later copies of a duplicate are ignored.
func readBackOrder(t *testing.T, broker, topic string, c *keyClients, timeout time.Duration) orderFigures {
	t.Helper()
	c.mu.Lock()
	acked := make(map[string]bool, len(c.acked))
	for v := range c.acked {
		acked[v] = true
	}
	c.mu.Unlock()
	missingIn := func(recs []kcatRecord) int {
		seen := map[string]bool{}
		for _, r := range recs {
			seen[deref(r.Payload)] = true
		}
		n := 0
		for v := range acked {
			if !seen[v] {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(timeout)
	for missingIn(kcatConsumeMaybe(broker, topic)) > 0 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	recs := settledRead(t, broker, topic)
	sort.SliceStable(recs, func(i, j int) bool {
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	f := orderFigures{acked: len(acked), missing: missingIn(recs)}
	seen := map[string]bool{}
	last := map[string]int{}
	outOfOrder := map[string]bool{}
	for _, r := range recs {
		v := deref(r.Payload)
		if seen[v] {
			f.duplicates++
			continue
		}
		seen[v] = true
		key, s, _ := strings.Cut(v, ":")
		if key != deref(r.Key) {
			t.Errorf("record %q stored with key %q", v, deref(r.Key))
		}
		seq, _ := strconv.Atoi(s)
		if l, ok := last[key]; ok && seq < l {
			f.inversions++
			outOfOrder[key] = true
			continue
		}
		last[key] = seq
	}
	f.keysOutOfOrder = len(outOfOrder)
	c.mu.Lock()
	t.Logf("acknowledged %d (statuses %v, %d without an answer); in Kafka %d records: %d missing, %d duplicates, %d inversions in %d keys",
		f.acked, c.statuses, c.noAnswer, len(recs), f.missing, f.duplicates, f.inversions, f.keysOutOfOrder)
	c.mu.Unlock()
	return f
}

// orderEnv is what every process of the order tests runs with: a breaker
// that probes Kafka a second after it opens, records that wait at most a
// second for Kafka.
var orderEnv = []string{
	"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1500",
	"SPILLWAY_PRODUCER_CB_TIMEOUT=1s",
	"SPILLWAY_PRODUCER_CB_MAX_WAIT=1s",
}

// TestOrderPerKeyKafkaCut is the scenario (a): 32 keys, one
// closed-loop client per key, Kafka cut (connections reset) for 10 s in a
// 40 s load, an ingest and a resender. Every acknowledged record is read
// back with kcat: none is missing, and no key's record is stored before
// one its client sent earlier. After Kafka returns every key is answered
// delivered again within 60 s.
func TestOrderPerKeyKafkaCut(t *testing.T) {
	parallel(t, loaded)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, orderEnv...)
	startResender(t, k.addr, in.natsAddr, orderEnv...)
	c := startKeyClients(32, "order-cut", in.httpAddr)
	start := time.Now()
	time.Sleep(5 * time.Second)
	k.cut()
	time.Sleep(10 * time.Second)
	k.restore()
	restored := c.watchDelivered()
	eventually(t, 60*time.Second, "every key answered delivered again after Kafka came back", func() bool {
		n, _ := c.deliveredKeys()
		return n == 32
	})
	_, longest := c.deliveredKeys()
	time.Sleep(time.Until(start.Add(40 * time.Second)))
	c.finish()
	t.Logf("every key delivered again at most %v after Kafka came back (%v after the restore began)", longest.Round(time.Millisecond), time.Since(restored).Round(time.Second))
	if c.buffered() == 0 {
		t.Fatal("no record was buffered while Kafka was cut")
	}
	f := readBackOrder(t, k.addr, "order-cut", c, 90*time.Second)
	f.assertKept(t)
}

// TestOrderPerKeyNoneShowsInversions: the same load with producer.order
// none, Kafka cut 4 s in a 14 s load: records are stored out of order, so
// that the test above can tell.
func TestOrderPerKeyNoneShowsInversions(t *testing.T) {
	parallel(t, loaded)
	k := newFaultyKafka(t)
	env := append([]string{"SPILLWAY_PRODUCER_ORDER=none"}, orderEnv...)
	in := startIngest(t, k.addr, env...)
	startResender(t, k.addr, in.natsAddr, append(env, "SPILLWAY_PRODUCER_RESEND_PERIOD=3s")...)
	c := startKeyClients(32, "order-none", in.httpAddr)
	time.Sleep(3 * time.Second)
	k.cut()
	time.Sleep(4 * time.Second)
	k.restore()
	time.Sleep(7 * time.Second)
	c.finish()
	f := readBackOrder(t, k.addr, "order-none", c, 60*time.Second)
	f.assertNoneMissing(t)
	if f.inversions == 0 {
		t.Error("no inversion with producer.order none: the test cannot tell the difference")
	}
}

// TestOrderPerKeyResenderKilled is scenario (d): Kafka cut while 32 keys
// send, then restored with a slow resender (200 records/s), which is
// killed (kill -9) mid-drain; a second resender, waiting for the lease,
// takes over and restarts from the first record not acknowledged. No
// record is missing, and none is stored before one its client sent
// earlier (copies of what the dead one delivered may come again).
func TestOrderPerKeyResenderKilled(t *testing.T) {
	parallel(t, loaded)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, orderEnv...)
	slow := append([]string{"SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=200"}, orderEnv...)
	first := spawn(t, "spillway-resender", append([]string{"SPILLWAY_KAFKA_BROKERS=" + k.addr, "SPILLWAY_PRODUCER_WAL_LISTEN=" + in.natsAddr,
		"SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:0"}, slow...)...)
	monitor := first.monitorAddr(t)
	c := startKeyClients(32, "order-killed", in.httpAddr)
	time.Sleep(2 * time.Second)
	k.cut()
	eventually(t, 30*time.Second, "2000 records buffered", func() bool { return c.buffered() >= 2000 })
	k.restore()
	eventually(t, 60*time.Second, "the resender to deliver some records", func() bool {
		v, _ := metric(t, monitor, `spillway_records_drained_total{consumer="resender",topic="order-killed"}`)
		return v >= 200
	})
	_ = first.cmd.Process.Signal(syscall.SIGKILL)
	<-first.exited
	startResender(t, k.addr, in.natsAddr, orderEnv...)
	c.watchDelivered()
	eventually(t, 60*time.Second, "every key answered delivered again", func() bool {
		n, _ := c.deliveredKeys()
		return n == 32
	})
	c.finish()
	f := readBackOrder(t, k.addr, "order-killed", c, 90*time.Second)
	f.assertKept(t)
}

// TestOrderPerKeyAlwaysTwoForwarders is scenario (e): producer.wal.mode
// always, two forwarders; the one draining is killed (kill -9) mid-load
// and the other takes over. Each key's records are stored in order.
func TestOrderPerKeyAlwaysTwoForwarders(t *testing.T) {
	parallel(t, loaded)
	k := newFaultyKafka(t)
	env := append([]string{"SPILLWAY_PRODUCER_WAL_MODE=always"}, orderEnv...)
	in := startIngest(t, k.addr, env...)
	a, monitorA := startForwarder(t, k.addr, in.natsAddr, env...)
	_, monitorB := startForwarder(t, k.addr, in.natsAddr, env...)
	c := startKeyClients(32, "order-always", in.httpAddr)
	drained := func(m string) float64 {
		v, _ := metric(t, m, `spillway_records_drained_total{consumer="forwarder",topic="order-always"}`)
		return max(v, 0)
	}
	eventually(t, 30*time.Second, "records forwarded", func() bool { return drained(monitorA)+drained(monitorB) >= 2000 })
	if drained(monitorA) > 0 { // a holds the lease: kill it
		t.Logf("the first forwarder drained %v records: killed (kill -9)", drained(monitorA))
		_ = a.cmd.Process.Signal(syscall.SIGKILL)
		<-a.exited
		before := drained(monitorB)
		eventually(t, 30*time.Second, "the other forwarder to take over", func() bool { return drained(monitorB) > before+1000 })
	} else {
		t.Log("the second forwarder drains: the first stands by")
	}
	c.finish()
	f := readBackOrder(t, k.addr, "order-always", c, 60*time.Second)
	f.assertKept(t)
}

// TestOrderPerKeyKafkaHung is scenario (b): Kafka hung (every byte held)
// for 15 s under 32 closed-loop keys. Records waiting when it hung are
// buffered after producer.cb.max_wait, and Kafka may take them too when
// it resumes (copies, ignored); no key's record is stored before one its
// client sent earlier, and none is missing.
func TestOrderPerKeyKafkaHung(t *testing.T) {
	parallel(t, loaded)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, orderEnv...)
	// While Kafka hangs the clients are answered buffered at JetStream's
	// pace (near 500,000 records in 15 s here): a resender at its default
	// 10,000 records/s would take about 50 s to deliver them.
	startResender(t, k.addr, in.natsAddr, append([]string{"SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=50000"}, orderEnv...)...)
	c := startKeyClients(32, "order-hung", in.httpAddr)
	time.Sleep(3 * time.Second)
	k.hang(t)
	time.Sleep(15 * time.Second)
	k.resume(t)
	c.watchDelivered()
	eventually(t, 60*time.Second, "every key answered delivered again after Kafka resumed", func() bool {
		n, _ := c.deliveredKeys()
		return n == 32
	})
	_, longest := c.deliveredKeys()
	c.finish()
	t.Logf("every key delivered again at most %v after Kafka resumed", longest.Round(time.Millisecond))
	f := readBackOrder(t, k.addr, "order-hung", c, 90*time.Second)
	f.assertKept(t)
}

// TestOrderPerKeyIngestKilled is scenario (c): Kafka cut while 32 keys
// send; once records are buffered the ingest is killed (kill -9) and
// started again on the same store and ports, then Kafka is restored. The
// restarted ingest knows which lanes have a backlog (their markers and the
// stream): no key's record is stored before one its client sent earlier,
// and none is missing.
func TestOrderPerKeyIngestKilled(t *testing.T) {
	parallel(t, loaded)
	k := newFaultyKafka(t)
	env := append([]string{
		"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(),
		fmt.Sprintf("SPILLWAY_SERVER_HTTP_LISTEN=127.0.0.1:%d", reservedPort(t)),
		fmt.Sprintf("SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:%d", reservedPort(t)),
	}, orderEnv...)
	in := startIngest(t, k.addr, env...)
	startResender(t, k.addr, in.natsAddr, orderEnv...)
	c := startKeyClients(32, "order-ingest-killed", in.httpAddr)
	time.Sleep(2 * time.Second)
	k.cut()
	eventually(t, 30*time.Second, "3000 records buffered", func() bool { return c.buffered() >= 3000 })
	_ = in.cmd.Process.Signal(syscall.SIGKILL)
	<-in.exited
	again := startIngest(t, k.addr, env...) // the same store: the buffered records are still there
	if again.httpAddr != in.httpAddr {
		t.Fatalf("the ingest came back on %s, not %s", again.httpAddr, in.httpAddr)
	}
	time.Sleep(2 * time.Second)
	k.restore()
	c.watchDelivered()
	eventually(t, 60*time.Second, "every key answered delivered again", func() bool {
		n, _ := c.deliveredKeys()
		return n == 32
	})
	c.finish()
	f := readBackOrder(t, k.addr, "order-ingest-killed", c, 90*time.Second)
	f.assertKept(t)
}

// TestOrderPerKeyCluster is scenario (f): two ingests on a three-node
// JetStream cluster (3 replicas), as make run-cluster runs them; each of
// 32 closed-loop keys sends its records through both ingests in turn;
// Kafka is cut 6 s in a 20 s load. A lane's backlog is visible to both
// through the buffer (its subject, and its marker in the key-value
// bucket). No acknowledged record is missing; the inversions are
// counted and must stay within the window docs/operations.md states.
func TestOrderPerKeyCluster(t *testing.T) {
	parallel(t, alone)
	k := newFaultyKafka(t)
	nc := startNATSCluster(t)
	env := append([]string{"SPILLWAY_PRODUCER_WAL_NATS_URLS=" + nc.urls(), "SPILLWAY_PRODUCER_WAL_REPLICAS=3"}, orderEnv...)
	a, b := startIngest(t, k.addr, env...), startIngest(t, k.addr, env...)
	startResender(t, k.addr, "", env...)
	c := startKeyClients(32, "order-cluster", a.httpAddr, b.httpAddr)
	time.Sleep(4 * time.Second)
	k.cut()
	time.Sleep(6 * time.Second)
	k.restore()
	c.watchDelivered()
	eventually(t, 60*time.Second, "every key answered delivered again", func() bool {
		n, _ := c.deliveredKeys()
		return n == 32
	})
	time.Sleep(5 * time.Second)
	c.finish()
	f := readBackOrder(t, k.addr, "order-cluster", c, 90*time.Second)
	f.assertNoneMissing(t)
	// docs/operations.md (order per key): a publish one ingest began
	// before it saw another's hand-over, and that lands more than 50 ms
	// later, can be passed. Measured 0 in 2 runs of about 60,000.
	if bound := f.acked / 10000; f.inversions > bound {
		t.Errorf("%d records stored before one their client sent earlier, in %d keys; the documented window allows 1 in 10,000 (%d)", f.inversions, f.keysOutOfOrder, bound)
	}
}
