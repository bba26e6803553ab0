package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// natsNode is one node of a three-node JetStream cluster, run as its own
// process (bin/devnats) so that kill -9 loses it for real.
type natsNode struct {
	name                     string
	port, monitor, routePort int
	store                    string
	cmd                      *exec.Cmd
	done                     chan struct{}
	out                      syncBuffer // its output, over its restarts
}

// natsCluster is three devnats processes routed to one another on
// loopback, admitting the tests' nkey user.
type natsCluster struct {
	t     *testing.T
	nodes []*natsNode
}

// devnatsBin is bin/devnats, built into binDir when the binaries under
// test were built by TestMain (which does not build it).
func devnatsBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "devnats")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if out, err := exec.Command("go", "build", "-o", bin, "../devnats").CombinedOutput(); err != nil {
		t.Fatalf("build devnats: %v\n%s", err, out)
	}
	return bin
}

func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t}
	bin := devnatsBin(t)
	for i := range 3 {
		// Reserved ports: the routes name them before the nodes listen,
		// and a node restarts on its own.
		c.nodes = append(c.nodes, &natsNode{name: fmt.Sprintf("nats-%d", i+1), port: reservedPort(t), monitor: reservedPort(t),
			routePort: reservedPort(t), store: t.TempDir()})
	}
	for _, n := range c.nodes {
		c.start(bin, n)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.kill(n)
		}
	})
	c.waitHealthy()
	return c
}

func (c *natsCluster) start(bin string, n *natsNode) {
	c.t.Helper()
	var routes []string
	for _, p := range c.nodes {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p.routePort))
	}
	cmd := exec.Command(bin, "-name", n.name, "-cluster", "e2e", "-port", fmt.Sprint(n.port), "-monitor", fmt.Sprint(n.monitor),
		"-route-port", fmt.Sprint(n.routePort), "-routes", strings.Join(routes, ","), "-store", n.store,
		"-credentials", os.Getenv(credentialsVar))
	cmd.Stdout = captured(c.t, cmd, &n.out)
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(n.done) }()
}

// leaderLog is what the nodes logged of their leaders (the meta layer's,
// the streams'), for a test that failed waiting on an election.
func (c *natsCluster) leaderLog() string {
	var b strings.Builder
	for _, n := range c.nodes {
		for line := range strings.Lines(n.out.String()) {
			if strings.Contains(line, "leader") {
				b.WriteString(n.name + ": " + line)
			}
		}
	}
	return b.String()
}

// kill is kill -9 of the node, waited for.
func (c *natsCluster) kill(n *natsNode) {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
	n.cmd = nil
}

// restart starts a killed node again on its store.
func (c *natsCluster) restart(n *natsNode) {
	c.t.Helper()
	c.start(devnatsBin(c.t), n)
}

func (c *natsCluster) urls() string {
	var u []string
	for _, n := range c.nodes {
		u = append(u, fmt.Sprintf("nats://127.0.0.1:%d", n.port))
	}
	return strings.Join(u, ",")
}

// waitHealthy waits until every running node answers /healthz 200, which
// needs a JetStream meta leader and current streams.
func (c *natsCluster) waitHealthy() {
	c.t.Helper()
	eventually(c.t, 60*time.Second, "the NATS nodes to be healthy", func() bool {
		for _, n := range c.nodes {
			if n.cmd == nil {
				continue
			}
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monitor))
			if err != nil {
				return false
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
		}
		return true
	})
}

// leader is the node that leads stream, as a running node's /jsz says;
// nil when none says.
func (c *natsCluster) leader(stream string) *natsNode {
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz?streams=true", n.monitor))
		if err != nil {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster *struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		err = json.NewDecoder(resp.Body).Decode(&jsz)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name == stream && s.Cluster != nil {
					for _, m := range c.nodes {
						if m.name == s.Cluster.Leader {
							return m
						}
					}
				}
			}
		}
	}
	return nil
}

