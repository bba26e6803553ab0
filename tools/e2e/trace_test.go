package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// jaegerConfig runs Jaeger v2 on loopback only, with in-memory storage and
// without its own telemetry.
const jaegerConfig = `
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: %s
    grpc:
      endpoint: %s
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
      http:
        endpoint: %s
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

// startJaeger runs the Jaeger built by `make jaeger` and returns its query
// address and its OTLP/HTTP address.
func startJaeger(t *testing.T) (query, otlpHTTP string) {
	t.Helper()
	bin := os.Getenv("JAEGER_BIN")
	if bin == "" {
		t.Fatal("JAEGER_BIN is not set: run the tests with `make test`, which builds Jaeger once with `make jaeger`")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Jaeger is not built (%v): run `make jaeger`", err)
	}
	// Jaeger does not report the ports it bound: reserved ones.
	addr := func() string { return fmt.Sprintf("127.0.0.1:%d", reservedPort(t)) }
	query, otlpHTTP = addr(), addr()
	path := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(jaegerConfig, query, addr(), addr(), otlpHTTP)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", path)
	cmd.Env = append(os.Environ(), "OTEL_TRACES_SAMPLER=always_off") // Jaeger does not trace itself, so it stops at once
	out := &syncBuffer{}
	cmd.Stdout = captured(t, cmd, out)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("jaeger output:\n%s", out.String())
		}
	})
	waitOK(t, "http://"+query+"/api/services", "Jaeger's query API")
	return query, otlpHTTP
}

type jaegerTrace struct {
	Data []struct {
		Spans []struct {
			SpanID        string `json:"spanID"`
			OperationName string `json:"operationName"`
			ProcessID     string `json:"processID"`
			References    []struct {
				RefType string `json:"refType"`
				SpanID  string `json:"spanID"`
			} `json:"references"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// spansOf returns "service: operation" for every span of the trace.
func spansOf(query, traceID string) map[string]bool {
	resp, err := http.Get("http://" + query + "/api/traces/" + traceID)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var tr jaegerTrace
	if json.NewDecoder(resp.Body).Decode(&tr) != nil || len(tr.Data) == 0 {
		return nil
	}
	out := map[string]bool{}
	for _, s := range tr.Data[0].Spans {
		out[tr.Data[0].Processes[s.ProcessID].ServiceName+": "+s.OperationName] = true
	}
	return out
}

// TestTraceInJaeger follows one record through a spill: the client's
// traceparent starts the trace; the ingest's request span, its Kafka
// attempt and its spill, then the resender's consumer span and Kafka
// produce span must all be in that trace in Jaeger, and the record's
// traceparent header in Kafka must belong to it.
func TestTraceInJaeger(t *testing.T) {
	parallel(t, waits)
	query, otlp := startJaeger(t)
	k := newFaultyKafka(t)
	otelEnv := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + otlp, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", "OTEL_BSP_SCHEDULE_DELAY=100"}
	in := startIngest(t, k.addr, append([]string{"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=500"}, otelEnv...)...)
	natsAddr := in.natsAddr
	startResender(t, k.addr, natsAddr, otelEnv...)

	k.cut()
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest(http.MethodPost, "http://"+in.httpAddr+"/topics/traced/messages", strings.NewReader("follow me"))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST answered %d, want 202 (buffered)", resp.StatusCode)
	}
	k.restore()

	var recs []kcatRecord
	eventually(t, 30*time.Second, "the record in Kafka", func() bool {
		recs = kcatConsumeMaybe(k.addr, "traced")
		return len(recs) == 1
	})
	if tp := header(recs[0], "traceparent"); !strings.Contains(tp, traceID) {
		t.Errorf("the record's traceparent in Kafka is %q, not of trace %s", tp, traceID)
	}

	want := []string{
		"spillway-ingest: POST /topics/:topic/messages",
		"spillway-ingest: send traced",
		"spillway-ingest: publish spillway.spill.traced",
		"spillway-resender: process spillway.spill.traced",
		"spillway-resender: send traced",
	}
	var got map[string]bool
	deadline := time.Now().Add(30 * time.Second)
	for {
		got = spansOf(query, traceID)
		missing := 0
		for _, w := range want {
			if !got[w] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s in Jaeger lacks spans; has %v, want %v", traceID, got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("trace %s: %v", traceID, got)
}
