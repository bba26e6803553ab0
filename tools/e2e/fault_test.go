package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
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
	// The proxy listens again on its port when a cut is restored: a
	// reserved one, which no port-0 bind takes meanwhile.
	proxyAddr, err := net.ResolveTCPAddr("tcp", fmt.Sprintf("127.0.0.1:%d", reservedPort(t)))
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
// and keeps every record it sent with the answer it had: the ids of the
// acknowledged ones (200 delivered or 202 buffered), the count of each
// status, and the requests that had no answer at all.
type load struct {
	mu        sync.Mutex
	sent      int
	delivered map[string]bool
	buffered  map[string]bool
	statuses  map[int]int       // answers per status code
	noAnswer  int               // requests that ended without an answer (transport errors)
	bodies    map[int]string    // the first body of each status other than 200 and 202
	records   map[string]posted // every record sent, by value (values are unique)
	samples   []sample          // every answered request
	stop      chan struct{}
	done      sync.WaitGroup
}

// posted is one record a test sent and the answer it had.
type posted struct {
	key, value string
	status     int    // 0: no answer
	id         string // the id of a 200 or 202 answer
}

func newLoad() *load {
	return &load{delivered: map[string]bool{}, buffered: map[string]bool{}, statuses: map[int]int{},
		bodies: map[int]string{}, records: map[string]posted{}}
}

// sample is one answered request: when it started and ended, and its
// status.
type sample struct {
	start, end time.Time
	latency    time.Duration
	status     int
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

// answeredSince counts the requests started at or after from that were
// answered status.
func (l *load) answeredSince(from time.Time, status int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.samples {
		if s.status == status && !s.start.Before(from) {
			n++
		}
	}
	return n
}

// post sends one record (key may be empty) and notes it and its answer.
func (l *load) post(client *http.Client, addr, topic, key, value string) (status int, body string) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/topics/"+topic+"/messages", strings.NewReader(value))
	req.Header.Set("Content-Type", "text/plain")
	if key != "" {
		req.Header.Set("X-Kafka-Key", key)
	}
	start := time.Now()
	resp, err := client.Do(req)
	p := posted{key: key, value: value}
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status, body = resp.StatusCode, string(b)
		p.status = status
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent++
	if err != nil {
		l.noAnswer++
		l.records[value] = p
		return 0, err.Error()
	}
	l.samples = append(l.samples, sample{start: start, end: time.Now(), latency: time.Since(start), status: status})
	l.statuses[status]++
	switch status {
	case http.StatusOK, http.StatusAccepted:
		p.id = between(body, `"id":"`, `"`)
		if status == http.StatusOK {
			l.delivered[p.id] = true
		} else {
			l.buffered[p.id] = true
		}
	default:
		if _, ok := l.bodies[status]; !ok {
			l.bodies[status] = body
		}
	}
	l.records[value] = p
	return status, body
}

func startLoad(ingestAddr, topic string, workers int) *load {
	return newLoad().start(ingestAddr, topic, workers)
}

// start posts records to topic from workers goroutines until finish.
func (l *load) start(ingestAddr, topic string, workers int) *load {
	l.stop = make(chan struct{})
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
				// Keys spread the records over the partitions; each
				// value is unique, so Kafka's copy can be matched to it.
				if status, _ := l.post(client, ingestAddr, topic, fmt.Sprintf("key-%d", i%10), fmt.Sprintf("%s-w%d-%d", topic, w, i)); status == 0 {
					time.Sleep(10 * time.Millisecond)
				}
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

// requireAnswers fails the test unless every request was answered, with
// one of the statuses allowed; it names each other status with its count
// and first body.
func (l *load) requireAnswers(t *testing.T, allowed ...int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.noAnswer > 0 {
		t.Errorf("%d of %d requests had no answer", l.noAnswer, l.sent)
	}
	for status, n := range l.statuses {
		if !slices.Contains(allowed, status) {
			t.Errorf("%d requests answered %d (first: %s); want only %v", n, status, l.bodies[status], allowed)
		}
	}
}

func between(s, start, end string) string {
	_, rest, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, end)
	return v
}

