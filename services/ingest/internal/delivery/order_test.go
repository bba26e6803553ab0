package delivery_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
			env := []string{
				"SPILLWAY_KAFKA_BROKERS=" + k.Addr,
				"SPILLWAY_PRODUCER_ORDER=" + tc.order,
				"SPILLWAY_PRODUCER_CB_FAILS=2",
				"SPILLWAY_PRODUCER_CB_TIMEOUT=1s",
				"SPILLWAY_PRODUCER_CB_MAX_WAIT=1s",
				"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000",
				"SPILLWAY_PRODUCER_RESEND_PERIOD=2s",
				"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(),
			}
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
