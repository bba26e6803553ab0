package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// startResender runs the built resender until the test ends.
func startResender(t *testing.T, broker, natsAddr string, env ...string) {
	t.Helper()
	monitor := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args, env := splitArgs(env)
	cmd := exec.Command(filepath.Join(binDir, "spillway-resender"), args...)
	cmd.Env = append(append(os.Environ(),
		"SPILLWAY_KAFKA_BROKERS="+broker,
		"SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr,
		"SPILLWAY_RESEND_MONITORING_LISTEN="+monitor,
		"SPILLWAY_PRODUCER_RESEND_PERIOD=200ms",
		"SPILLWAY_PRODUCER_CB_TIMEOUT=500ms",
	), env...)
	out := &syncBuffer{}
	cmd.Stdout = captured(t, cmd, out)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("resender output:\n%s", out.String())
		}
	})
	waitOK(t, "http://"+monitor+"/readyz", "the resender to be ready")
}

// TestKafkaDownThenBack posts records while Kafka is down: each is
// answered 202 (buffered). When Kafka comes back the resender delivers
// every acknowledged record; duplicates are counted.
func TestKafkaDownThenBack(t *testing.T) {
	kafkaPort := freePort(t) // nothing listens there yet: Kafka is down
	broker := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	in := startIngest(t, broker, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=3")
	startResender(t, broker, natsAddr)

	const n = 40
	acked := map[string]bool{}
	for i := range n {
		req, _ := http.NewRequest(http.MethodPost, "http://"+in.httpAddr+"/topics/spilled/messages", strings.NewReader(fmt.Sprintf("record-%d", i)))
		req.Header.Set("Content-Type", "text/plain")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var a struct {
			ID      string `json:"id"`
			Outcome string `json:"outcome"`
		}
		err = json.NewDecoder(resp.Body).Decode(&a)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusAccepted || a.Outcome != "buffered" || a.ID == "" {
			t.Fatalf("record %d: %d %+v %v", i, resp.StatusCode, a, err)
		}
		acked[a.ID] = true
	}

	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(kafkaPort), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	waitAllInKafka(t, broker, "spilled", &load{sent: n, buffered: acked}, 60*time.Second)
}

func header(r kcatRecord, key string) string {
	for i := 0; i+1 < len(r.Headers); i += 2 {
		if r.Headers[i] == key {
			return r.Headers[i+1]
		}
	}
	return ""
}

// kcatConsumeMaybe is kcatConsume for polls: it returns nothing on error.
func kcatConsumeMaybe(broker, topic string) []kcatRecord {
	out, err := exec.Command("kcat", "-b", broker, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q").Output()
	if err != nil {
		return nil
	}
	var recs []kcatRecord
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r kcatRecord
		if json.Unmarshal([]byte(line), &r) == nil {
			recs = append(recs, r)
		}
	}
	return recs
}

// postBuffered posts value and returns the record's id when the answer
// was 202 buffered; "" otherwise (the ingest may be gone).
func postBuffered(addr, topic, value string) string {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/topics/"+topic+"/messages", strings.NewReader(value))
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var a struct {
		ID      string `json:"id"`
		Outcome string `json:"outcome"`
	}
	if json.NewDecoder(resp.Body).Decode(&a) != nil || resp.StatusCode != http.StatusAccepted || a.Outcome != "buffered" {
		return ""
	}
	return a.ID
}

// TestIngestKilledMidLoad kills the ingest (kill -9) while records are
// being buffered, Kafka down, with the embedded JetStream on disk. After a
// restart on the same store, with Kafka back, every record that was
// acknowledged reaches Kafka.
func TestIngestKilledMidLoad(t *testing.T) {
	kafkaPort := freePort(t)
	broker := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	store := t.TempDir()
	env := []string{"SPILLWAY_PRODUCER_WAL_LISTEN=" + natsAddr, "SPILLWAY_PRODUCER_WAL_PATH=" + store, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1"}
	in := startIngest(t, broker, env...)

	acked := make(chan string, 10000)
	stop := make(chan struct{})
	loaderDone := make(chan int)
	go func() {
		sent := 0
		defer func() { loaderDone <- sent }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			sent++
			if id := postBuffered(in.httpAddr, "killed", fmt.Sprintf("record-%d", sent)); id != "" {
				acked <- id
			}
		}
	}()
	eventually(t, 30*time.Second, "30 records acknowledged", func() bool { return len(acked) >= 30 })
	if err := in.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = in.cmd.Wait()
	close(stop)
	sent := <-loaderDone
	close(acked)
	ids := map[string]bool{}
	for id := range acked {
		ids[id] = true
	}

	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(kafkaPort), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	startIngest(t, broker, env...) // the same store: the buffered records are still there
	startResender(t, broker, natsAddr)

	t.Logf("kill -9 after %d records sent, %d acknowledged", sent, len(ids))
	waitAllInKafka(t, broker, "killed", &load{sent: sent, buffered: ids}, 60*time.Second)
}

// waitOK polls url until it answers 200, for at most 30 seconds.
func waitOK(t *testing.T, url, what string) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// TestLoadgenVerify runs the load generator against the ingest binary for
// each API form and checks its JSON report: every record acknowledged and
// found in Kafka by its -verify step.
func TestLoadgenVerify(t *testing.T) {
	broker := newBroker(t)
	in := startIngest(t, broker)
	for _, target := range []string{"http", "ndjson", "v2", "grpc", "grpc-stream", "kafka"} {
		t.Run(target, func(t *testing.T) {
			addr := "http://" + in.httpAddr
			if strings.HasPrefix(target, "grpc") {
				addr = in.grpcAddr
			}
			out, err := exec.Command(filepath.Join(binDir, "loadgen"), "-target", target, "-addr", addr, "-brokers", broker,
				"-topic", "lg-"+target, "-count", "400", "-batch", "20", "-concurrency", "4", "-keys", "10", "-json", "-verify", broker).Output()
			if err != nil {
				t.Fatalf("loadgen: %v\n%s", err, out)
			}
			var rep struct {
				Records, Delivered, Failed int64
				Verify                     struct{ Acknowledged, Found, Missing, Duplicates int }
				LatencyMs                  struct{ P99 float64 } `json:"latency_ms"`
			}
			if err := json.Unmarshal(out, &rep); err != nil {
				t.Fatalf("report %s: %v", out, err)
			}
			if rep.Records != 400 || rep.Delivered != 400 || rep.Failed != 0 || rep.Verify.Found != 400 || rep.Verify.Missing != 0 || rep.LatencyMs.P99 <= 0 {
				t.Fatalf("report: %s", out)
			}
		})
	}
}
