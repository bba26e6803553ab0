// Package e2e runs the built binaries as `make run` does and checks what
// they do from the outside: over HTTP, and in Kafka with kcat.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
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

	"github.com/spillway/spillway/pkg/securitytest"
)

// binDir holds the binaries under test: $E2E_BIN_DIR (set by make), or a
// fresh build.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	// parallel bounds how many tests run at once. go test's own bound
	// (-parallel, GOMAXPROCS by default) would count the tests that wait
	// in parallel for the loaded slot, and run fewer: it is lifted here,
	// unless given.
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		_ = flag.Set("test.parallel", "1000")
	}
	binDir = os.Getenv("E2E_BIN_DIR")
	if binDir == "" {
		dir, err := os.MkdirTemp("", "spillway-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		for name, pkg := range map[string]string{
			"spillway-ingest": "../../services/ingest", "spillway-forwarder": "../../services/forwarder",
			"spillway-resender": "../../services/resender", "devkafka": "../devkafka", "devrun": "../devrun", "loadgen": "../loadgen",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "build", name, err)
				os.Exit(1)
			}
		}
		binDir = dir
	}
	creds, err := setBufferCredentials()
	if err != nil {
		fmt.Fprintln(os.Stderr, "NATS credentials:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(creds)
	os.Exit(code)
}

// How a test shares the machine with the others (parallel's second
// argument).
type share int

const (
	// waits: the test mostly waits, on a breaker, an election, a restart,
	// a backoff, a timeout, while the services it started are idle.
	waits share = iota
	// loaded: the test drives load (clients in a loop: startLoad,
	// newSpread, startKeyClients, loadgen).
	loaded
	// alone: the test drives load and bounds a time under it (the 5 s
	// answer of TestFaultKafkaHung; the hand-over window between ingests
	// of TestOrderPerKeyCluster): no other loaded test runs meanwhile.
	alone
)

// maxParallel is how many tests run at once, and maxLoaded how many of
// them drive load. Measured on the 2-core machines, tools/e2e alone:
// 589 s one test at a time; 330 s with 4 at once and 1 loaded, under the
// race detector. With 2 loaded at once under the race detector, inside
// make test's unit phase, TestMakeRunClusterRestartsWithRecordsBuffered
// found 2,496 duplicates: the resender's produces to kfake, which runs
// in this test process, timed out and were sent again. Without it (make
// unit runs this package without -race): 378 s with 1 loaded, 251 s
// with 2, beside four other packages' race-built tests.
const maxParallel, maxLoaded = 4, 2

var (
	parallelSlots = make(chan struct{}, maxParallel)
	loadedSlots   = make(chan struct{}, maxLoaded)
	loadedTurn    sync.Mutex // one test at a time takes its loaded slots
)

// parallel runs t alongside the suite's other tests, within maxParallel
// and maxLoaded. Every test starts its own brokers, NATS servers and
// services on ports of its own (port 0, reservedPort, clusterPortOffset),
// in folders of its own.
func parallel(t *testing.T, s share) {
	t.Helper()
	t.Parallel()
	// The loaded slots before a place, so as not to hold one while
	// waiting for them.
	n := 0
	switch s {
	case loaded:
		n = 1
	case alone:
		n = maxLoaded
	}
	if n > 0 {
		// Taken in turn: a test taking every slot gets each one freed
		// after it began, rather than wait for all loaded tests to end.
		loadedTurn.Lock()
		for range n {
			loadedSlots <- struct{}{}
		}
		loadedTurn.Unlock()
	}
	t.Cleanup(func() {
		for range n {
			<-loadedSlots
		}
	})
	parallelSlots <- struct{}{}
	t.Cleanup(func() { <-parallelSlots })
	t.Logf("began at %s, its slots taken", time.Now().Format("15:04:05.000"))
}

// The services under test listen on port 0 and say what they bound in
// their start log lines (proc.logged reads them). reservedPort is only for
// the peers whose address must be known before they listen, each named
// where it is called:
//   - a Kafka that comes up after the services that use it (TestKafkaDownThenBack,
//     TestDeadLetters, TestKillIngestWithBufferedRecords);
//   - the TCP fault proxy, which listens again on the same port when a cut
//     is restored (newFaultyKafka);
//   - the NATS nodes of a cluster, whose routes name one another and which
//     restart on their own ports (startNATSCluster);
//   - devrun, which hands fixed ports to what it starts (TestMakeRun,
//     TestMakeRunCluster), and Jaeger, which does not report what it bound;
//   - an address where nothing listens (TestProbeFlag).
//
// Such a port comes from below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default), which no port-0
// bind and no outgoing connection is ever given: between the check and the
// peer's own bind, only a process that picks ports as this one does could
// take it. It is handed out once in this process, from a random start (so
// that two suites on one machine seldom meet), and checked free first.
// TestMakeRunCluster's ports (devrun's own layout, shifted) lie elsewhere.
const reservedLow, reservedHigh = 12500, 18000

var reserved = struct {
	sync.Mutex
	next int
}{next: reservedLow + int(time.Now().UnixNano()/1000)%(reservedHigh-reservedLow)}

func reservedPort(t *testing.T) int {
	t.Helper()
	if low := ephemeralLow(); low <= reservedHigh {
		t.Fatalf("the kernel's ephemeral ports start at %d, inside the range the tests reserve (%d-%d)", low, reservedLow, reservedHigh)
	}
	reserved.Lock()
	defer reserved.Unlock()
	for range reservedHigh - reservedLow {
		p := reserved.next
		reserved.next++
		if reserved.next == reservedHigh {
			reserved.next = reservedLow
		}
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			ln.Close()
			return p
		}
	}
	t.Fatalf("no free port in %d-%d", reservedLow, reservedHigh)
	return 0
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768 // Linux's default
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		return 32768
	}
	return low
}

