package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// proc is a built binary started by a test: its output, and its exit.
type proc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{} // closed once the process has exited
	err    error         // Wait's result, once exited is closed
}

// spawn starts the binary name from binDir with env added to the test's
// environment (entries starting with "-" are arguments) and does not wait
// for it to be ready. The process is killed when the test ends.
func spawn(t *testing.T, name string, env ...string) *proc {
	t.Helper()
	args, env := splitArgs(env)
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout = captured(t, cmd, p.out)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// alive says whether the process has not exited yet.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// exitCode waits at most timeout for the process to exit and returns its
// exit code; it fails the test if the process is still running.
func (p *proc) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Fatalf("%s still running %v after it was told to stop", filepath.Base(p.cmd.Path), timeout)
	}
	var exit *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &exit):
		return exit.ExitCode()
	default:
		t.Fatalf("wait: %v", p.err)
		return -1
	}
}

// logged waits, at most 60 s, until p has written the JSON log line whose
// msg is msg, and returns its fields: a service started on port 0 says
// there what it bound. The test fails if p exits first.
func (p *proc) logged(t *testing.T, msg string) map[string]any {
	t.Helper()
	find := func() map[string]any {
		for _, line := range strings.Split(p.out.String(), "\n") {
			var fields map[string]any
			if strings.Contains(line, `"msg":"`+msg+`"`) && json.Unmarshal([]byte(line), &fields) == nil && fields["msg"] == msg {
				return fields
			}
		}
		return nil
	}
	for deadline := time.Now().Add(60 * time.Second); ; {
		if fields := find(); fields != nil {
			return fields
		}
		select {
		case <-p.exited:
			if fields := find(); fields != nil {
				return fields
			}
			t.Fatalf("%s exited before it logged %q: %v", filepath.Base(p.cmd.Path), msg, p.err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within 60s", filepath.Base(p.cmd.Path), msg)
		}
	}
}

// loggedAddr is the address a service logged under key in the line msg.
func (p *proc) loggedAddr(t *testing.T, msg, key string) string {
	t.Helper()
	a, _ := p.logged(t, msg)[key].(string)
	if a == "" {
		t.Fatalf("%s logged %q without an address under %q", filepath.Base(p.cmd.Path), msg, key)
	}
	return a
}

// monitorAddr is the monitoring port a service bound, which it says as
// soon as it listens, before it is ready.
func (p *proc) monitorAddr(t *testing.T) string {
	t.Helper()
	return p.loggedAddr(t, "monitoring listening", "addr")
}

// ingestProcess is the spillway-ingest binary, running, and where it
// listens.
type ingestProcess struct {
	*proc
	httpAddr, grpcAddr, kafkaAddr, monitorAddr string
	natsAddr                                   string // the embedded JetStream's; "" with an external one
}

// spawnIngest starts the ingest binary against broker, every listener on
// port 0 unless env names another, without waiting for it to be ready.
func spawnIngest(t *testing.T, broker string, env ...string) *proc {
	t.Helper()
	return spawn(t, "spillway-ingest", append([]string{
		"SPILLWAY_KAFKA_BROKERS=" + broker,
		"SPILLWAY_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_GRPC_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_KAFKA_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_MONITORING_LISTEN=127.0.0.1:0",
		"SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0",
		"SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(),
	}, env...)...)
}

// startIngest runs the built ingest against broker until the test ends,
// and returns it once it is ready, with the addresses it bound.
func startIngest(t *testing.T, broker string, env ...string) *ingestProcess {
	t.Helper()
	return ingestStarted(t, spawnIngest(t, broker, env...))
}

// ingestStarted waits until the ingest p says it started, and reads what
// it bound from that line.
func ingestStarted(t *testing.T, p *proc) *ingestProcess {
	t.Helper()
	started := p.logged(t, "ingest started")
	in := &ingestProcess{proc: p}
	for key, to := range map[string]*string{"http": &in.httpAddr, "grpc": &in.grpcAddr, "kafka": &in.kafkaAddr, "monitoring": &in.monitorAddr, "nats": &in.natsAddr} {
		*to, _ = started[key].(string)
	}
	if in.httpAddr == "" || in.grpcAddr == "" || in.monitorAddr == "" {
		t.Fatalf("the ingest's start line lacks an address: %v", started)
	}
	waitOK(t, "http://"+in.monitorAddr+"/readyz", "the ingest to be ready")
	return in
}

// get fetches url with a short timeout and returns the status and body;
// status 0 when nothing answered in time.
func get(url string) (int, string) {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// probe runs `binary -probe url` and returns its exit code.
func probe(t *testing.T, binary, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, binary), "-probe", url).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && ctx.Err() == nil:
		return exit.ExitCode()
	default:
		t.Fatalf("%s -probe %s: %v\n%s", binary, url, err, out)
		return -1
	}
}