// promise is what a scenario allows in Kafka beyond one copy of each
// acknowledged record; the zero promise allows nothing.
type promise struct {
	// duplicates is how many extra copies of acknowledged records there may
	// be, and why.
	duplicates int
	why        string
	// unacknowledged is how many records that were never acknowledged (no
	// answer, or an answer other than 200 and 202) may be in Kafka: a
	// request cut off after the record was stored.
	unacknowledged int
}

// found is what kcat read of a load's records.
type found struct {
	copies     map[string]int // per acknowledged id
	duplicates int            // copies beyond the first of each acknowledged id
	dupIDs     []string
}

// waitAllInKafka waits until every acknowledged record is in topic, and
// fails the test unless each is there exactly once with the key and value
// it was sent with, and nothing else is there.
func waitAllInKafka(t *testing.T, broker, topic string, l *load, timeout time.Duration) found {
	t.Helper()
	return waitInKafka(t, broker, topic, l, timeout, promise{})
}

// waitInKafka polls topic with kcat until every acknowledged id is in it,
// reports the figures of the run, and checks Kafka's copy against what was
// sent: each acknowledged record with its key and value, the duplicates
// and unacknowledged records within p, and no record that was never sent.
func waitInKafka(t *testing.T, broker, topic string, l *load, timeout time.Duration, p promise) found {
	t.Helper()
	l.mu.Lock()
	byID := map[string]posted{}
	for _, r := range l.records {
		if r.id != "" {
			byID[r.id] = r
		}
	}
	want := map[string]bool{}
	for id := range l.delivered {
		want[id] = true
	}
	for id := range l.buffered {
		want[id] = true
	}
	l.mu.Unlock()
	for id := range want {
		if _, ok := byID[id]; !ok {
			t.Fatalf("the test did not note what it sent for the acknowledged id %q", id)
		}
	}
	missingIn := func(recs []kcatRecord) int {
		seen := map[string]bool{}
		for _, r := range recs {
			seen[header(r, "spillway-id")] = true
		}
		missing := 0
		for id := range want {
			if !seen[id] {
				missing++
			}
		}
		return missing
	}
	deadline := time.Now().Add(timeout)
	for missingIn(kcatConsumeMaybe(broker, topic)) > 0 && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
	}
	recs := settledRead(t, broker, topic)

	f := found{copies: map[string]int{}}
	unacked := 0
	var wrong, unknown []string // descriptions of records that differ from what was sent, or were never sent
	for _, r := range recs {
		id := header(r, "spillway-id")
		value, key := deref(r.Payload), deref(r.Key)
		if want[id] {
			f.copies[id]++
			if f.copies[id] == 2 {
				f.dupIDs = append(f.dupIDs, id)
			}
			if sent := byID[id]; value != sent.value || key != sent.key {
				wrong = append(wrong, fmt.Sprintf("%s: key %q value %q, sent with key %q value %q", id, key, value, sent.key, sent.value))
			}
			continue
		}
		l.mu.Lock()
		sent, ok := l.records[value]
		l.mu.Unlock()
		if ok && sent.id == "" && key == sent.key {
			unacked++
		} else {
			unknown = append(unknown, fmt.Sprintf("%d/%d: id %q key %q value %q", r.Partition, r.Offset, id, key, value))
		}
	}
	missing := 0
	for id := range want {
		if f.copies[id] == 0 {
			missing++
		}
		f.duplicates += max(0, f.copies[id]-1)
	}
	l.mu.Lock()
	t.Logf("sent %d, acknowledged %d (%d delivered, %d buffered), statuses %v, %d without an answer; in Kafka %d records: %d missing, %d duplicates, %d unacknowledged",
		l.sent, len(want), len(l.delivered), len(l.buffered), l.statuses, l.noAnswer, len(recs), missing, f.duplicates, unacked)
	l.mu.Unlock()
	if len(wrong) > 0 {
		t.Errorf("%d records in Kafka differ from what was sent, such as:\n%s", len(wrong), strings.Join(wrong[:min(5, len(wrong))], "\n"))
	}
	if len(unknown) > 0 {
		t.Errorf("%d records in Kafka are none of the records sent, such as:\n%s", len(unknown), strings.Join(unknown[:min(5, len(unknown))], "\n"))
	}
	if missing > 0 {
		t.Fatalf("%d acknowledged records are not in Kafka after %v", missing, timeout)
	}
	if p.duplicates > 0 {
		t.Logf("duplicates allowed: %d (%s)", p.duplicates, p.why)
	}
	if f.duplicates > p.duplicates {
		t.Errorf("%d duplicates in Kafka (such as %v); the scenario allows %d: %s", f.duplicates, f.dupIDs[:min(5, len(f.dupIDs))], p.duplicates, p.why)
	}
	if unacked > p.unacknowledged {
		t.Errorf("%d records in Kafka were never acknowledged; the scenario allows %d", unacked, p.unacknowledged)
	}
	return f
}

