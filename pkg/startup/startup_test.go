package startup

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runner is a started service whose Run returns err at once.
type runner struct{ err error }

func (r runner) Run(context.Context) error { return r.err }

// outcome is what a run left: its exit code, what it printed, and the
// Service its start function got (nil: start was not called).
type outcome struct {
	code           int
	stdout, stderr string
	svc            *Service
}

func runWith(t *testing.T, name string, args, environ []string, start func(context.Context, *Service) (runner, error)) outcome {
	t.Helper()
	var o outcome
	var stdout, stderr bytes.Buffer
	o.code = run(name, "v1.2.3", args, environ, &stdout, &stderr, func(ctx context.Context, s *Service) (runner, error) {
		o.svc = s
		return start(ctx, s)
	})
	o.stdout, o.stderr = stdout.String(), stderr.String()
	return o
}

func started(context.Context, *Service) (runner, error) { return runner{}, nil }

// logLines decodes the JSON log lines.
func logLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewBufferString(out))
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), "log line %q", sc.Text())
		lines = append(lines, m)
	}
	return lines
}

// warning returns the WARN line whose msg is msg, or nil.
func warning(lines []map[string]any, msg string) map[string]any {
	for _, l := range lines {
		if l["level"] == "WARN" && l["msg"] == msg {
			return l
		}
	}
	return nil
}

func TestVersion(t *testing.T) {
	// The configuration is not even read: -version answers with a bad one.
	o := runWith(t, "forwarder", []string{"-version"}, []string{"SPILLWAY_PRODUCER_WAL_MODE=sometimes"}, started)
	assert.Equal(t, ExitOK, o.code)
	assert.Equal(t, "spillway-forwarder v1.2.3\n", o.stdout)
	assert.Nil(t, o.svc, "the service is not started")
}

func TestInvalidConfigurationExits(t *testing.T) {
	for _, name := range []string{"ingest", "forwarder", "resender"} {
		t.Run(name, func(t *testing.T) {
			o := runWith(t, name, nil, []string{"SPILLWAY_PRODUCER_WAL_MODE=sometimes"}, started)
			assert.Equal(t, ExitConfig, o.code)
			assert.Contains(t, o.stderr, "spillway-"+name+": invalid configuration:\n")
			assert.Contains(t, o.stderr, `producer.wal.mode: "sometimes" is not allowed; want one of fallback, always, disable`)
			assert.Nil(t, o.svc, "the service is not started")
		})
	}
}

func TestUnknownFlagExits(t *testing.T) {
	o := runWith(t, "ingest", []string{"-no-such-flag"}, nil, started)
	assert.Equal(t, ExitConfig, o.code)
	assert.Contains(t, o.stderr, "flag provided but not defined: -no-such-flag")
	assert.Nil(t, o.svc)
}

// TestWarnings checks that every service logs what it was given but will
// not use: a SPILLWAY_ variable that is no key, a Kafka property without a
// counterpart, and the development broker in place of kafka.brokers.
func TestWarnings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(file, []byte("kafka:\n  \"max.in.flight.requests.per.connection\": 5\n"), 0o600))
	for _, name := range []string{"ingest", "forwarder", "resender"} {
		t.Run(name, func(t *testing.T) {
			o := runWith(t, name, []string{"-config", file, "-dev-broker", "127.0.0.1:19092"}, []string{"SPILLWAY_NO_SUCH_KEY=1"}, started)
			require.Equal(t, ExitOK, o.code, o.stderr)
			require.NotNil(t, o.svc)
			assert.Equal(t, []string{"127.0.0.1:19092"}, o.svc.Config.Kafka.Brokers, "the -dev-broker address is used")
			assert.Equal(t, file, o.svc.ConfigPath)

			lines := logLines(t, o.stderr)
			dev := warning(lines, "NO kafka.brokers CONFIGURED: using the development broker at 127.0.0.1:19092, which keeps records in memory only. Set kafka.brokers (or SPILLWAY_KAFKA_BROKERS) for real use.")
			if assert.NotNil(t, dev, "the development broker warning in %s", o.stderr) {
				assert.Equal(t, name, dev["service"])
				assert.Equal(t, "v1.2.3", dev["version"])
			}
			ignored := warning(lines, "kafka property has no counterpart in Spillway and is ignored")
			if assert.NotNil(t, ignored, "the ignored property warning in %s", o.stderr) {
				assert.Equal(t, "kafka.max.in.flight.requests.per.connection", ignored["property"])
			}
			assert.NotNil(t, warning(lines, "environment variable SPILLWAY_NO_SUCH_KEY matches no configuration key and is ignored"), o.stderr)
		})
	}
}

