package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// startResender runs the built resender until the test ends, and returns
// its monitoring address once it is ready. natsAddr is the ingest's
// embedded JetStream ("" when env names the NATS URLs).
func startResender(t *testing.T, broker, natsAddr string, env ...string) string {
	t.Helper()
	own := []string{
		"SPILLWAY_KAFKA_BROKERS=" + broker,
		"SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:0",
		"SPILLWAY_PRODUCER_RESEND_PERIOD=200ms",
		"SPILLWAY_PRODUCER_CB_TIMEOUT=500ms",
	}
	if natsAddr != "" {
		own = append(own, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr)
	}
	p := spawn(t, "spillway-resender", append(own, env...)...)
	monitor := p.loggedAddr(t, "resender started", "monitoring")
	waitOK(t, "http://"+monitor+"/readyz", "the resender to be ready")
	return monitor
}

// TestKafkaDownThenBack posts records while Kafka is down: each is
// answered 202 (buffered). When Kafka comes back the resender delivers
// every acknowledged record, once, with its key and value.
func TestKafkaDownThenBack(t *testing.T) {
	parallel(t, waits)
	kafkaPort := reservedPort(t) // nothing listens there yet: Kafka is down, and comes up on this port
	broker := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	in := startIngest(t, broker, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=3")
	natsAddr := in.natsAddr
	startResender(t, broker, natsAddr)

	const n = 40
	l := newLoad()
	for i := range n {
		status, body := l.post(http.DefaultClient, in.httpAddr, "spilled", fmt.Sprintf("key-%d", i%4), fmt.Sprintf("record-%d", i))
		var a struct {
			ID      string `json:"id"`
			Outcome string `json:"outcome"`
		}
		err := json.Unmarshal([]byte(body), &a)
		if err != nil || status != http.StatusAccepted || a.Outcome != "buffered" || a.ID == "" {
			t.Fatalf("record %d: %d %s", i, status, body)
		}
	}

	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(kafkaPort), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Kafka refused connections: no record can have reached it before it
	// was buffered, so none may arrive twice.
	waitAllInKafka(t, broker, "spilled", l, 60*time.Second)
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

// TestIngestKilledMidLoad kills the ingest (kill -9) while records are
// being buffered, Kafka down, with the embedded JetStream on disk. After a
// restart on the same store, with Kafka back, every record that was
// acknowledged reaches Kafka once, with its key and value; of the records
// not acknowledged, only the one in flight at the kill may be there.
func TestIngestKilledMidLoad(t *testing.T) {
	parallel(t, waits)
	kafkaPort := reservedPort(t) // Kafka comes up on it later
	broker := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	store := t.TempDir()
	env := []string{"SPILLWAY_PRODUCER_WAL_PATH=" + store, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1"}
	in := startIngest(t, broker, env...)

	// One loader: at most one request is in flight at the kill.
	l := newLoad()
	stop := make(chan struct{})
	loaderDone := make(chan struct{})
	go func() {
		defer close(loaderDone)
		client := &http.Client{Timeout: 10 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if status, _ := l.post(client, in.httpAddr, "killed", fmt.Sprintf("key-%d", i%4), fmt.Sprintf("record-%d", i)); status == 0 {
				time.Sleep(10 * time.Millisecond) // the ingest is gone
			}
		}
	}()
	eventually(t, 30*time.Second, "30 records acknowledged", func() bool { return l.count() >= 30 })
	if err := in.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-in.exited
	close(stop)
	<-loaderDone
	// Before the kill every answer was 202; after it, none.
	l.mu.Lock()
	if len(l.delivered) > 0 || len(l.statuses) != 1 || l.statuses[http.StatusAccepted] == 0 {
		t.Errorf("answers before the kill: %v; want only 202 (Kafka is down)", l.statuses)
	}
	l.mu.Unlock()

	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(kafkaPort), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	again := startIngest(t, broker, env...) // the same store: the buffered records are still there
	startResender(t, broker, again.natsAddr)

	t.Logf("kill -9 after %d records sent, %d acknowledged", l.sent, l.count())
	waitInKafka(t, broker, "killed", l, 60*time.Second, promise{unacknowledged: 1})
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
	parallel(t, loaded)
	broker := newBroker(t)
	in := startIngest(t, broker)
	for _, target := range []string{"http", "ndjson", "v2", "grpc", "grpc-stream", "ambassador-stream", "kafka"} {
		t.Run(target, func(t *testing.T) {
			addr := "http://" + in.httpAddr
			if strings.HasPrefix(target, "grpc") || target == "ambassador-stream" {
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
