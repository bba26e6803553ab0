package delivery_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/drain"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// orderRun is what the closed-loop clients of one run saw.
type orderRun struct {
	acked          map[string]bool // values answered delivered or buffered
	buffered       int
	deliveredAfter map[int]bool // keys answered delivered after Kafka came back
}

// runClosedLoop runs one client per key, each sending its next record
// only once the last was answered, for the duration of load; Kafka is cut
// between cutAt and restoreAt. A record answered other than 200 or 202 is
// sent again.
func runClosedLoop(t *testing.T, url string, k *kafkatest.Cuttable, keys int, load, cutAt, restoreAt time.Duration) orderRun {
	t.Helper()
	run := orderRun{acked: map[string]bool{}, deliveredAfter: map[int]bool{}}
	var mu sync.Mutex
	var restored time.Time
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 20 * time.Second}
	for key := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; {
				select {
				case <-stop:
					return
				default:
				}
				value := fmt.Sprintf("key-%d:%d", key, seq)
				req, _ := http.NewRequest(http.MethodPost, url+"/topics/ordered/messages", strings.NewReader(value))
				req.Header.Set("Content-Type", "text/plain")
				req.Header.Set("X-Kafka-Key", fmt.Sprintf("key-%d", key))
				resp, err := client.Do(req)
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
					time.Sleep(10 * time.Millisecond)
					continue // the same record again
				}
				mu.Lock()
				run.acked[value] = true
				if resp.StatusCode == http.StatusAccepted {
					run.buffered++
				} else if !restored.IsZero() {
					run.deliveredAfter[key] = true
				}
				mu.Unlock()
				seq++
			}
		}()
	}
	time.Sleep(cutAt)
	k.Cut()
	time.Sleep(restoreAt - cutAt)
	k.Restore()
	mu.Lock()
	restored = time.Now()
	mu.Unlock()
	time.Sleep(load - time.Since(start))
	// Until every key was answered delivered again (partition order: once
	// the resender delivered its lane's backlog), for at most 30 s more.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(run.deliveredAfter)
		mu.Unlock()
		if n == keys {
			break
		}
	}
	close(stop)
	wg.Wait()
	return run
}

// inversions reads topic until every acknowledged value is there (or
// timeout) and counts, per key, the records stored before one their
// client sent earlier; a later copy of a duplicate is not counted. It
// returns the inversions and the acknowledged values missing.
func inversions(t *testing.T, addr, topic string, acked map[string]bool, timeout time.Duration) (inv, missing, dups int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	require.NoError(t, err)
	defer cl.Close()
	seen := map[string]bool{}
	last := map[string]int{}
	found := 0
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for found < len(acked) && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			v := string(r.Value)
			if seen[v] {
				dups++
				return
			}
			seen[v] = true
			if acked[v] {
				found++
			}
			key, s, _ := strings.Cut(v, ":")
			seq, _ := strconv.Atoi(s)
			if l, ok := last[key]; ok && seq < l {
				inv++
				return
			}
			last[key] = seq
		})
	}
	return inv, len(acked) - found, dups
}

