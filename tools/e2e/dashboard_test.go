package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dashboardMetrics returns the metric names the Grafana dashboard queries.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/grafana/spillway.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	names := map[string]bool{}
	metric := regexp.MustCompile(`\b(spillway_[a-z_]+|grpc_server_[a-z_]+)`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, m := range metric.FindAllString(q.Expr, -1) {
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					m = strings.TrimSuffix(m, suffix)
				}
				names[m] = true
			}
		}
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	return out
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestDashboardMetricsExist runs the three services and checks that every
// metric the Grafana dashboard queries is exported by one of them.
func TestDashboardMetricsExist(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t)
	in := startIngest(t, broker, "SPILLWAY_PRODUCER_WAL_ALWAYS_TOPICS=audit", "SPILLWAY_KAFKA_MESSAGE_MAX_BYTES=1000")
	natsAddr := in.natsAddr
	_, forwarder := startForwarder(t, broker, natsAddr)

	// Traffic of every kind: delivered, written ahead and forwarded, failed.
	postStatus(t, in.httpAddr, "direct", "x")
	postStatus(t, in.httpAddr, "audit", "y")
	postStatus(t, in.httpAddr, "direct", strings.Repeat("z", 2000))
	eventually(t, 20*time.Second, "the forwarder to deliver", func() bool {
		return metricValue(t, forwarder, `spillway_records_drained_total{consumer="forwarder",topic="audit"}`) >= 1
	})
	requireMetric(t, forwarder, `spillway_records_drained_total{consumer="forwarder",topic="audit"}`, 1)

	exported := scrape(t, in.monitorAddr) + scrape(t, forwarder)
	for _, name := range dashboardMetrics(t) {
		if !regexp.MustCompile(`(?m)^` + name + `(_bucket|_count|_sum)?[{ ]`).MatchString(exported) {
			t.Errorf("the dashboard queries %s, which no service exports", name)
		}
	}
}