// heldJetStream is a NATS server without JetStream whose JetStream API
// requests are held, then relayed to a real JetStream server once release
// is called: a JetStream that is reachable but not answering yet, as while
// a cluster elects its leader.
type heldJetStream struct {
	url     string
	held    chan struct{} // receives once the first API request is held
	release func()
}

func newHeldJetStream(t *testing.T) *heldJetStream {
	t.Helper()
	start := func(o *server.Options) *server.Server {
		o.Host, o.Port, o.NoLog, o.NoSigs = "127.0.0.1", -1, true, true
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats not ready")
		}
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		return s
	}
	front := start(&server.Options{})
	js := start(&server.Options{JetStream: true, StoreDir: t.TempDir()})
	ncFront, err := nats.Connect(front.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncFront.Close)
	ncJS, err := nats.Connect(js.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncJS.Close)
	h := &heldJetStream{url: front.ClientURL(), held: make(chan struct{}, 1)}
	released := make(chan struct{})
	h.release = func() { close(released) }
	t.Cleanup(func() {
		select {
		case <-released:
		default:
			close(released)
		}
	})
	_, err = ncFront.Subscribe("$JS.API.>", func(m *nats.Msg) {
		select {
		case h.held <- struct{}{}:
		default:
		}
		<-released
		reply, err := ncJS.RequestMsg(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}, 5*time.Second)
		if err != nil {
			return
		}
		_ = m.RespondMsg(&nats.Msg{Header: reply.Header, Data: reply.Data})
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestNotReadyWhileStarting starts the ingest, and the forwarder, while
// their JetStream does not answer yet: /readyz answers 503 (and /healthz
// 200) and -probe exits 1 until JetStream answers, then /readyz answers
// 200 and -probe exits 0.
func TestNotReadyWhileStarting(t *testing.T) {
	parallel(t, waits)
	for _, binary := range []string{"spillway-ingest", "spillway-forwarder"} {
		t.Run(binary, func(t *testing.T) {
			broker := newBroker(t)
			js := newHeldJetStream(t)
			var p *proc
			if binary == "spillway-ingest" {
				p = spawnIngest(t, broker, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+js.url, credentialsVar+"=")
			} else {
				p = spawn(t, binary, "SPILLWAY_KAFKA_BROKERS="+broker, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+js.url, credentialsVar+"=",
					"SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:0")
			}
			monitor := p.monitorAddr(t)
			select {
			case <-js.held:
			case <-p.exited:
				t.Fatalf("exited before it asked JetStream anything: %v", p.err)
			case <-time.After(30 * time.Second):
				t.Fatal("did not ask JetStream anything within 30s")
			}
			readyz := "http://" + monitor + "/readyz"
			if status, body := get(readyz); status != http.StatusServiceUnavailable || body != "not ready: starting or shutting down\n" {
				t.Errorf("/readyz while starting answered %d %q; want 503 %q", status, body, "not ready: starting or shutting down\n")
			}
			if status, body := get("http://" + monitor + "/healthz"); status != http.StatusOK || body != "ok\n" {
				t.Errorf("/healthz while starting answered %d %q; want 200 %q", status, body, "ok\n")
			}
			if code := probe(t, binary, readyz); code != 1 {
				t.Errorf("-probe %s exited %d while starting; want 1", readyz, code)
			}
			if !p.alive() {
				t.Fatalf("exited while starting: %v", p.err)
			}
			js.release()
			waitOK(t, readyz, "readiness once JetStream answers")
			if code := probe(t, binary, readyz); code != 0 {
				t.Errorf("-probe %s exited %d once ready; want 0", readyz, code)
			}
		})
	}
}

// TestIngestSIGTERM sends SIGTERM to the ingest while a request waits for
// a slow Kafka, and checks the README's order: /readyz turns 503 and gRPC
// health NOT_SERVING, the API stops accepting connections, and all the
// while the request in flight is still waiting; once Kafka answers, it is
// answered 200 delivered, the record is in Kafka, and the ingest exits 0.
func TestIngestSIGTERM(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	in := startIngest(t, k.addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=60000", "SPILLWAY_SERVER_SHUTDOWN_TIMEOUT=60s")
	p := in.proc
	readyz, healthz := "http://"+in.monitorAddr+"/readyz", "http://"+in.monitorAddr+"/healthz"
	if status, body := get(readyz); status != http.StatusOK || body != "ready\n" {
		t.Fatalf("/readyz answered %d %q; want 200 %q", status, body, "ready\n")
	}
	if status, body := postStatus(t, in.httpAddr, "lifecycle", "warm-up"); status != http.StatusOK || !strings.Contains(body, `"outcome":"delivered"`) {
		t.Fatalf("warm-up answered %d %s; want 200 delivered", status, body)
	}

	conn, err := grpc.NewClient(in.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", "spillway.ingest.v1.IngestService", "KafkaAmbassador"} {
		r, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v %v; want SERVING", service, r, err)
		}
	}
	watchCtx, stopWatching := context.WithCancel(t.Context())
	defer stopWatching()
	watch, err := health.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health watch: %v %v; want SERVING", r, err)
	}
	statuses := make(chan healthpb.HealthCheckResponse_ServingStatus, 4)
	go func() {
		for {
			r, err := watch.Recv()
			if err != nil {
				close(statuses)
				return
			}
			statuses <- r.Status
		}
	}()

	// Kafka holds its answers until the test lets them through.
	k.slow(t, 10*time.Minute)
	type answer struct {
		status int
		body   string
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := http.Post("http://"+in.httpAddr+"/topics/lifecycle/messages", "text/plain", strings.NewReader("in flight at SIGTERM"))
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answered <- answer{status: resp.StatusCode, body: string(b)}
	}()
	eventually(t, 10*time.Second, "the request to wait for Kafka", func() bool {
		return metricValue(t, in.monitorAddr, "spillway_records_in_flight") == 1
	})

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	inFlight := func(what string) {
		t.Helper()
		select {
		case r := <-answered:
			t.Fatalf("%s: the request in flight was answered already: %+v", what, r)
		default:
		}
		if !p.alive() {
			t.Fatalf("%s: the ingest exited already: %v", what, p.err)
		}
	}
	eventually(t, 10*time.Second, "/readyz to answer 503", func() bool {
		status, _ := get(readyz)
		return status == http.StatusServiceUnavailable
	})
	inFlight("/readyz answered 503")
	if status, body := get(readyz); status != http.StatusServiceUnavailable || body != "not ready: starting or shutting down\n" {
		t.Errorf("/readyz while shutting down answered %d %q; want 503 %q", status, body, "not ready: starting or shutting down\n")
	}
	if status, body := get(healthz); status != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz while shutting down answered %d %q; want 200 %q", status, body, "ok\n")
	}
	if code := probe(t, "spillway-ingest", readyz); code != 1 {
		t.Errorf("-probe %s exited %d while shutting down; want 1", readyz, code)
	}
	select {
	case st := <-statuses:
		if st != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("health watch after SIGTERM: %v; want NOT_SERVING", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("health watch: no NOT_SERVING within 10s of SIGTERM")
	}
	inFlight("gRPC health said NOT_SERVING")
	for _, addr := range []string{in.httpAddr, in.grpcAddr} {
		eventually(t, 10*time.Second, addr+" to refuse connections", func() bool {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
	}
	inFlight("the API ports refused connections")
	// A health watch is a call in flight too: the ingest ends it once it
	// said NOT_SERVING, so that a client watching cannot hold shutdown.
	select {
	case st, open := <-statuses:
		if open {
			t.Fatalf("health watch after NOT_SERVING: %v; want the stream ended", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("health watch: the ingest did not end it within 10s of NOT_SERVING")
	}

	k.fast(t)
	select {
	case r := <-answered:
		if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"outcome":"delivered"`) {
			t.Fatalf("the request in flight at SIGTERM was answered %d %s (%v); want 200 delivered", r.status, r.body, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the request in flight at SIGTERM was not answered within 30s of Kafka answering")
	}
	if code := p.exitCode(t, 30*time.Second); code != 0 {
		t.Fatalf("the ingest exited %d after SIGTERM; want 0", code)
	}
	if status, _ := get(readyz); status != 0 {
		t.Errorf("/readyz answered %d after the ingest exited", status)
	}
	if code := probe(t, "spillway-ingest", readyz); code != 1 {
		t.Errorf("-probe %s exited %d once the ingest had exited; want 1", readyz, code)
	}
	var values []string
	for _, r := range kcatConsume(t, k.addr, "lifecycle") {
		values = append(values, *r.Payload)
	}
	slices.Sort(values)
	if strings.Join(values, "|") != "in flight at SIGTERM|warm-up" {
		t.Errorf("in Kafka: %q; want the warm-up and the record in flight at SIGTERM, once each", values)
	}
}

// TestProbeFlag runs each binary's -probe, the health check of the
// container image, against a ready ingest: 0 for a 200, 1 for any other
// status and when nothing listens. (A 503 is in the tests above.)
func TestProbeFlag(t *testing.T) {
	parallel(t, waits)
	in := startIngest(t, newBroker(t))
	base := "http://" + in.monitorAddr
	nothing := fmt.Sprintf("http://127.0.0.1:%d/readyz", reservedPort(t)) // nothing listens there
	for _, binary := range []string{"spillway-ingest", "spillway-forwarder", "spillway-resender"} {
		t.Run(binary, func(t *testing.T) {
			for _, c := range []struct {
				url  string
				want int
			}{
				{base + "/readyz", 0},
				{base + "/healthz", 0},
				{base + "/no-such-path", 1},
				{nothing, 1},
			} {
				if code := probe(t, binary, c.url); code != c.want {
					t.Errorf("%s -probe %s exited %d; want %d", binary, c.url, code, c.want)
				}
			}
		})
	}
}