// metaLeader is the JetStream meta layer's leader as n's /jsz says; ""
// when it knows none. (A leader left alone still names itself for 10-20 s
// after it lost its quorum: ask a node that has just joined.)
func (c *natsCluster) metaLeader(n *natsNode) string {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz", n.monitor))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var jsz struct {
		Meta *struct {
			Leader string `json:"leader"`
		} `json:"meta_cluster"`
	}
	if json.NewDecoder(resp.Body).Decode(&jsz) != nil || jsz.Meta == nil {
		return ""
	}
	return jsz.Meta.Leader
}

// streamPeers are the nodes that hold stream, as a running node's /jsz
// says: its leader and replicas, whether running or not.
func (c *natsCluster) streamPeers(stream string) []string {
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz?streams=true", n.monitor))
		if err != nil {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster *struct {
						Leader   string `json:"leader"`
						Replicas []struct {
							Name string `json:"name"`
						} `json:"replicas"`
					} `json:"cluster"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		err = json.NewDecoder(resp.Body).Decode(&jsz)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name == stream && s.Cluster != nil && s.Cluster.Leader != "" {
					peers := []string{s.Cluster.Leader}
					for _, r := range s.Cluster.Replicas {
						peers = append(peers, r.Name)
					}
					return peers
				}
			}
		}
	}
	return nil
}

// spread posts records from workers goroutines to a set of ingests, the
// next ingest for each record; a record not acknowledged (no answer, or an
// answer other than 200 and 202) is sent again as a new record (its value
// marked -rN) to the next ingest, as a client with two addresses would.
type spread struct {
	l *load

	mu        sync.Mutex
	addrs     []string
	failed    int // requests not acknowledged
	retriedOK int // records acknowledged on a second or later try
	gaveUp    int // records not acknowledged after every try

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func newSpread(addrs ...string) *spread { return &spread{l: newLoad(), addrs: addrs} }

func (s *spread) setAddr(i int, addr string) {
	s.mu.Lock()
	s.addrs[i] = addr
	s.mu.Unlock()
}

func (s *spread) pick(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[n%len(s.addrs)]
}

func (s *spread) start(topic string, workers int) *spread {
	s.stop = make(chan struct{})
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range workers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-s.stop:
					return
				default:
				}
				s.send(client, topic, fmt.Sprintf("key-%d", i%10), fmt.Sprintf("%s-w%d-%d", topic, w, i), w+i)
			}
		}()
	}
	return s
}

// send posts one record, trying up to 8 times over the ingests.
func (s *spread) send(client *http.Client, topic, key, value string, n int) {
	for try := range 8 {
		v := value
		if try > 0 {
			v = fmt.Sprintf("%s-r%d", value, try)
		}
		status, _ := s.l.post(client, s.pick(n+try), topic, key, v)
		if status == http.StatusOK || status == http.StatusAccepted {
			if try > 0 {
				s.mu.Lock()
				s.retriedOK++
				s.mu.Unlock()
			}
			return
		}
		s.mu.Lock()
		s.failed++
		s.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	s.mu.Lock()
	s.gaveUp++
	s.mu.Unlock()
}

// finish stops the load and waits for its requests; again, it does
// nothing.
func (s *spread) finish() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
}

func (s *spread) counts() (failed, retriedOK, gaveUp int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed, s.retriedOK, s.gaveUp
}

func (s *spread) buffered() int {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return len(s.l.buffered)
}

// unacked is how many requests had no acknowledgement: the most records
// that may be in Kafka without having been acknowledged.
func (s *spread) unacked() int {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return s.l.sent - len(s.l.delivered) - len(s.l.buffered)
}

// TestClusterFaults runs two ingests on a three-node JetStream cluster
// (bin/devnats, each its own process) with a 3-replica stream, the load
// spread over both, and loses one process at a time: an ingest (kill -9,
// then SIGTERM one at a time), the NATS node that leads the stream, two
// of the three nodes, a resender mid-drain. Every acknowledged record
// must reach Kafka, with its key and value; the subtests run in order on
// one cluster.
func TestClusterFaults(t *testing.T) {
	parallel(t, loaded)
	const stream = "SPILLWAY"
	k := newFaultyKafka(t)
	nc := startNATSCluster(t)
	// producer.order none: subtest c has two resenders drain one consumer
	// at once, which the ordered drain does not do (one holds the lease,
	// the other stands by); TestOrderPerKeyCluster and
	// TestOrderPerKeyResenderKilled cover the ordered setup.
	ingestEnv := []string{
		"SPILLWAY_PRODUCER_ORDER=none",
		"SPILLWAY_PRODUCER_WAL_NATS_URLS=" + nc.urls(), "SPILLWAY_PRODUCER_WAL_REPLICAS=3",
		"SPILLWAY_PRODUCER_WAL_PUBLISH_TIMEOUT=2s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000",
		"SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1s",
	}
	drainEnv := []string{"SPILLWAY_PRODUCER_ORDER=none", "SPILLWAY_PRODUCER_WAL_NATS_URLS=" + nc.urls(), "SPILLWAY_PRODUCER_WAL_ACK_WAIT=3s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000"}
	// The ingests outlive the subtest that starts them: their cleanup
	// belongs to the whole test.
	parent := t
	ingests := []*ingestProcess{startIngest(t, k.addr, ingestEnv...), startIngest(t, k.addr, ingestEnv...)}
	addrs := func() []string { return []string{ingests[0].httpAddr, ingests[1].httpAddr} }
	// The resender that runs throughout; (c) starts and kills a second.
	resender := startResender(t, k.addr, "", append(drainEnv, "SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=50")...)

	t.Run("b ingest killed under load", func(t *testing.T) {
		s := newSpread(addrs()...).start("cluster-b", 6)
		defer s.finish() // when the test fails before it
		eventually(t, 30*time.Second, "100 records acknowledged", func() bool { return s.l.count() >= 100 })
		_ = ingests[0].cmd.Process.Signal(syscall.SIGKILL)
		<-ingests[0].exited
		killedAt := s.l.count()
		eventually(t, 30*time.Second, "100 more records acknowledged by the other ingest", func() bool { return s.l.count() >= killedAt+100 })
		s.finish()
		ingests[0] = startIngest(parent, k.addr, ingestEnv...)
		failed, retriedOK, gaveUp := s.counts()
		t.Logf("ingest 1 killed (kill -9) after %d acknowledged; %d requests failed (%d without an answer), %d records acknowledged on a retry, %d given up",
			killedAt, failed, s.l.noAnswer, retriedOK, gaveUp)
		if failed == 0 || retriedOK == 0 || gaveUp > 0 {
			t.Errorf("want failed requests retried to the other ingest and acknowledged there; %d failed, %d acknowledged on a retry, %d given up", failed, retriedOK, gaveUp)
		}
		waitInKafka(t, k.addr, "cluster-b", s.l, 60*time.Second, promise{unacknowledged: s.unacked()})
	})

	t.Run("e rolling restart of the ingests", func(t *testing.T) {
		s := newSpread(addrs()...).start("cluster-e", 6)
		defer s.finish()
		for i := range ingests {
			before := s.l.count()
			eventually(t, 30*time.Second, "50 records acknowledged", func() bool { return s.l.count() >= before+50 })
			// As a Service does, new requests go to the other ingest from
			// the moment this one is told to stop; the ones it holds must
			// be answered or fail (and be retried).
			failedBefore, _, _ := s.counts()
			s.setAddr(i, ingests[1-i].httpAddr)
			_ = ingests[i].cmd.Process.Signal(syscall.SIGTERM)
			if code := ingests[i].exitCode(t, 45*time.Second); code != 0 {
				t.Errorf("ingest %d exited %d after SIGTERM", i+1, code)
			}
			failedAfter, _, _ := s.counts()
			t.Logf("ingest %d stopped (SIGTERM) under load: %d requests failed meanwhile", i+1, failedAfter-failedBefore)
			ingests[i] = startIngest(parent, k.addr, ingestEnv...)
			s.setAddr(i, ingests[i].httpAddr)
		}
		before := s.l.count()
		eventually(t, 30*time.Second, "50 records acknowledged after the restarts", func() bool { return s.l.count() >= before+50 })
		s.finish()
		failed, retriedOK, gaveUp := s.counts()
		t.Logf("rolling restart (SIGTERM one at a time): %d requests failed (%d without an answer, statuses %v), %d acknowledged on a retry, %d given up",
			failed, s.l.noAnswer, s.l.statuses, retriedOK, gaveUp)
		if gaveUp > 0 {
			t.Errorf("%d records were not acknowledged by either ingest", gaveUp)
		}
		waitInKafka(t, k.addr, "cluster-e", s.l, 60*time.Second, promise{unacknowledged: s.unacked()})
	})

	// (a), (d) and (c) run with Kafka cut off: records are buffered in the
	// cluster, and drained once Kafka is back.
	k.cut()
	var sa *spread
	t.Run("a stream leader killed while spilling", func(t *testing.T) {
		sa = newSpread(addrs()...).start("cluster-a", 6)
		defer sa.finish()
		eventually(t, 30*time.Second, "200 records buffered", func() bool { return sa.buffered() >= 200 })
		leader := nc.leader(stream)
		if leader == nil {
			t.Fatal("no node says which leads the stream")
		}
		killed := time.Now()
		nc.kill(leader)
		eventually(t, 60*time.Second, "a record buffered after the kill", func() bool { return !sa.l.firstSince(killed, http.StatusAccepted).IsZero() })
		gap := sa.l.firstSince(killed, http.StatusAccepted).Sub(killed)
		var newLeader string
		eventually(t, 30*time.Second, "a new stream leader", func() bool {
			n := nc.leader(stream)
			if n != nil && n != leader {
				newLeader = n.name
				return true
			}
			return false
		})
		// Each ingest answers "buffered" again.
		for i, in := range ingests {
			eventually(t, 30*time.Second, fmt.Sprintf("ingest %d to buffer again", i+1), func() bool {
				status, _ := sa.l.post(http.DefaultClient, in.httpAddr, "cluster-a", "probe", fmt.Sprintf("cluster-a-probe-%d-%d", i, time.Now().UnixNano()))
				return status == http.StatusAccepted
			})
		}
		before := sa.l.count()
		eventually(t, 30*time.Second, "100 more records buffered", func() bool { return sa.l.count() >= before+100 })
		sa.finish()
		failed, retriedOK, gaveUp := sa.counts()
		t.Logf("stream leader %s killed (kill -9); %s leads now; first record buffered %v after the kill; %d requests failed (statuses %v, %d without an answer), %d acknowledged on a retry, %d given up",
			leader.name, newLeader, gap.Round(time.Millisecond), failed, sa.l.statuses, sa.l.noAnswer, retriedOK, gaveUp)
		sa.l.requireAnswers(t, http.StatusAccepted, http.StatusServiceUnavailable)
		nc.restart(leader)
		nc.waitHealthy()
	})

	var sd *spread
	t.Run("d two of three nodes down", func(t *testing.T) {
		nc.kill(nc.nodes[0])
		nc.kill(nc.nodes[1])
		down := time.Now()
		sd = newSpread(addrs()...)
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 2 {
					sd.l.post(http.DefaultClient, sd.pick(w), "cluster-d", "k", fmt.Sprintf("cluster-d-w%d-%d", w, i))
				}
			}()
		}
		wg.Wait()
		t.Logf("two of three NATS nodes down, Kafka cut off: sent %d, statuses %v, %d without an answer; first 503: %s",
			sd.l.sent, sd.l.statuses, sd.l.noAnswer, sd.l.bodies[http.StatusServiceUnavailable])
		if n := sd.l.count(); n > 0 {
			t.Errorf("%d records acknowledged with no quorum; want none", n)
		}
		sd.l.requireAnswers(t, http.StatusServiceUnavailable)
		if !strings.Contains(sd.l.bodies[http.StatusServiceUnavailable], "buffer") && !strings.Contains(sd.l.bodies[http.StatusServiceUnavailable], "JetStream") {
			t.Errorf("the 503 does not say the buffer is unavailable: %s", sd.l.bodies[http.StatusServiceUnavailable])
		}
		nc.restart(nc.nodes[0])
		nc.restart(nc.nodes[1])
		nc.waitHealthy()
		t.Logf("cluster healthy again %v after the two nodes went down", time.Since(down).Round(time.Millisecond))
	})

	t.Run("c resender killed mid-drain while another runs", func(t *testing.T) {
		const inFlight = 4 * 10 // the killed resender's drain workers × batch (rate_limit/10)
		if sa == nil {
			t.Skip("runs after subtest a, whose records it drains")
		}
		s := newSpread(addrs()...).start("cluster-c", 6)
		defer s.finish()
		eventually(t, 60*time.Second, "300 records buffered", func() bool { return s.l.count() >= 300 })
		s.finish()
		s.l.requireAnswers(t, http.StatusAccepted, http.StatusServiceUnavailable)

		k.restore()
		second := spawn(t, "spillway-resender", append([]string{"SPILLWAY_KAFKA_BROKERS=" + k.addr, "SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:0",
			"SPILLWAY_PRODUCER_RESEND_PERIOD=100ms", "SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=100", "SPILLWAY_PRODUCER_CB_TIMEOUT=500ms"}, drainEnv...)...)
		monitor := second.loggedAddr(t, "resender started", "monitoring")
		waitOK(t, "http://"+monitor+"/readyz", "the second resender to be ready")
		drained := func() float64 {
			return max(0, metricValue(t, monitor, `spillway_records_drained_total{consumer="resender",topic="cluster-c"}`)) +
				max(0, metricValue(t, monitor, `spillway_records_drained_total{consumer="resender",topic="cluster-a"}`))
		}
		for deadline := time.Now().Add(30 * time.Second); drained() < 30; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				resp, err := http.Get("http://" + monitor + "/metrics")
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					for _, line := range strings.Split(string(b), "\n") {
						if strings.HasPrefix(line, "spillway_") {
							t.Log(line)
						}
					}
				}
				t.Fatal("timed out after 30s waiting for the second resender to deliver some records")
			}
		}
		byKilled := drained()
		_ = second.cmd.Process.Signal(syscall.SIGKILL)
		<-second.exited
		// What is in Kafka at the kill (either topic may not exist yet):
		// read until two reads a quarter second apart agree.
		atKill := map[string]bool{}
		for n, deadline := -1, time.Now().Add(10*time.Second); n != len(atKill) && time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			n = len(atKill)
			atKill = distinctIDs(append(kcatConsumeMaybe(k.addr, "cluster-a"), kcatConsumeMaybe(k.addr, "cluster-c")...))
		}
		total := sa.l.count() + s.l.count()
		t.Logf("resender killed (kill -9) after delivering about %v records; %d of %d in Kafka", byKilled, len(atKill), total)
		if len(atKill) >= total {
			t.Fatalf("all %d records were in Kafka at the kill: it did not come mid-drain", total)
		}
		fa := waitInKafka(t, k.addr, "cluster-a", sa.l, 90*time.Second, promise{duplicates: inFlight, why: "only what the killed resender held comes back", unacknowledged: sa.unacked()})
		fc := waitInKafka(t, k.addr, "cluster-c", s.l, 90*time.Second, promise{duplicates: inFlight, why: "only what the killed resender held comes back", unacknowledged: s.unacked()})
		if d := fa.duplicates + fc.duplicates; d > inFlight {
			t.Errorf("%d duplicates over cluster-a and cluster-c; the killed resender held at most %d", d, inFlight)
		}
		retried := max(0, metricValue(t, resender, `spillway_records_retried_total{consumer="resender",reason="timeout"}`))
		late := 0
		for _, id := range append(fa.dupIDs, fc.dupIDs...) {
			if !atKill[id] {
				late++
			}
		}
		t.Logf("duplicates: %d (cluster-a %d, cluster-c %d), %d of them not in Kafka at the kill; the surviving resender retried %v after a timeout",
			fa.duplicates+fc.duplicates, fa.duplicates, fc.duplicates, late, retried)
		if float64(late) > retried {
			t.Errorf("%d duplicated records were not in Kafka at the kill, and the surviving resender retried %v after a timeout: duplicates that no redelivery explains", late, retried)
		}
		// A record answered 503 because JetStream did not acknowledge it in
		// time may still have been proposed to the stream, and be stored
		// once the nodes are back: like a request without an answer, it
		// was not acknowledged, and it may arrive. Such records are
		// counted; each must be one that was sent, with its key.
		refused := kcatConsumeMaybe(k.addr, "cluster-d")
		sd.l.mu.Lock()
		for _, r := range refused {
			if sent, ok := sd.l.records[deref(r.Payload)]; !ok || sent.id != "" || sent.key != deref(r.Key) {
				t.Errorf("a record in cluster-d is none of the records refused: key %q value %q", deref(r.Key), deref(r.Payload))
			}
		}
		sd.l.mu.Unlock()
		t.Logf("of the %d records refused with 503 while two nodes were down, %d reached Kafka once the nodes were back", sd.l.sent, len(refused))
	})
}

// TestMakeRunCluster runs devrun -cluster (what `make run-cluster` runs,
// its ports shifted by -port-offset so as not to meet a running one): a
// record posted to each ingest is delivered and found with kcat, the
// stream has 3 replicas on the three nodes, and Ctrl-C stops everything.
func TestMakeRunCluster(t *testing.T) {
	parallel(t, waits)
	devnatsBin(t) // devrun starts it from binDir
	base := []int{4222, 4223, 4224, 8222, 8223, 8224, 6222, 6223, 6224, 18080, 18180, 18282, 18382, 19092, 19192, 28080, 28180}
	offset := clusterPortOffset(t)
	// devrun hands the development broker's port, and the drains', to
	// what it starts: reserved ones.
	kafkaPort := reservedPort(t)
	broker := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	cmd, out, exited := startDevrun(t, 90*time.Second, []string{
		fmt.Sprintf("SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:%d", reservedPort(t)),
		fmt.Sprintf("SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:%d", reservedPort(t)),
	}, "-cluster", "-bin", binDir, "-data", t.TempDir(),
		"-port-offset", fmt.Sprint(offset), "-dev-broker-port", fmt.Sprint(kafkaPort))
	httpAddrs := []string{fmt.Sprintf("127.0.0.1:%d", 18080+offset), fmt.Sprintf("127.0.0.1:%d", 18180+offset)}
	for _, a := range httpAddrs {
		if !strings.Contains(out.String(), "http://"+a) {
			t.Errorf("devrun does not print the ingest at http://%s", a)
		}
	}
	l := newLoad()
	for i, a := range httpAddrs {
		if status, body := l.post(http.DefaultClient, a, "cluster-run", fmt.Sprintf("k%d", i), fmt.Sprintf("via ingest %d", i+1)); status != http.StatusOK {
			t.Fatalf("POST to %s answered %d %s", a, status, body)
		}
	}
	waitAllInKafka(t, broker, "cluster-run", l, 30*time.Second)

	// The nodes devrun started, for leader() to ask (a non-nil cmd: running).
	nodes := &natsCluster{t: t}
	for i := range 3 {
		nodes.nodes = append(nodes.nodes, &natsNode{name: fmt.Sprintf("nats-%d", i+1), monitor: 8222 + offset + i, cmd: &exec.Cmd{}})
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz?streams=true&config=true", 8222+offset))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"num_replicas": 3`) && !strings.Contains(string(b), `"num_replicas":3`) {
		t.Errorf("the stream is not kept on 3 replicas: %s", b)
	}
	if nodes.leader("SPILLWAY") == nil {
		t.Errorf("no node leads the stream")
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("devrun exited with %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("devrun did not stop within 60s of Ctrl-C")
	}
	for _, p := range base {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p+offset), time.Second); err == nil {
			c.Close()
			t.Errorf("port %d still answers after devrun stopped", p+offset)
		}
	}
}
