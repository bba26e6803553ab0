package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMakeRunClusterRestarts stops devrun -cluster with SIGTERM and starts
// it again on the same stores (-data), as a second `make run-cluster`
// does: both ingests become ready within 60 s, and every record posted
// before and after the restart is in Kafka once. Kafka is the test's own,
// so that it outlives devrun and keeps what the first run delivered.
func TestMakeRunClusterRestarts(t *testing.T) {
	parallel(t, waits)
	devnatsBin(t) // devrun starts it from binDir
	offset, data, broker := clusterPortOffset(t), t.TempDir(), newBroker(t)
	env := clusterEnv(t, broker)
	args := []string{"-cluster", "-bin", binDir, "-data", data, "-port-offset", fmt.Sprint(offset)}
	ingests := []string{fmt.Sprintf("127.0.0.1:%d", 18080+offset), fmt.Sprintf("127.0.0.1:%d", 18180+offset)}
	l := newLoad()
	postEach := func(round string) {
		t.Helper()
		for i, a := range ingests {
			for j := range 5 {
				if status, body := l.post(http.DefaultClient, a, "cluster-restart", fmt.Sprintf("k%d-%d", i, j), fmt.Sprintf("%s, record %d via %s", round, j, a)); status != http.StatusOK {
					t.Fatalf("%s: POST to %s answered %d %s", round, a, status, body)
				}
			}
		}
	}

	first := startDevrunCluster(t, 90*time.Second, env, args...)
	postEach("first run")
	waitAllInKafka(t, broker, "cluster-restart", l, 30*time.Second)
	first.stop(t)

	start := time.Now()
	second := startDevrunCluster(t, 60*time.Second, env, args...)
	t.Logf("devrun -cluster was running again %v after it was started on the same stores", time.Since(start).Round(100*time.Millisecond))
	for _, a := range []int{28080 + offset, 28180 + offset} {
		if err := serviceReady(fmt.Sprintf("http://127.0.0.1:%d", a)); err != nil {
			t.Errorf("ingest monitoring 127.0.0.1:%d: %v", a, err)
		}
	}
	postEach("second run")
	waitAllInKafka(t, broker, "cluster-restart", l, 30*time.Second)
	second.stop(t)
}

// TestMakeRunClusterRestartsWithRecordsBuffered: with Kafka cut, load on
// both ingests of devrun -cluster buffers records in the 3-replica
// stream; devrun is then stopped, with SIGTERM or with kill -9 of every
// process it started, and started again on the same stores with Kafka
// back: both ingests are ready within 60 s, and every acknowledged record
// reaches Kafka from the stores, once.
func TestMakeRunClusterRestartsWithRecordsBuffered(t *testing.T) {
	parallel(t, loaded)
	const buffered = 10000
	devnatsBin(t)
	for _, stop := range []string{"SIGTERM", "kill -9"} {
		t.Run(stop, func(t *testing.T) {
			k := newFaultyKafka(t)
			offset, data := clusterPortOffset(t), t.TempDir()
			env := append(clusterEnv(t, k.addr), "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_CB_FAILS=1")
			mark := env[0]
			args := []string{"-cluster", "-bin", binDir, "-data", data, "-port-offset", fmt.Sprint(offset)}
			first := startDevrunCluster(t, 90*time.Second, env, args...)
			k.cut()
			s := newSpread(fmt.Sprintf("127.0.0.1:%d", 18080+offset), fmt.Sprintf("127.0.0.1:%d", 18180+offset)).start("restart-buffered", 8)
			eventually(t, 90*time.Second, fmt.Sprint(buffered, " records buffered"), func() bool { return s.l.count() >= buffered })
			s.finish()
			if n := s.buffered(); n < buffered {
				t.Fatalf("%d records buffered, want %d (Kafka is cut)", n, buffered)
			}
			if stop == "SIGTERM" {
				first.stop(t)
			} else {
				first.stopped = true
				reapCluster(mark) // devrun and every process it started
				<-first.exited
			}

			k.restore()
			start := time.Now()
			startDevrunCluster(t, 60*time.Second, env, args...)
			t.Logf("after %s with %d records buffered, devrun -cluster was running again %v after its start on the same stores",
				stop, s.buffered(), time.Since(start).Round(100*time.Millisecond))
			waitInKafka(t, k.addr, "restart-buffered", s.l, 120*time.Second, promise{unacknowledged: s.unacked()})
		})
	}
}