// settledRead reads topic until two reads a quarter second apart find
// the same number of records (for at most 10 seconds), so that a duplicate
// on its way has landed; the last read must succeed.
func settledRead(t *testing.T, broker, topic string) []kcatRecord {
	t.Helper()
	recs := kcatConsume(t, broker, topic)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(250 * time.Millisecond)
		again := kcatConsume(t, broker, topic)
		if len(again) == len(recs) {
			return again
		}
		recs = again
	}
	return recs
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// scrapeSeries reads one series from a /metrics page: its value, and
// whether it is there.
func scrapeSeries(monitorAddr, series string) (float64, bool, error) {
	resp, err := http.Get("http://" + monitorAddr + "/metrics")
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err != nil {
				return 0, false, fmt.Errorf("metrics line %q: %w", line, err)
			}
			return v, true, nil
		}
	}
	return 0, false, nil
}

// metric returns the value of one series, and whether it is there; it
// fails the test if the page cannot be read.
func metric(t *testing.T, monitorAddr, series string) (float64, bool) {
	t.Helper()
	v, ok, err := scrapeSeries(monitorAddr, series)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	return v, ok
}

// metricValue is metric for polls: -1 when the series is not there or the
// page cannot be read.
func metricValue(t *testing.T, monitorAddr, series string) float64 {
	t.Helper()
	v, ok, err := scrapeSeries(monitorAddr, series)
	if err != nil || !ok {
		return -1
	}
	return v
}

// requireMetric fails the test unless the series is there with value want.
func requireMetric(t *testing.T, monitorAddr, series string, want float64) {
	t.Helper()
	v, ok := metric(t, monitorAddr, series)
	if !ok {
		t.Errorf("the metric %s is not exported; want it at %v", series, want)
	} else if v != want {
		t.Errorf("%s = %v, want %v", series, v, want)
	}
}

// firstSince is when the first request started at or after from that was
// answered status began; zero if there is none.
func (l *load) firstSince(from time.Time, status int) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, s := range l.samples {
		if s.status == status && !s.start.Before(from) && (first.IsZero() || s.start.Before(first)) {
			first = s.start
		}
	}
	return first
}