// startResender runs a resender on the ingest's embedded JetStream.
func startResender(t *testing.T, in *ingesttest.Ingest, env []string) {
	t.Helper()
	cfg, err := config.Parse(nil, env)
	require.NoError(t, err)
	wal := cfg.Producer.WAL
	wal.Listen = in.App.NATSAddr()
	nc, js, err := spill.Dial(wal, nil, "test-resender", slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	p, err := producer.New(cfg.Kafka, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	d, err := drain.New(t.Context(), drain.Options{
		JS: js, WAL: wal, Kind: spill.Spilled, Consumer: "resender", Producer: p,
		Period: cfg.Producer.Resend.Period, Breaker: cfg.Producer.CB, BatchSize: 100,
		Ordered: cfg.Producer.Order == config.OrderPartition, Holder: "test",
		Metrics: drain.NewMetrics(prometheus.NewRegistry(), 10), Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; _ = p.Close() })
}

// TestOrderPerKeyThroughASpill: 8 keys, one closed-loop client per key,
// Kafka cut for 2 s in a 7 s load. With producer.order partition every
// acknowledged record reaches Kafka and each key's records are stored in
// the order their client sent them; after Kafka returns every key is
// answered delivered again. With producer.order none the same load
// stores records out of order: the test tells the difference.
func TestOrderPerKeyThroughASpill(t *testing.T) {
	for _, tc := range []struct {
		order string
		want  func(t *testing.T, inv int)
	}{
		{"partition", func(t *testing.T, inv int) {
			assert.Zero(t, inv, "no record stored before one its client sent earlier")
		}},
		{"none", func(t *testing.T, inv int) { assert.Positive(t, inv, "records out of order: the test can tell") }},
	} {
		t.Run(tc.order, func(t *testing.T) {
			k := kafkatest.NewCuttable(t)
			env := append(orderEnv(t, k.Addr), "SPILLWAY_PRODUCER_ORDER="+tc.order)
			in := ingesttest.Start(t, k.Addr, env...)
			startResender(t, in, env)
			run := runClosedLoop(t, in.URL, k, 8, 7*time.Second, time.Second, 3*time.Second)
			inv, missing, dups := inversions(t, k.Addr, "ordered", run.acked, 30*time.Second)
			t.Logf("order %s: %d acknowledged (%d buffered), %d missing, %d duplicates, %d inversions",
				tc.order, len(run.acked), run.buffered, missing, dups, inv)
			require.Positive(t, run.buffered, "records were buffered while Kafka was cut")
			assert.Zero(t, missing, "every acknowledged record is in Kafka")
			tc.want(t, inv)
			if tc.order == "partition" {
				assert.Len(t, run.deliveredAfter, 8, "every key answered delivered again after Kafka came back")
				// The backlog marker shows the lanes behind their backlog.
				assert.GreaterOrEqual(t, ingesttest.Metric(t, in.Monitor, `spillway_backlog_hand_overs_total{outcome="done"}`), 1.0)
			}
		})
	}
}

// postEach posts the request next makes of i, for i = 0, 1, ..., one
// every 50 ms, until done holds for an answer's status, for at most 30 s;
// it fails the test with the last answer if none did. An empty key is
// no key.
func postEach(t *testing.T, in *ingesttest.Ingest, what string, next func(i int) (topic, key, value string), done func(status int) bool) string {
	t.Helper()
	var status int
	var body string
	for i, deadline := 0, time.Now().Add(30*time.Second); time.Now().Before(deadline); i++ {
		topic, key, value := next(i)
		var headers []string
		if key != "" {
			headers = []string{"X-Kafka-Key", key}
		}
		status, body = ingesttest.Post(t, in.URL+"/topics/"+topic+"/messages", "text/plain", value, headers...)
		if done(status) {
			return value
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within 30 s; last answered %d (%s)", what, status, body)
	return ""
}

// postUntil posts key's records to topic, values key0, key1, ..., each
// once, until one is answered want, and returns the value so answered.
func postUntil(t *testing.T, in *ingesttest.Ingest, topic, key string, want int) string {
	t.Helper()
	return postEach(t, in, fmt.Sprintf("%s, key %s answered %d", topic, key, want),
		func(i int) (string, string, string) { return topic, key, fmt.Sprint(key, i) },
		func(status int) bool { return status == want })
}

// waitKafkaTakes posts a record to a topic new each time, until one is
// answered delivered and the breaker is closed again. (A record of a
// partition or key lane with a backlog would wait behind it, and never
// try Kafka.)
func waitKafkaTakes(t *testing.T, in *ingesttest.Ingest) {
	t.Helper()
	postEach(t, in, "Kafka took a record",
		func(i int) (string, string, string) { return fmt.Sprintf("probe-%d", i), "", "x" },
		func(status int) bool {
			return status == http.StatusOK && ingesttest.Metric(t, in.Monitor, "spillway_breaker_state") == 0
		})
}

// postNewKeys posts to topic under a new key each time, until one is
// answered want: one whose key lane has no backlog.
func postNewKeys(t *testing.T, in *ingesttest.Ingest, topic string, want int) {
	t.Helper()
	postEach(t, in, fmt.Sprintf("%s, a new key answered %d", topic, want),
		func(i int) (string, string, string) { return topic, fmt.Sprint("x", i), "x" },
		func(status int) bool { return status == want })
}

// orderEnv is an ingest's environment for the spill tests: the breaker
// opens after 2 failures and tries Kafka again after 1 s.
func orderEnv(t *testing.T, addr string) []string {
	return []string{
		"SPILLWAY_KAFKA_BROKERS=" + addr,
		"SPILLWAY_PRODUCER_CB_FAILS=2",
		"SPILLWAY_PRODUCER_CB_TIMEOUT=1s",
		"SPILLWAY_PRODUCER_CB_MAX_WAIT=1s",
		"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000",
		"SPILLWAY_PRODUCER_RESEND_PERIOD=2s",
		"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(),
	}
}

// storedAt reads topic until it holds the values of want, and returns
// the offset order of the values of partition (or of every partition,
// with partition -1) whose key is one of keys; a later copy of a value
// is left out.
func storedAt(t *testing.T, addr, topic string, partition int32, want []string, keys ...string) []string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	require.NoError(t, err)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	seen := map[string]bool{}
	var out []string
	for ctx.Err() == nil && !hasAll(seen, want) {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			v := string(r.Value)
			if seen[v] || (partition >= 0 && r.Partition != partition) || !slices.Contains(keys, string(r.Key)) {
				return
			}
			seen[v] = true
			out = append(out, v)
		})
	}
	require.True(t, hasAll(seen, want), "Kafka holds %v, want %v among them", out, want)
	return out
}

func hasAll(seen map[string]bool, want []string) bool {
	for _, v := range want {
		if !seen[v] {
			return false
		}
	}
	return true
}

// TestPartitionStaysBehindItsBacklog: once a record of a partition is
// buffered, the later records of that partition are buffered behind it
// whatever their keys, and reach Kafka after it. Keys a and b share the
// topic's only partition but not a key lane: b's record passed a's
// buffered one when lanes were keys.
func TestPartitionStaysBehindItsBacklog(t *testing.T) {
	require.NotEqual(t, spill.Lane(&record.Record{Key: []byte("a"), Partition: record.AnyPartition}),
		spill.Lane(&record.Record{Key: []byte("b"), Partition: record.AnyPartition}), "a and b have lanes of their own")
	k := kafkatest.NewCuttable(t)
	kafkatest.CreateTopic(t, k.Addr, "shared", 1)
	env := orderEnv(t, k.Addr)
	in := ingesttest.Start(t, k.Addr, env...)

	status, body := ingesttest.Post(t, in.URL+"/topics/shared/messages", "text/plain", "first", "X-Kafka-Key", "a")
	require.Equal(t, http.StatusOK, status, body) // the ingest knows the topic's partitions
	k.Cut()
	a := postUntil(t, in, "shared", "a", http.StatusAccepted)
	k.Restore()
	waitKafkaTakes(t, in)

	status, body = ingesttest.Post(t, in.URL+"/topics/shared/messages", "text/plain", "b-behind", "X-Kafka-Key", "b")
	assert.Equal(t, http.StatusAccepted, status, "b's record waits behind the partition's backlog: %s", body)

	startResender(t, in, env)
	b := postUntil(t, in, "shared", "b", http.StatusOK) // the partition is handed back once its backlog is delivered
	got := storedAt(t, k.Addr, "shared", 0, []string{a, "b-behind", b}, "a", "b")
	ia, ib := slices.Index(got, a), slices.Index(got, "b-behind")
	assert.Less(t, ia, ib, "a's buffered record before b's later one, in the partition's order: %v", got)
	assert.Less(t, ib, slices.Index(got, b), "b's records in the order they were acknowledged: %v", got)
}

// TestKeyStaysBehindItsLaneOnceItsPartitionIsKnown: a record buffered
// before the ingest knew its topic's partitions waits in its key's lane;
// the key's later records, which now have a partition, still wait behind
// it rather than go to Kafka first.
func TestKeyStaysBehindItsLaneOnceItsPartitionIsKnown(t *testing.T) {
	k := kafkatest.NewCuttable(t)
	env := orderEnv(t, k.Addr)
	in := ingesttest.Start(t, k.Addr, env...)

	k.Cut() // before the ingest ever read the topic
	a := postUntil(t, in, "fresh", "a", http.StatusAccepted)
	k.Restore()
	waitKafkaTakes(t, in)
	postNewKeys(t, in, "fresh", http.StatusOK) // the ingest reads the topic's partitions

	status, body := ingesttest.Post(t, in.URL+"/topics/fresh/messages", "text/plain", "a-behind", "X-Kafka-Key", "a")
	assert.Equal(t, http.StatusAccepted, status, "a's record waits behind a's buffered one: %s", body)

	startResender(t, in, env)
	last := postUntil(t, in, "fresh", "a", http.StatusOK)
	got := storedAt(t, k.Addr, "fresh", -1, []string{a, "a-behind", last}, "a")
	ia, ib := slices.Index(got, a), slices.Index(got, "a-behind")
	assert.Less(t, ia, ib, "a's records in the order they were acknowledged: %v", got)
	assert.Less(t, ib, slices.Index(got, last), "a's records in the order they were acknowledged: %v", got)
}

// TestRestartedIngestKeepsTheKeysLanes: an ingest restarted while Kafka
// is down has never read the topic's partitions; it takes their count
// from the buffer, where the ingest before it put it, and buffers a key's
// records in the same lane as before, its partition.
func TestRestartedIngestKeepsTheKeysLanes(t *testing.T) {
	k := kafkatest.NewCuttable(t)
	kafkatest.CreateTopic(t, k.Addr, "kept", 7)
	env := orderEnv(t, k.Addr)
	first := ingesttest.Start(t, k.Addr, env...)
	status, body := ingesttest.Post(t, first.URL+"/topics/kept/messages", "text/plain", "v0", "X-Kafka-Key", "kafka")
	require.Equal(t, http.StatusOK, status, body)
	require.Contains(t, body, `"partition":3`, "the Java client's partition of key kafka over 7")
	require.NoError(t, first.Stop())

	k.Cut()
	again := ingesttest.Start(t, k.Addr, env...) // the same buffer
	postUntil(t, again, "kept", "kafka", http.StatusAccepted)
	msgs := stored(t, again, "spillway.spill.kept.>", 1)
	require.Len(t, msgs, 1)
	assert.Equal(t, "spillway.spill.kept.3", msgs[0].Subject, "the key's lane is its partition, as before the restart")
}
