package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
)

// faultyKafka is a kfake broker reached only through a TCP fault proxy
// (toxiproxy, in-process): the broker advertises the proxy's address, so
// that cutting the proxy cuts Kafka off without losing what it holds.
type faultyKafka struct {
	addr  string // the proxy: what clients use
	proxy *toxiproxy.Proxy
}

// advertisedListener is a listener that reports another address, so that
// kfake advertises the proxy in its metadata.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

func newFaultyKafka(t *testing.T) *faultyKafka {
	t.Helper()
	proxyAddr, err := net.ResolveTCPAddr("tcp", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	var upstream string
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			upstream = ln.Addr().String()
			return advertisedListener{Listener: ln, addr: proxyAddr}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(server, "kafka", proxyAddr.String(), upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return &faultyKafka{addr: proxyAddr.String(), proxy: p}
}

func (k *faultyKafka) cut()     { k.proxy.Stop() }
func (k *faultyKafka) restore() { _ = k.proxy.Start() }

// slow delays every answer from Kafka by latency.
func (k *faultyKafka) slow(t *testing.T, latency time.Duration) {
	t.Helper()
	_, err := k.proxy.Toxics.AddToxicJson(strings.NewReader(fmt.Sprintf(
		`{"name":"slow","type":"latency","stream":"downstream","attributes":{"latency":%d}}`, latency.Milliseconds())))
	if err != nil {
		t.Fatal(err)
	}
}

func (k *faultyKafka) fast(t *testing.T) {
	t.Helper()
	if err := k.proxy.Toxics.RemoveToxic(t.Context(), "slow"); err != nil {
		t.Fatal(err)
	}
}

// load posts records to topic from several goroutines until stop closes,
// and collects the ids of the acknowledged ones (200 delivered or 202
// buffered).
type load struct {
	mu        sync.Mutex
	sent      int
	delivered map[string]bool
	buffered  map[string]bool
	statuses  map[int]int
	samples   []sample // every answered request
	stop      chan struct{}
	done      sync.WaitGroup
}

// sample is one answered request: when it ended and how long it took.
type sample struct {
	end     time.Time
	latency time.Duration
}

// stats are the requests answered between from and to: how many per
// second, and their median and 99th percentile latency.
func (l *load) stats(from, to time.Time) (perSecond float64, p50, p99 time.Duration) {
	l.mu.Lock()
	var lat []time.Duration
	for _, s := range l.samples {
		if !s.end.Before(from) && s.end.Before(to) {
			lat = append(lat, s.latency)
		}
	}
	l.mu.Unlock()
	if len(lat) == 0 {
		return 0, 0, 0
	}
	slices.Sort(lat)
	return float64(len(lat)) / to.Sub(from).Seconds(), lat[len(lat)/2], lat[len(lat)*99/100]
}

func startLoad(ingestAddr, topic string, workers int) *load {
	l := &load{delivered: map[string]bool{}, buffered: map[string]bool{}, statuses: map[int]int{}, stop: make(chan struct{})}
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range workers {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodPost, "http://"+ingestAddr+"/topics/"+topic+"/messages", strings.NewReader(fmt.Sprintf("w%d-%d", w, i)))
				req.Header.Set("Content-Type", "text/plain")
				start := time.Now()
				resp, err := client.Do(req)
				l.mu.Lock()
				l.sent++
				l.mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				id := between(string(body), `"id":"`, `"`)
				l.mu.Lock()
				l.samples = append(l.samples, sample{end: time.Now(), latency: time.Since(start)})
				l.statuses[resp.StatusCode]++
				switch resp.StatusCode {
				case http.StatusOK:
					l.delivered[id] = true
				case http.StatusAccepted:
					l.buffered[id] = true
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) finish() {
	close(l.stop)
	l.done.Wait()
}

func (l *load) count() (acked int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.delivered) + len(l.buffered)
}

func between(s, start, end string) string {
	_, rest, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, end)
	return v
}

// waitAllInKafka polls topic with kcat until every acknowledged id is in
// it, then reports the figures of the run.
func waitAllInKafka(t *testing.T, broker, topic string, l *load, timeout time.Duration) {
	t.Helper()
	want := map[string]bool{}
	for id := range l.delivered {
		want[id] = true
	}
	for id := range l.buffered {
		want[id] = true
	}
	var seen map[string]int
	missing := 0
	deadline := time.Now().Add(timeout)
	for {
		seen = map[string]int{}
		for _, r := range kcatConsumeMaybe(broker, topic) {
			seen[header(r, "spillway-id")]++
		}
		missing = 0
		for id := range want {
			if seen[id] == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("sent %d, acknowledged %d (%d delivered, %d buffered), statuses %v; in Kafka %d distinct, %d missing, %d duplicates",
		l.sent, len(want), len(l.delivered), len(l.buffered), l.statuses, len(seen), missing, dups)
	if missing > 0 {
		t.Fatalf("%d acknowledged records are not in Kafka after %v", missing, timeout)
	}
}

func metricValue(t *testing.T, monitorAddr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + monitorAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

// TestFaultKafkaCutMidLoad cuts Kafka off for a few seconds while records
// are posted, then restores it: every acknowledged record reaches Kafka.
func TestFaultKafkaCutMidLoad(t *testing.T) {
	k := newFaultyKafka(t)
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1500", "SPILLWAY_PRODUCER_CB_TIMEOUT=1s")
	startResender(t, k.addr, natsAddr)

	l := startLoad(in.httpAddr, "cut", 4)
	eventually(t, 20*time.Second, "records flowing", func() bool { return l.count() >= 100 })
	k.cut()
	before := l.count()
	eventually(t, 20*time.Second, "records buffered while Kafka is cut off", func() bool { return l.count() >= before+200 })
	k.restore()
	after := l.count()
	eventually(t, 20*time.Second, "records flowing again", func() bool { return l.count() >= after+100 })
	l.finish()
	if len(l.buffered) == 0 {
		t.Fatal("no record was buffered while Kafka was cut off")
	}
	waitAllInKafka(t, k.addr, "cut", l, 60*time.Second)
}

// TestFaultKafkaSlowerThanTimeout makes Kafka slower than the produce
// timeout: records are buffered, the breaker opens, and once Kafka is fast
// again they are delivered.
func TestFaultKafkaSlowerThanTimeout(t *testing.T) {
	k := newFaultyKafka(t)
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500",
		"SPILLWAY_PRODUCER_CB_FAILS=3", "SPILLWAY_PRODUCER_CB_TIMEOUT=1s")
	startResender(t, k.addr, natsAddr)
	if postBuffered(in.httpAddr, "slow", "warm-up") != "" {
		t.Log("warm-up was buffered")
	}
	k.slow(t, 2*time.Second)
	l := startLoad(in.httpAddr, "slow", 4)
	eventually(t, 20*time.Second, "the breaker to open", func() bool {
		return metricValue(t, in.monitorAddr, "spillway_breaker_state") == 2
	})
	eventually(t, 20*time.Second, "records buffered", func() bool { return l.count() >= 100 })
	k.fast(t)
	l.finish()
	waitAllInKafka(t, k.addr, "slow", l, 60*time.Second)
}

// TestFaultResenderKilledMidDrain kills the resender (kill -9) while it
// drains, then restarts it: every buffered record reaches Kafka.
func TestFaultResenderKilledMidDrain(t *testing.T) {
	k := newFaultyKafka(t)
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	k.cut()
	l := startLoad(in.httpAddr, "drained", 4)
	eventually(t, 30*time.Second, "300 records buffered", func() bool { return l.count() >= 300 })
	l.finish()
	k.restore()

	monitor := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(filepath.Join(binDir, "spillway-resender"))
	cmd.Env = append(os.Environ(), "SPILLWAY_KAFKA_BROKERS="+k.addr, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr,
		"SPILLWAY_RESEND_MONITORING_LISTEN="+monitor, "SPILLWAY_PRODUCER_RESEND_PERIOD=100ms", "SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=100",
		"SPILLWAY_PRODUCER_WAL_ACK_WAIT=3s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000")
	cmd.Stdout = captured(t, cmd, io.Discard)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the resender to deliver some records", func() bool {
		return metricValue(t, monitor, `spillway_records_drained_total{consumer="resender",topic="drained"}`) >= 30
	})
	drained := metricValue(t, monitor, `spillway_records_drained_total{consumer="resender",topic="drained"}`)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	t.Logf("resender killed (kill -9) after delivering about %v records", drained)

	// The records the killed resender held come back after the ack wait.
	startResender(t, k.addr, natsAddr, "SPILLWAY_PRODUCER_WAL_ACK_WAIT=3s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000")
	cmd.Stdout = captured(t, cmd, io.Discard)
	cmd.Stderr = cmd.Stdout
	waitAllInKafka(t, k.addr, "drained", l, 60*time.Second)
}

// postStatus posts value to topic and returns the status code and body.
func postStatus(t *testing.T, addr, topic, value string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/topics/"+topic+"/messages", "text/plain", strings.NewReader(value))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestFaultKafkaAndJetStreamDown: with Kafka cut off and the (external)
// JetStream gone, the ingest answers 503 and acknowledges nothing.
func TestFaultKafkaAndJetStreamDown(t *testing.T) {
	k := newFaultyKafka(t)
	nats, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go nats.Start()
	if !nats.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+nats.ClientURL(), "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_WAL_PUBLISH_TIMEOUT=500ms")
	k.cut()
	nats.Shutdown()
	nats.WaitForShutdown()
	for i := range 10 {
		status, body := postStatus(t, in.httpAddr, "nowhere", fmt.Sprint(i))
		if status != http.StatusServiceUnavailable {
			t.Fatalf("record %d answered %d %s; want 503", i, status, body)
		}
	}
	t.Logf("sent 10, acknowledged 0: every answer 503")
}

// TestFaultStreamFull fills a small stream while Kafka is cut off: the
// ingest answers 507 once it is full, and every record it acknowledged
// reaches Kafka when Kafka is back.
func TestFaultStreamFull(t *testing.T) {
	k := newFaultyKafka(t)
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr, "SPILLWAY_PRODUCER_WAL_MAX_BYTES=20000",
		"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	k.cut()
	l := &load{delivered: map[string]bool{}, buffered: map[string]bool{}, statuses: map[int]int{}}
	for i := 0; ; i++ {
		status, body := postStatus(t, in.httpAddr, "full", strings.Repeat("x", 200)+fmt.Sprint(i))
		l.sent++
		l.statuses[status]++
		if status == http.StatusAccepted {
			l.buffered[between(body, `"id":"`, `"`)] = true
			continue
		}
		if status != http.StatusInsufficientStorage || !strings.Contains(body, "the buffer is full") {
			t.Fatalf("record %d answered %d %s; want 202 or 507", i, status, body)
		}
		break
	}
	k.restore()
	startResender(t, k.addr, natsAddr)
	waitAllInKafka(t, k.addr, "full", l, 60*time.Second)
}

// TestFaultDisableTopicWhileKafkaDown: a producer.wal.disable_topics topic
// is answered 503 while Kafka is down, and nothing of it is buffered.
func TestFaultDisableTopicWhileKafkaDown(t *testing.T) {
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_DISABLE_TOPICS=ordered", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500")
	k.cut()
	for i := range 10 {
		status, body := postStatus(t, in.httpAddr, "ordered", fmt.Sprint(i))
		if status != http.StatusServiceUnavailable {
			t.Fatalf("record %d answered %d %s; want 503", i, status, body)
		}
	}
	if v := metricValue(t, in.monitorAddr, `spillway_records_buffered_total{reason="unavailable",topic="ordered"}`); v > 0 {
		t.Fatalf("%v records of a disable_topics topic were buffered", v)
	}
	if v := metricValue(t, in.monitorAddr, `spillway_records_failed_total{reason="unavailable",topic="ordered"}`); v != 10 {
		t.Fatalf("failed records counted: %v, want 10", v)
	}
	t.Logf("sent 10, acknowledged 0, buffered 0: every answer 503")
}