// syncBuffer collects a process's output for the test to read while it
// runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond every 50ms until it is true or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kcatRecord is one line of `kcat -J`.
type kcatRecord struct {
	Topic     string   `json:"topic"`
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	Key       *string  `json:"key"`
	Payload   *string  `json:"payload"`
	Headers   []string `json:"headers"`
}

// kcatConsume reads topic from the start to its end with kcat, an
// independent Kafka client.
func kcatConsume(t *testing.T, broker, topic string) []kcatRecord {
	t.Helper()
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat is not installed (apt-get install kcat; .ci/run does it): %v", err)
	}
	out, err := exec.Command(kcat, "-b", broker, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q").Output()
	if err != nil {
		t.Fatalf("kcat: %v", err)
	}
	var recs []kcatRecord
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r kcatRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("kcat line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// TestMakeRun runs devrun (what `make run` runs) with the development
// broker, posts a record with curl's equivalent, and finds it with kcat.
func TestMakeRun(t *testing.T) {
	parallel(t, waits)
	// devrun hands these ports to what it starts and prints them:
	// reserved ones.
	kafkaPort, httpPort, monPort, grpcPort := reservedPort(t), reservedPort(t), reservedPort(t), reservedPort(t)
	broker := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	cmd, out, exited := startDevrun(t, 60*time.Second, []string{
		fmt.Sprintf("SPILLWAY_SERVER_HTTP_LISTEN=127.0.0.1:%d", httpPort),
		fmt.Sprintf("SPILLWAY_SERVER_MONITORING_LISTEN=127.0.0.1:%d", monPort),
		fmt.Sprintf("SPILLWAY_SERVER_GRPC_LISTEN=127.0.0.1:%d", grpcPort),
		fmt.Sprintf("SPILLWAY_SERVER_KAFKA_LISTEN=127.0.0.1:%d", reservedPort(t)),
		fmt.Sprintf("SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:%d", reservedPort(t)),
		"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(),
		credentialsVar + "=", // the ingest makes its credentials under the path, where the forwarder and resender read them
		fmt.Sprintf("SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:%d", reservedPort(t)),
		fmt.Sprintf("SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:%d", reservedPort(t)),
	}, "-bin", binDir, "-dev-broker-port", fmt.Sprint(kafkaPort))
	if !strings.Contains(out.String(), "NO kafka.brokers CONFIGURED") {
		t.Errorf("the ingest does not warn that it uses the development broker")
	}
	// devrun hands the development broker's address to the three services
	// alike (-dev-broker): each says it started with it.
	for _, s := range []string{"ingest", "forwarder", "resender"} {
		eventually(t, 10*time.Second, "the "+s+" to start with the development broker", func() bool {
			for _, line := range strings.Split(out.String(), "\n") {
				if strings.Contains(line, `"msg":"`+s+` started"`) && strings.Contains(line, `"brokers":["`+broker+`"]`) {
					return true
				}
			}
			return false
		})
	}
	if !strings.Contains(out.String(), "curl -X POST") {
		t.Errorf("devrun does not print a curl line to try")
	}

	url := fmt.Sprintf("http://127.0.0.1:%d/topics/e2e/messages", httpPort)
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("hello from e2e"))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("X-Kafka-Key", "k-e2e")
	req.Header.Set("X-Kafka-Header-Origin", "e2e-test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"outcome":"delivered"`) {
		t.Fatalf("POST answered %d %s", resp.StatusCode, body)
	}

	recs := kcatConsume(t, broker, "e2e")
	if len(recs) != 1 {
		t.Fatalf("kcat found %d records, want 1: %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Key == nil || *r.Key != "k-e2e" || r.Payload == nil || *r.Payload != "hello from e2e" {
		t.Errorf("record in Kafka: %+v", r)
	}
	if header(r, "origin") != "e2e-test" || header(r, "spillway-id") == "" || !strings.Contains(string(body), header(r, "spillway-id")) || header(r, "traceparent") == "" {
		t.Errorf("headers in Kafka: %v; want origin, traceparent and the spillway-id of the answer %s", r.Headers, body)
	}

	// Ctrl-C stops everything it started.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("devrun exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("devrun did not stop within 30s of Ctrl-C")
	}
	for _, port := range []int{kafkaPort, httpPort, monPort} {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			t.Errorf("port %d still answers after devrun stopped", port)
		}
	}
}