// TestOldRequestBoundKeyWarned: a configuration that sets
// server.http.max_body_bytes and not server.kafka.max_request_bytes starts,
// and the service logs at start that the old key bounds the Kafka
// listener, naming both keys; with the new key set, no such warning.
func TestOldRequestBoundKeyWarned(t *testing.T) {
	const msg = "server.kafka.max_request_bytes is not set, so server.http.max_body_bytes (4096) bounds the Kafka listener's requests, as it did before the listener had its own key; set server.kafka.max_request_bytes to bound them apart from HTTP bodies"
	o := runWith(t, "ingest", nil, []string{"SPILLWAY_SERVER_HTTP_MAX_BODY_BYTES=4096"}, started)
	require.Equal(t, ExitOK, o.code, o.stderr)
	assert.NotNil(t, warning(logLines(t, o.stderr), msg), o.stderr)
	assert.Equal(t, 4096, o.svc.Config.Server.Kafka.MaxRequestBytes)

	o = runWith(t, "ingest", nil, []string{"SPILLWAY_SERVER_HTTP_MAX_BODY_BYTES=4096", "SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=8192"}, started)
	require.Equal(t, ExitOK, o.code, o.stderr)
	assert.Nil(t, warning(logLines(t, o.stderr), msg), o.stderr)
	assert.Equal(t, 8192, o.svc.Config.Server.Kafka.MaxRequestBytes)
}

func TestConfiguredBrokersWin(t *testing.T) {
	o := runWith(t, "resender", []string{"-dev-broker", "127.0.0.1:19092"}, []string{"SPILLWAY_KAFKA_BROKERS=kafka-1:9092,kafka-2:9092"}, started)
	require.Equal(t, ExitOK, o.code, o.stderr)
	assert.Equal(t, []string{"kafka-1:9092", "kafka-2:9092"}, o.svc.Config.Kafka.Brokers)
	assert.NotContains(t, o.stderr, "NO kafka.brokers CONFIGURED")
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(context.Context, *Service) (runner, error)
		code  int
		log   string // the ERROR line's msg
	}{
		{"runs", started, ExitOK, ""},
		{"fails to start", func(context.Context, *Service) (runner, error) {
			return runner{}, errors.New("monitoring listen :1: permission denied")
		}, ExitFailed, "forwarder failed to start"},
		{"stops with an error", func(context.Context, *Service) (runner, error) {
			return runner{err: errors.New("kafka is gone")}, nil
		}, ExitFailed, "forwarder stopped with an error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := runWith(t, "forwarder", nil, []string{"SPILLWAY_KAFKA_BROKERS=kafka:9092"}, tc.start)
			assert.Equal(t, tc.code, o.code)
			var errs []string
			for _, l := range logLines(t, o.stderr) {
				if l["level"] == "ERROR" {
					errs = append(errs, l["msg"].(string))
				}
			}
			if tc.log == "" {
				assert.Empty(t, errs)
			} else {
				assert.Equal(t, []string{tc.log}, errs)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
	defer srv.Close()
	assert.Equal(t, 0, runWith(t, "ingest", []string{"-probe", srv.URL + "/readyz"}, nil, started).code)
	status = http.StatusServiceUnavailable
	o := runWith(t, "ingest", []string{"-probe", srv.URL + "/readyz"}, nil, started)
	assert.Equal(t, 1, o.code)
	assert.Nil(t, o.svc)
}

// TestReloads sends this process a SIGHUP once a service asked for
// reloads: it arrives on the channel instead of ending the process.
func TestReloads(t *testing.T) {
	got := make(chan struct{})
	o := runWith(t, "ingest", nil, []string{"SPILLWAY_KAFKA_BROKERS=kafka:9092"}, func(_ context.Context, s *Service) (runner, error) {
		reloads := s.Reloads()
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
		select {
		case <-reloads:
			close(got)
		case <-time.After(10 * time.Second):
		}
		return runner{}, nil
	})
	require.Equal(t, ExitOK, o.code, o.stderr)
	select {
	case <-got:
	default:
		t.Fatal("SIGHUP did not arrive on Reloads within 10s")
	}
}