// TestFaultKafkaCutMidLoad cuts Kafka off for a few seconds while records
// are posted, then restores it. While it is cut off the breaker opens and
// records are buffered (202); once it is back the breaker goes half-open,
// then closed, and records are delivered (200) again within
// producer.cb.timeout and a margin. Every acknowledged record reaches Kafka
// with its key and value; the only duplicates allowed are of records in
// flight at the cut or buffered after a timeout.
func TestFaultKafkaCutMidLoad(t *testing.T) {
	parallel(t, loaded)
	const (
		workers   = 4
		cbTimeout = time.Second
		// margin is what the recovery may take beyond cbTimeout on this
		// shared machine: a reconnection, a failed probe and another
		// cbTimeout.
		margin = 15 * time.Second
	)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1500",
		fmt.Sprintf("SPILLWAY_PRODUCER_CB_TIMEOUT=%v", cbTimeout))
	natsAddr := in.natsAddr
	startResender(t, k.addr, natsAddr)
	breaker := func() float64 { return metricValue(t, in.monitorAddr, "spillway_breaker_state") }
	transitions := func(to string) float64 {
		v, _ := metric(t, in.monitorAddr, `spillway_breaker_transitions_total{to="`+to+`"}`)
		return v
	}

	l := startLoad(in.httpAddr, "cut", workers)
	eventually(t, 20*time.Second, "records delivered", func() bool { return l.answeredSince(time.Time{}, http.StatusOK) >= 100 })
	requireMetric(t, in.monitorAddr, "spillway_breaker_state", 0)
	k.cut()
	cutAt := time.Now()
	eventually(t, 20*time.Second, "the breaker to open while Kafka is cut off", func() bool { return breaker() == 2 })
	eventually(t, 20*time.Second, "records buffered while Kafka is cut off", func() bool {
		return l.answeredSince(cutAt, http.StatusAccepted) >= 200
	})
	k.restore()
	restoredAt := time.Now()
	eventually(t, cbTimeout+margin, "records delivered (200) again after Kafka is back", func() bool {
		return l.answeredSince(restoredAt, http.StatusOK) >= 100
	})
	recovery := l.firstSince(restoredAt, http.StatusOK).Sub(restoredAt)
	eventually(t, 10*time.Second, "the breaker to close", func() bool { return breaker() == 0 })
	// producer.order partition: a lane whose records were buffered stays
	// behind its backlog until the resender delivered it.
	eventually(t, 20*time.Second, "every lane's backlog delivered", func() bool {
		return metricValue(t, in.monitorAddr, "spillway_backlog_lanes") == 0
	})
	// Closed with Kafka healthy and no backlog: every record from now on
	// is delivered.
	closedAt := time.Now()
	eventually(t, 20*time.Second, "100 more records answered", func() bool {
		return l.answeredSince(closedAt, http.StatusOK)+l.answeredSince(closedAt, http.StatusAccepted) >= 100
	})
	l.finish()
	t.Logf("first record delivered %v after Kafka came back (producer.cb.timeout %v)", recovery.Round(time.Millisecond), cbTimeout)

	if n := l.answeredSince(closedAt, http.StatusAccepted); n > 0 {
		t.Errorf("%d records buffered after the breaker closed, with Kafka back", n)
	}
	for _, to := range []string{"open", "half-open", "closed"} {
		if transitions(to) < 1 {
			t.Errorf(`spillway_breaker_transitions_total{to=%q} = %v; want at least 1 (closed, open, half-open, closed)`, to, transitions(to))
		}
	}
	if len(l.buffered) == 0 {
		t.Fatal("no record was buffered while Kafka was cut off")
	}
	l.requireAnswers(t, http.StatusOK, http.StatusAccepted)
	timedOut, _ := metric(t, in.monitorAddr, `spillway_records_buffered_total{reason="timeout",topic="cut"}`)
	waitInKafka(t, k.addr, "cut", l, 60*time.Second, promise{
		duplicates: workers + int(timedOut),
		why: fmt.Sprintf("a record in flight at the cut (one per worker: %d) or buffered after a timeout (%v) may have reached Kafka before it was buffered",
			workers, timedOut),
	})
}

// TestFaultKafkaSlowerThanTimeout makes Kafka slower than the produce
// timeout: records are buffered, the breaker opens, and once Kafka is fast
// again they are delivered; the only duplicates are of records that timed
// out (in the ingest or the resender) and that Kafka took anyway. It runs
// with producer.order none: with partition, once the topic's 3
// partitions have a backlog every record waits behind it without trying
// Kafka, and the ingest's breaker, which this test watches, sees nothing.
func TestFaultKafkaSlowerThanTimeout(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500",
		"SPILLWAY_PRODUCER_CB_FAILS=3", "SPILLWAY_PRODUCER_CB_TIMEOUT=1s", "SPILLWAY_PRODUCER_ORDER=none")
	natsAddr := in.natsAddr
	resender := startResender(t, k.addr, natsAddr)
	l := newLoad()
	if status, body := l.post(http.DefaultClient, in.httpAddr, "slow", "warm-up", "slow-warm-up"); status != http.StatusOK && status != http.StatusAccepted {
		t.Fatalf("warm-up answered %d %s", status, body)
	}
	k.slow(t, 2*time.Second)
	l.start(in.httpAddr, "slow", 4)
	eventually(t, 20*time.Second, "the breaker to open", func() bool {
		return metricValue(t, in.monitorAddr, "spillway_breaker_state") == 2
	})
	eventually(t, 20*time.Second, "records buffered", func() bool { return l.count() >= 100 })
	k.fast(t)
	l.finish()
	l.requireAnswers(t, http.StatusOK, http.StatusAccepted)
	timedOut, _ := metric(t, in.monitorAddr, `spillway_records_buffered_total{reason="timeout",topic="slow"}`)
	retried, _ := metric(t, resender, `spillway_records_retried_total{consumer="resender",reason="timeout"}`)
	waitInKafka(t, k.addr, "slow", l, 60*time.Second, promise{
		duplicates: int(timedOut + retried),
		why:        fmt.Sprintf("only a record that timed out may arrive twice: %v in the ingest, %v in the resender", timedOut, retried),
	})
}