// TestInvalidConfigurationExits checks that the ingest refuses a bad
// configuration with a message that names the key, and a non-zero exit.
func TestInvalidConfigurationExits(t *testing.T) {
	parallel(t, waits)
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(path, []byte("producer:\n  wal:\n    mode: sometimes\n  resend:\n    rate_limit: -1\nserver:\n  htp: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "spillway-ingest"), "-config", path)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err == nil || !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("want exit code 2, got %v; output:\n%s", err, out)
	}
	for _, want := range []string{
		`producer.wal.mode: "sometimes" is not allowed; want one of fallback, always, disable`,
		`producer.resend.rate_limit: -1 is negative`,
		`unknown configuration key "server.htp"`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// captured is where a started binary's output goes: to out, and to the
// suite's log folder, which make test scans for test secrets.
func captured(t *testing.T, cmd *exec.Cmd, out io.Writer) io.Writer {
	t.Helper()
	return io.MultiWriter(out, securitytest.LogWriter(t, filepath.Base(cmd.Path)))
}

// startDevrun starts devrun with args, env added to the environment, and
// waits up to timeout until it says Spillway is running. It is killed
// when the test ends, and its output shown if the test failed; exited
// gives its end.
func startDevrun(t *testing.T, timeout time.Duration, env []string, args ...string) (cmd *exec.Cmd, out *syncBuffer, exited <-chan error) {
	t.Helper()
	cmd = exec.Command(filepath.Join(binDir, "devrun"), args...)
	cmd.Env = append(os.Environ(), env...)
	out = &syncBuffer{}
	cmd.Stdout = captured(t, cmd, out)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { ended <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("devrun output:\n%s", out.String())
		}
	})
	eventually(t, timeout, "devrun to say Spillway is running", func() bool {
		select {
		case err := <-ended:
			t.Fatalf("devrun exited early: %v", err)
		default:
		}
		return strings.Contains(out.String(), "Spillway is running")
	})
	return cmd, out, ended
}
