package drain

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

// lockedLog is a log that a service writes while the test reads it.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var monitoringLine = regexp.MustCompile(`"msg":"monitoring listening","addr":"([^"]+)"`)

func getReadyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func serviceConfig(t *testing.T, addr, natsURL string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(nil, []string{
		"SPILLWAY_KAFKA_BROKERS=" + addr,
		"SPILLWAY_PRODUCER_WAL_NATS_URLS=" + natsURL,
		"SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:0",
		"SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:0",
	})
	require.NoError(t, err)
	return cfg
}

// TestServiceWaitsForTheBuffer starts the forwarder and the resender while
// their JetStream does not answer: NewService waits (it does not fail),
// /readyz names the reason, and once JetStream answers the service starts
// and becomes ready.
func TestServiceWaitsForTheBuffer(t *testing.T) {
	for _, role := range []Role{Forwarder, Resender} {
		t.Run(role.Name, func(t *testing.T) {
			_, addr := kafkatest.NewCluster(t)
			held := spilltest.NewHeldJetStream(t, "spillway")
			logs := &lockedLog{}
			logger := slog.New(slog.NewJSONHandler(logs, nil))
			type started struct {
				s   *Service
				err error
			}
			news := make(chan started, 1)
			go func() {
				s, err := NewService(t.Context(), ServiceOptions{Role: role, Config: serviceConfig(t, addr, held.URL), Logger: logger})
				news <- started{s, err}
			}()
			var monitor string
			require.Eventually(t, func() bool {
				m := monitoringLine.FindStringSubmatch(logs.String())
				if m != nil {
					monitor = m[1]
				}
				return m != nil
			}, 10*time.Second, 10*time.Millisecond)
			require.Eventually(t, func() bool {
				status, body := getReadyz(t, monitor)
				return status == http.StatusServiceUnavailable && strings.HasPrefix(body, "not ready: buffer: create or update stream SPILLWAY: ")
			}, 10*time.Second, 20*time.Millisecond, "/readyz names the buffer as the reason")
			select {
			case s := <-news:
				t.Fatalf("NewService returned while JetStream did not answer: %v", s.err)
			default:
			}

			held.Release()
			var s *Service
			select {
			case st := <-news:
				require.NoError(t, st.err)
				s = st.s
			case <-time.After(10 * time.Second):
				t.Fatal("NewService did not return within 10s of JetStream answering")
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			require.Eventually(t, func() bool {
				status, _ := getReadyz(t, monitor)
				return status == http.StatusOK
			}, 10*time.Second, 20*time.Millisecond)
			cancel()
			require.NoError(t, <-done)
			text := logs.String()
			assert.Equal(t, 1, strings.Count(text, `"msg":"waiting for the buffer"`), "logged once, not once per try:\n%s", text)
			assert.GreaterOrEqual(t, strings.Count(text, `"msg":"buffer ready"`), 1, text)
		})
	}
}

// TestServiceStopsOnABufferConfigurationError: a stream that exists with
// another retention policy is not waited for.
func TestServiceStopsOnABufferConfigurationError(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	srv := spilltest.StartNATS(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "SPILLWAY", Subjects: []string{"spillway.>"}, Retention: jetstream.LimitsPolicy})
	require.NoError(t, err)

	start := time.Now()
	_, err = NewService(t.Context(), ServiceOptions{Role: Forwarder, Config: serviceConfig(t, addr, srv.ClientURL()), Logger: discard})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exists with another retention policy")
	assert.Less(t, time.Since(start), 5*time.Second, "refused at once, not waited for")
}

// TestServiceWaitsForNATS starts the forwarder and the resender while no
// NATS server listens at producer.wal.nats.urls: NewService waits, /readyz
// names the connection, and once a server listens there the service
// starts and becomes ready.
func TestServiceWaitsForNATS(t *testing.T) {
	for _, role := range []Role{Forwarder, Resender} {
		t.Run(role.Name, func(t *testing.T) {
			_, addr := kafkatest.NewCluster(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			port := ln.Addr().(*net.TCPAddr).Port
			require.NoError(t, ln.Close()) // nothing listens there now
			natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
			logs := &lockedLog{}
			type started struct {
				s   *Service
				err error
			}
			news := make(chan started, 1)
			go func() {
				s, err := NewService(t.Context(), ServiceOptions{Role: role, Config: serviceConfig(t, addr, natsURL), Logger: slog.New(slog.NewJSONHandler(logs, nil))})
				news <- started{s, err}
			}()
			var monitor string
			require.Eventually(t, func() bool {
				m := monitoringLine.FindStringSubmatch(logs.String())
				if m != nil {
					monitor = m[1]
				}
				return m != nil
			}, 10*time.Second, 10*time.Millisecond)
			want := "not ready: buffer: connect to NATS at " + natsURL + ": "
			require.Eventually(t, func() bool {
				status, body := getReadyz(t, monitor)
				return status == http.StatusServiceUnavailable && strings.HasPrefix(body, want)
			}, 10*time.Second, 20*time.Millisecond, "/readyz names the connection")
			select {
			case s := <-news:
				t.Fatalf("NewService returned while no NATS server listened: %v", s.err)
			case <-time.After(time.Second):
			}

			spilltest.StartNATS(t, &server.Options{Port: port, JetStream: true, StoreDir: t.TempDir()})
			var s *Service
			select {
			case st := <-news:
				require.NoError(t, st.err)
				s = st.s
			case <-time.After(10 * time.Second):
				t.Fatal("NewService did not return within 10s of the server starting")
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			require.Eventually(t, func() bool {
				status, _ := getReadyz(t, monitor)
				return status == http.StatusOK
			}, 10*time.Second, 20*time.Millisecond)
			cancel()
			require.NoError(t, <-done)
		})
	}
}