// distinctIDs are the spillway-ids of recs.
func distinctIDs(recs []kcatRecord) map[string]bool {
	ids := map[string]bool{}
	for _, r := range recs {
		ids[header(r, "spillway-id")] = true
	}
	return ids
}

// TestFaultResenderKilledMidDrain kills the resender (kill -9) while it
// drains, some but not all records in Kafka, then restarts it: every
// buffered record reaches Kafka. Duplicates come only from the ack-wait
// redelivery of what the killed resender held: records already in Kafka
// at the kill, no more than it could hold (4 workers × a batch of 10 at
// 100 records/s).
func TestFaultResenderKilledMidDrain(t *testing.T) {
	parallel(t, loaded)
	const inFlight = 4 * 10 // drain workers × batch (rate_limit/10)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	natsAddr := in.natsAddr
	k.cut()
	l := startLoad(in.httpAddr, "drained", 4)
	eventually(t, 30*time.Second, "300 records buffered", func() bool { return l.count() >= 300 })
	l.finish()
	l.requireAnswers(t, http.StatusAccepted)
	k.restore()

	killed := spawn(t, "spillway-resender", "SPILLWAY_KAFKA_BROKERS="+k.addr, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr,
		"SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:0", "SPILLWAY_PRODUCER_RESEND_PERIOD=100ms", "SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=100",
		"SPILLWAY_PRODUCER_WAL_ACK_WAIT=3s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000")
	monitor := killed.monitorAddr(t)
	eventually(t, 30*time.Second, "the resender to deliver some records", func() bool {
		return metricValue(t, monitor, `spillway_records_drained_total{consumer="resender",topic="drained"}`) >= 30
	})
	drained := metricValue(t, monitor, `spillway_records_drained_total{consumer="resender",topic="drained"}`)
	_ = killed.cmd.Process.Signal(syscall.SIGKILL)
	<-killed.exited
	atKill := distinctIDs(settledRead(t, k.addr, "drained"))
	t.Logf("resender killed (kill -9) after delivering about %v records; %d of %d in Kafka", drained, len(atKill), l.count())
	if len(atKill) == 0 || len(atKill) >= l.count() {
		t.Fatalf("%d of %d records in Kafka at the kill: it did not come mid-drain", len(atKill), l.count())
	}

	// The records the killed resender held come back after the ack wait.
	resender := startResender(t, k.addr, natsAddr, "SPILLWAY_PRODUCER_WAL_ACK_WAIT=3s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000")
	f := waitInKafka(t, k.addr, "drained", l, 60*time.Second, promise{
		duplicates: inFlight, why: "only what the killed resender held (fetched, sent, not acknowledged) comes back",
	})
	retried, _ := metric(t, resender, `spillway_records_retried_total{consumer="resender",reason="timeout"}`)
	late := 0
	for _, id := range f.dupIDs {
		if !atKill[id] {
			late++
		}
	}
	if float64(late) > retried {
		t.Errorf("%d duplicated records were not in Kafka at the kill, and the new resender retried %v after a timeout: duplicates that no redelivery explains", late, retried)
	}
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
	parallel(t, waits)
	k := newFaultyKafka(t)
	nats, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go nats.Start()
	if !nats.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+nats.ClientURL(), credentialsVar+"=", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_WAL_PUBLISH_TIMEOUT=500ms")
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
// ingest buffers records (202) until the stream is full, then answers 507
// to each further record; every record it acknowledged reaches Kafka when
// Kafka is back, once, and none it refused.
func TestFaultStreamFull(t *testing.T) {
	parallel(t, waits)
	const (
		maxBytes = 20000 // the stream: dozens of records of about 200 bytes fit
		bound    = 1000  // requests before the stream must be full
	)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, fmt.Sprintf("SPILLWAY_PRODUCER_WAL_MAX_BYTES=%d", maxBytes),
		"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	natsAddr := in.natsAddr
	k.cut()
	l := newLoad()
	full := -1
	for i := 0; i < bound && full < 0; i++ {
		status, body := l.post(http.DefaultClient, in.httpAddr, "full", fmt.Sprintf("key-%d", i%10), strings.Repeat("x", 200)+fmt.Sprint(i))
		switch {
		case status == http.StatusAccepted:
		case status == http.StatusInsufficientStorage && strings.Contains(body, "the buffer is full"):
			full = i
		default:
			t.Fatalf("record %d answered %d %s; want 202 or 507", i, status, body)
		}
	}
	if full < 0 {
		t.Fatalf("%d records of 200 bytes buffered in a stream of %d bytes, none refused", bound, maxBytes)
	}
	if len(l.buffered) < 10 {
		t.Fatalf("only %d records buffered before the first 507: the stream of %d bytes holds dozens", len(l.buffered), maxBytes)
	}
	// Full stays full: the next records, a little larger than the refused
	// one, are refused too.
	for i := range 5 {
		if status, body := l.post(http.DefaultClient, in.httpAddr, "full", "key-0", strings.Repeat("x", 200)+fmt.Sprintf("after-full-%d", i)); status != http.StatusInsufficientStorage {
			t.Fatalf("record %d after the stream filled answered %d %s; want 507", i, status, body)
		}
	}
	t.Logf("stream of %d bytes full after %d records buffered", maxBytes, len(l.buffered))
	l.requireAnswers(t, http.StatusAccepted, http.StatusInsufficientStorage)
	k.restore()
	startResender(t, k.addr, natsAddr)
	waitAllInKafka(t, k.addr, "full", l, 60*time.Second)
}

// streamSubjects connects to the ingest's embedded JetStream and returns
// the message count of each subject of the SPILLWAY stream.
func streamSubjects(t *testing.T, natsAddr string) map[string]uint64 {
	t.Helper()
	nc, err := natsConnect(natsAddr)
	if err != nil {
		t.Fatalf("nats: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), "SPILLWAY")
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	info, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(">"))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.Subjects
}

// TestFaultDisableTopicWhileKafkaDown: a producer.wal.disable_topics topic
// is answered 503 while Kafka is down, and nothing of it is buffered; a
// topic beside it is buffered, which shows where to look.
func TestFaultDisableTopicWhileKafkaDown(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, "SPILLWAY_PRODUCER_WAL_DISABLE_TOPICS=ordered", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500")
	natsAddr := in.natsAddr
	k.cut()
	for i := range 10 {
		status, body := postStatus(t, in.httpAddr, "ordered", fmt.Sprint(i))
		if status != http.StatusServiceUnavailable {
			t.Fatalf("record %d answered %d %s; want 503", i, status, body)
		}
	}
	if status, body := postStatus(t, in.httpAddr, "spillable", "x"); status != http.StatusAccepted {
		t.Fatalf("a record of a topic that may be buffered answered %d %s; want 202", status, body)
	}
	requireMetric(t, in.monitorAddr, `spillway_records_failed_total{reason="unavailable",topic="ordered"}`, 10)
	// Five failures (producer.cb.fails) opened the breaker.
	requireMetric(t, in.monitorAddr, `spillway_records_buffered_total{reason="breaker_open",topic="spillable"}`, 1)
	if v, ok := metric(t, in.monitorAddr, `spillway_records_buffered_total{reason="unavailable",topic="ordered"}`); ok && v != 0 {
		t.Errorf("%v records of a disable_topics topic counted as buffered", v)
	}
	subjects := streamSubjects(t, natsAddr)
	spilled := uint64(0)
	for subject, n := range subjects {
		if strings.HasPrefix(subject, "spillway.spill.spillable.") { // and the key's lane
			spilled += n
		}
	}
	if spilled != 1 {
		t.Errorf("the stream's subjects %v; want spillway.spill.spillable.LANE with 1 message", subjects)
	}
	for subject, n := range subjects {
		if strings.Contains(subject, ".ordered") {
			t.Errorf("%d messages of the disable_topics topic in the stream, on %s", n, subject)
		}
	}
	t.Logf("sent 10, acknowledged 0, buffered 0: every answer 503; the stream holds %v", subjects)
}
