// Package ingesttest boots the whole ingest service in-process on loopback
// for tests.
package ingesttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/securitytest"
	"github.com/spillway/spillway/pkg/telemetry"
	"github.com/spillway/spillway/services/ingest/internal/app"
)

// Ingest is a running ingest service.
type Ingest struct {
	App      *app.App
	URL      string // the HTTP API, http://127.0.0.1:port
	GRPC     string // the gRPC API, 127.0.0.1:port
	Kafka    string // the Kafka-protocol listener, 127.0.0.1:port
	Monitor  string // the monitoring port, http://127.0.0.1:port
	Registry *prometheus.Registry
	logs     *lockedBuffer

	stopOnce sync.Once
	stopErr  error
	cancel   context.CancelFunc
	done     chan error
}

// Start runs an ingest against the broker at addr, with env as extra
// SPILLWAY_* settings, until the test ends. It traces without exporting.
func Start(tb testing.TB, addr string, env ...string) *Ingest {
	tb.Helper()
	tracing, err := telemetry.NewTracing(context.Background(), "spillway-ingest", "test", func(string) string { return "" })
	if err != nil {
		tb.Fatalf("tracing: %v", err)
	}
	return StartTraced(tb, addr, tracing, env...)
}

// StartTraced is Start with the given tracing.
func StartTraced(tb testing.TB, addr string, tracing *telemetry.Tracing, env ...string) *Ingest {
	tb.Helper()
	return start(tb, addr, nil, tracing, env)
}

// StartYAML is Start with a configuration file's content too.
func StartYAML(tb testing.TB, addr, yaml string, env ...string) *Ingest {
	tb.Helper()
	tracing, err := telemetry.NewTracing(context.Background(), "spillway-ingest", "test", func(string) string { return "" })
	if err != nil {
		tb.Fatalf("tracing: %v", err)
	}
	return start(tb, addr, []byte(yaml), tracing, env)
}

// StartFile is Start with the configuration file at path, which the
// ingest reloads when it changes (looked at every 50 ms) or on Reload.
func StartFile(tb testing.TB, addr, path string, env ...string) *Ingest {
	tb.Helper()
	tracing, err := telemetry.NewTracing(context.Background(), "spillway-ingest", "test", func(string) string { return "" })
	if err != nil {
		tb.Fatalf("tracing: %v", err)
	}
	return startWith(tb, addr, path, nil, tracing, env)
}

func start(tb testing.TB, addr string, yaml []byte, tracing *telemetry.Tracing, env []string) *Ingest {
	tb.Helper()
	return startWith(tb, addr, "", yaml, tracing, env)
}

func startWith(tb testing.TB, addr, path string, yaml []byte, tracing *telemetry.Tracing, env []string) *Ingest {
	tb.Helper()
	environ := append([]string{
		"SPILLWAY_KAFKA_BROKERS=" + addr,
		"SPILLWAY_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_GRPC_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_KAFKA_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_MONITORING_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_SHUTDOWN_TIMEOUT=5s",
		"SPILLWAY_PRODUCER_WAL_PATH=" + tb.TempDir(),
		"SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0",
	}, env...)
	var cfg *config.Config
	var err error
	if path != "" {
		cfg, err = config.Load(path, environ)
	} else {
		cfg, err = config.Parse(yaml, environ)
	}
	if err != nil {
		tb.Fatalf("config: %v", err)
	}
	logs := &lockedBuffer{}
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewJSONHandler(io.MultiWriter(logs, securitytest.LogWriter(tb, "ingest")), &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts := app.Options{Config: cfg, Logger: logger, Registry: reg, Tracing: tracing}
	if path != "" {
		opts.ConfigPath, opts.Environ, opts.ConfigCheckEvery = path, environ, 50*time.Millisecond
	}
	a, err := app.New(opts)
	if err != nil {
		tb.Fatalf("start ingest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	scheme := "http://"
	if cfg.Server.TLS.Enabled() {
		scheme = "https://"
	}
	in := &Ingest{App: a, URL: scheme + a.HTTPAddr(), GRPC: a.GRPCAddr(), Kafka: a.KafkaAddr(), Monitor: "http://" + a.MonitorAddr(), Registry: reg, logs: logs, cancel: cancel, done: done}
	tb.Cleanup(func() {
		if err := in.Stop(); err != nil {
			tb.Errorf("ingest stop: %v", err)
		}
	})
	WaitReady(tb, in.Monitor, 10*time.Second)
	return in
}

// WaitReady polls monitor's /readyz until it answers 200.
func WaitReady(tb testing.TB, monitor string, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(monitor + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s/readyz not ready within %v (last error: %v)", monitor, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Post sends body to url with the content type and extra headers (name,
// value pairs) and returns the status and the answer's body.
func Post(tb testing.TB, url, contentType, body string, headers ...string) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Metric scrapes the monitoring port and returns the value of the sample
// whose line starts with series (name{labels}), or -1 when absent.
func Metric(tb testing.TB, monitor, series string) float64 {
	tb.Helper()
	resp, err := http.Get(monitor + "/metrics")
	if err != nil {
		tb.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// LogText is everything the ingest logged so far.
func (i *Ingest) LogText() string {
	i.logs.mu.Lock()
	defer i.logs.mu.Unlock()
	return i.logs.buf.String()
}

// Stop shuts the ingest down as SIGTERM does and waits, at most 15s.
func (i *Ingest) Stop() error {
	i.stopOnce.Do(func() {
		i.cancel()
		select {
		case err := <-i.done:
			if err != nil && !errors.Is(err, context.Canceled) {
				i.stopErr = err
			}
		case <-time.After(15 * time.Second):
			i.stopErr = errors.New("ingest did not stop within 15s")
		}
	})
	return i.stopErr
}