// TestMakeRunClusterNodeKilled kills the NATS node that leads the stream
// (kill -9) under devrun -cluster, with Kafka cut and load on both
// ingests: devrun says so and keeps running, and so do the other
// processes it started; the node is started again on its store, every
// node answers /healthz again, the ingests are ready, and once Kafka is
// back every acknowledged record is in Kafka (requests that failed while
// the stream had no leader are sent again to the other ingest, as a
// client with two addresses would).
func TestMakeRunClusterNodeKilled(t *testing.T) {
	parallel(t, loaded)
	devnatsBin(t)
	k := newFaultyKafka(t)
	offset, data, broker := clusterPortOffset(t), t.TempDir(), k.addr
	run := startDevrunCluster(t, 90*time.Second, append(clusterEnv(t, broker), "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500", "SPILLWAY_PRODUCER_CB_FAILS=1",
		"SPILLWAY_PRODUCER_CB_TIMEOUT=1s", "SPILLWAY_PRODUCER_RESEND_PERIOD=200ms"),
		"-cluster", "-bin", binDir, "-data", data, "-port-offset", fmt.Sprint(offset))
	k.cut()
	s := newSpread(fmt.Sprintf("127.0.0.1:%d", 18080+offset), fmt.Sprintf("127.0.0.1:%d", 18180+offset)).start("node-killed-load", 6)
	defer s.finish()
	eventually(t, 60*time.Second, "300 records buffered", func() bool { return s.l.count() >= 300 })

	nodes := &natsCluster{t: t}
	pids := map[string]int{}
	for i := range 3 {
		n := &natsNode{name: fmt.Sprintf("nats-%d", i+1), monitor: 8222 + offset + i, cmd: &exec.Cmd{}}
		nodes.nodes = append(nodes.nodes, n)
		pids[n.name] = pidOf(t, "-store", filepath.Join(data, n.name))
	}
	var victim *natsNode
	eventually(t, 30*time.Second, "a node to lead the stream", func() bool {
		victim = nodes.leader("SPILLWAY")
		return victim != nil
	})
	if err := syscall.Kill(pids[victim.name], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	eventually(t, 10*time.Second, "devrun to say "+victim.name+" exited", func() bool {
		return strings.Contains(run.out.String(), "devrun: "+victim.name+" exited unexpectedly: signal: killed")
	})
	healthy := func(n *natsNode) bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monitor))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	// The others answer 503 for a few seconds too, until the stream and
	// its consumers have elected new leaders.
	eventually(t, 30*time.Second, victim.name+" to be started again and every node to be healthy", func() bool {
		select {
		case err := <-run.exited:
			run.stopped = true
			t.Fatalf("devrun exited after a node died: %v", err)
		default:
		}
		return healthy(nodes.nodes[0]) && healthy(nodes.nodes[1]) && healthy(nodes.nodes[2])
	})
	t.Logf("every node answered /healthz %v after kill -9 of %s", time.Since(killed).Round(100*time.Millisecond), victim.name)
	atHealthy := s.l.count()
	eventually(t, 60*time.Second, "300 more records buffered", func() bool { return s.l.count() >= atHealthy+300 })
	s.finish()
	failed, retriedOK, gaveUp := s.counts()
	t.Logf("load: %d acknowledged, %d requests failed around the kill, %d acknowledged on a retry, %d given up", s.l.count(), failed, retriedOK, gaveUp)
	k.restore()
	for _, n := range nodes.nodes {
		pid := pidOf(t, "-store", filepath.Join(data, n.name))
		switch {
		case n == victim && pid == pids[n.name]:
			t.Errorf("%s has the pid it had before kill -9", n.name)
		case n != victim && pid != pids[n.name]:
			t.Errorf("%s was started again, though only %s was killed", n.name, victim.name)
		}
	}
	l := newLoad()
	for i, p := range []struct{ http, monitor int }{{18080, 28080}, {18180, 28180}} {
		if err := serviceReady(fmt.Sprintf("http://127.0.0.1:%d", p.monitor+offset)); err != nil {
			t.Errorf("ingest-%d: %v", i+1, err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", p.http+offset)
		if status, body := l.post(http.DefaultClient, addr, "node-killed", fmt.Sprintf("k%d", i), "after the kill via "+addr); status != http.StatusOK && status != http.StatusAccepted {
			t.Errorf("POST to %s answered %d %s", addr, status, body)
		}
	}
	waitAllInKafka(t, broker, "node-killed", l, 60*time.Second)
	waitInKafka(t, broker, "node-killed-load", s.l, 120*time.Second, promise{
		duplicates: 4 * 10, why: "what the resender held when the stream's leader died comes back after the ack wait (drain workers × batch)",
		unacknowledged: s.unacked()})
	if strings.Count(run.out.String(), "exited unexpectedly") != 1 {
		t.Errorf("devrun reports more than the one exit:\n%s", run.out.String())
	}
	run.stop(t)
}

// clusterRun is devrun -cluster started by a test.
type clusterRun struct {
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  <-chan error
	stopped bool
}

// startDevrunCluster starts devrun with startDevrun; when the test ends, it is
// stopped with SIGTERM (the NATS nodes, ingests and drains it started are
// in process groups of their own: they outlive a devrun killed with -9).
func startDevrunCluster(t *testing.T, timeout time.Duration, env []string, args ...string) *clusterRun {
	t.Helper()
	cmd, out, exited := startDevrun(t, timeout, env, args...)
	r := &clusterRun{cmd: cmd, out: out, exited: exited}
	t.Cleanup(func() {
		if !r.stopped {
			r.stop(t)
		}
	})
	return r
}

// stop sends SIGTERM, what a terminal's Ctrl-C sends to make, and waits
// until devrun has stopped everything and exited 0.
func (r *clusterRun) stop(t *testing.T) {
	t.Helper()
	r.stopped = true
	_ = r.cmd.Process.Signal(syscall.SIGTERM) // fails if devrun has exited: exited says how
	select {
	case err := <-r.exited:
		if err != nil {
			t.Errorf("devrun exited with %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("devrun did not stop within 60s of SIGTERM")
	}
}

// clusterEnv is devrun -cluster's environment in a test: the test's Kafka
// (so devrun starts no development broker), reserved ports for the drains'
// monitoring, and a variable naming the test, which every process devrun
// starts inherits: reapCluster finds them by it if devrun dies first.
func clusterEnv(t *testing.T, broker string) []string {
	t.Helper()
	mark := fmt.Sprintf("SPILLWAY_E2E_RUN=%s-%d", t.Name(), time.Now().UnixNano())
	t.Cleanup(func() { reapCluster(mark) })
	return []string{
		mark,
		"SPILLWAY_KAFKA_BROKERS=" + broker,
		fmt.Sprintf("SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:%d", reservedPort(t)),
		fmt.Sprintf("SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:%d", reservedPort(t)),
	}
}

// reapCluster kills (-9) every process whose environment holds mark: what
// a devrun that did not stop in order left behind.
func reapCluster(mark string) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		env, err := os.ReadFile(filepath.Join(d, "environ"))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), append(append([]byte{0}, mark...), 0)) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// pidOf is the pid of the one process whose command line has flag
// followed by value.
func pidOf(t *testing.T, flag, value string) int {
	t.Helper()
	want := []byte("\x00" + flag + "\x00" + value + "\x00")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var found []int
	for _, d := range dirs {
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(cmdline, want) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("processes with %s %s: %v, want one", flag, value, found)
	}
	return found[0]
}

// clusterPorts are the ports handed to clusters in this process: tests
// run in parallel, and a cluster's ports are free until devrun binds them.
var clusterPorts = struct {
	sync.Mutex
	taken map[int]bool
}{taken: map[int]bool{}}

// clusterPortOffset is a -port-offset for devrun -cluster under which
// every port of its layout is free: from
// 100 to 4099, which keeps every port between 4322 and 32279, below the
// ephemeral range and outside the one reservedPort hands out.
func clusterPortOffset(t *testing.T) int {
	t.Helper()
	base := []int{4222, 4223, 4224, 8222, 8223, 8224, 6222, 6223, 6224, 18080, 18180, 18282, 18382, 19092, 19192, 28080, 28180} // devrun's layout
	clusterPorts.Lock()
	defer clusterPorts.Unlock()
	for try := range 20 {
		o := 100 + (int(time.Now().UnixNano()/1000)+try*197)%4000
		free := true
		for _, p := range base {
			if clusterPorts.taken[p+o] { // another test's cluster, maybe not listening yet
				free = false
				break
			}
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+o))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			for _, p := range base {
				clusterPorts.taken[p+o] = true
			}
			return o
		}
	}
	t.Fatal("found no free set of ports for the cluster")
	return 0
}

// serviceReady checks a service's /readyz.
func serviceReady(monitorURL string) error {
	resp, err := http.Get(monitorURL + "/readyz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz answered %d", resp.StatusCode)
	}
	return nil
}
