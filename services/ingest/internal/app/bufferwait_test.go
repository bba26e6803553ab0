package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill/spilltest"
	"github.com/spillway/spillway/services/ingest/internal/app"
	"github.com/spillway/spillway/services/ingest/internal/grpcapi"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// ingestConfig is the configuration of an ingest on the broker at addr and
// the JetStream at natsURL, every listener on port 0.
func ingestConfig(tb testing.TB, addr, natsURL string, env ...string) *config.Config {
	tb.Helper()
	cfg, err := config.Parse(nil, append([]string{
		"SPILLWAY_KAFKA_BROKERS=" + addr,
		"SPILLWAY_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_GRPC_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_KAFKA_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_MONITORING_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_SHUTDOWN_TIMEOUT=5s",
		"SPILLWAY_PRODUCER_WAL_PATH=" + tb.TempDir(),
		"SPILLWAY_PRODUCER_WAL_NATS_URLS=" + natsURL,
	}, env...))
	require.NoError(tb, err)
	return cfg
}

func readyz(tb testing.TB, monitor string) (int, string) {
	tb.Helper()
	resp, err := http.Get("http://" + monitor + "/readyz")
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	return resp.StatusCode, string(b)
}

// grpcHealth asks the ingest's gRPC health for the whole server and
// returns its status and the reason it gave (grpcapi.ReadinessTrailer).
func grpcHealth(tb testing.TB, addr string) (healthpb.HealthCheckResponse_ServingStatus, string) {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(tb, err)
	defer conn.Close()
	var trailer metadata.MD
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}, grpc.Trailer(&trailer))
	require.NoError(tb, err)
	return resp.GetStatus(), strings.Join(trailer.Get(grpcapi.ReadinessTrailer), "")
}

// assertHealthFollowsReadyz checks that the gRPC health says what /readyz
// says: NOT_SERVING with /readyz's reason, or SERVING.
func assertHealthFollowsReadyz(tb testing.TB, a *app.App) {
	tb.Helper()
	status, body := readyz(tb, a.MonitorAddr())
	health, reason := grpcHealth(tb, a.GRPCAddr())
	if status == http.StatusOK {
		assert.Equal(tb, healthpb.HealthCheckResponse_SERVING, health, "gRPC health while /readyz is 200")
		assert.Empty(tb, reason)
		return
	}
	assert.Equal(tb, healthpb.HealthCheckResponse_NOT_SERVING, health, "gRPC health while /readyz is %d %q", status, body)
	assert.Equal(tb, strings.TrimSuffix(body, "\n"), reason, "the gRPC health's reason is /readyz's")
}

// TestIngestWaitsForTheBuffer starts the ingest while its JetStream does
// not answer: it starts anyway, /readyz answers 503 with the reason,
// records go to Kafka meanwhile (mode fallback), a record that needs the
// buffer is refused 503 (never acknowledged), and once JetStream answers
// the ingest becomes ready and buffers.
func TestIngestWaitsForTheBuffer(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	held := spilltest.NewHeldJetStream(t, "spillway")
	cfg := ingestConfig(t, addr, held.URL, "SPILLWAY_PRODUCER_WAL_MODE=fallback", "SPILLWAY_PRODUCER_WAL_ALWAYS_TOPICS=ahead")

	logs := &lockedLog{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))

	type started struct {
		a   *app.App
		err error
	}
	news := make(chan started, 1)
	go func() {
		a, err := app.New(app.Options{Config: cfg, Logger: logger})
		news <- started{a, err}
	}()
	var a *app.App
	select {
	case s := <-news:
		require.NoError(t, s.err, "the ingest must start while JetStream does not answer")
		a = s.a
	case <-time.After(15 * time.Second):
		t.Fatal("app.New did not return within 15s while JetStream did not answer")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(15 * time.Second):
			t.Error("the ingest did not stop")
		}
	})

	require.Eventually(t, func() bool {
		status, body := readyz(t, a.MonitorAddr())
		return status == http.StatusServiceUnavailable && strings.HasPrefix(body, "not ready: buffer: create or update stream SPILLWAY: ")
	}, 10*time.Second, 20*time.Millisecond, "/readyz names the buffer as the reason")
	_, body := readyz(t, a.MonitorAddr())
	assert.Contains(t, body, "did not answer within")
	assertHealthFollowsReadyz(t, a)

	url := "http://" + a.HTTPAddr()
	status, body := ingesttest.Post(t, url+"/topics/meanwhile/messages", "text/plain", "to kafka")
	assert.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, `"outcome":"delivered"`)
	got := kafkatest.Consume(t, addr, "meanwhile", 1, 10*time.Second)
	require.Len(t, got, 1)
	assert.Equal(t, "to kafka", string(got[0].Value))

	status, body = ingesttest.Post(t, url+"/topics/ahead/messages", "text/plain", "needs the buffer")
	assert.Equal(t, http.StatusServiceUnavailable, status, body)
	assert.Contains(t, body, "not ready yet")

	// It goes on waiting: it neither exits nor turns ready.
	assert.Never(t, func() bool {
		if len(done) > 0 {
			return true
		}
		status, _ := readyz(t, a.MonitorAddr())
		return status != http.StatusServiceUnavailable
	}, 3*time.Second, 100*time.Millisecond, "stays up and not ready while JetStream does not answer")

	held.Release()
	releasedAt := time.Now()
	ingesttest.WaitReady(t, "http://"+a.MonitorAddr(), 10*time.Second)
	t.Logf("ready %v after JetStream answered", time.Since(releasedAt).Round(time.Millisecond))
	assertHealthFollowsReadyz(t, a)
	status, body = ingesttest.Post(t, url+"/topics/ahead/messages", "text/plain", "buffered")
	assert.Equal(t, http.StatusAccepted, status, body)
	assert.Contains(t, body, `"outcome":"buffered"`)

	text := logs.String()
	assert.Equal(t, 1, strings.Count(text, `"msg":"waiting for the buffer"`), "logged once, not once per try:\n%s", text)
	assert.Equal(t, 1, strings.Count(text, `"msg":"buffer ready"`), text)
}

// lockedLog is a log that the ingest writes while the test reads it.
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

// TestIngestStopsOnABufferConfigurationError: a stream that exists with a
// configuration Spillway cannot take over (another retention policy) is
// not waited for: the ingest does not start, and says why.
func TestIngestStopsOnABufferConfigurationError(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	srv := spilltest.StartNATS(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "SPILLWAY", Subjects: []string{"spillway.>"}, Retention: jetstream.LimitsPolicy})
	require.NoError(t, err)

	cfg := ingestConfig(t, addr, srv.ClientURL())
	start := time.Now()
	a, err := app.New(app.Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if a != nil {
		t.Error("app.New returned an ingest")
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exists with another retention policy")
	assert.Less(t, time.Since(start), 5*time.Second, "refused at once, not waited for")
}

// TestIngestStopsOnAConfigurationErrorAfterWaiting: a configuration error
// met by a later try, once JetStream answers, stops the ingest too: Run
// returns it.
func TestIngestStopsOnAConfigurationErrorAfterWaiting(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	held := spilltest.NewHeldJetStream(t, "spillway")
	nc, err := nats.Connect(held.Behind)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "SPILLWAY", Subjects: []string{"spillway.>"}, Retention: jetstream.LimitsPolicy})
	require.NoError(t, err)

	a, err := app.New(app.Options{Config: ingestConfig(t, addr, held.URL), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err, "the ingest starts while JetStream does not answer")
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	ingesttest.Post(t, "http://"+a.HTTPAddr()+"/topics/t/messages", "text/plain", "serving") // Run has started
	held.Release()
	select {
	case err := <-done:
		require.Error(t, err)
		assert.Contains(t, err.Error(), "exists with another retention policy")
	case <-time.After(15 * time.Second):
		t.Fatal("the ingest did not stop on the configuration error")
	}
}

// TestIngestWaitsForNATS starts the ingest while no NATS server listens
// at producer.wal.nats.urls: it starts anyway, /readyz and the gRPC
// health say it waits for the connection, records go to Kafka meanwhile,
// and once a server listens there the ingest connects, makes the stream
// and becomes ready.
func TestIngestWaitsForNATS(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close()) // nothing listens there now
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	cfg := ingestConfig(t, addr, natsURL, "SPILLWAY_PRODUCER_WAL_ALWAYS_TOPICS=ahead")

	start := time.Now()
	a, err := app.New(app.Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err, "the ingest must start while no NATS server listens")
	assert.Less(t, time.Since(start), 5*time.Second, "New does not wait for NATS")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(15 * time.Second):
			t.Error("the ingest did not stop")
		}
	})

	want := "not ready: buffer: connect to NATS at " + natsURL + ": "
	require.Eventually(t, func() bool {
		status, body := readyz(t, a.MonitorAddr())
		return status == http.StatusServiceUnavailable && strings.HasPrefix(body, want)
	}, 10*time.Second, 20*time.Millisecond, "/readyz names the connection")
	assertHealthFollowsReadyz(t, a)

	url := "http://" + a.HTTPAddr()
	status, body := ingesttest.Post(t, url+"/topics/meanwhile/messages", "text/plain", "to kafka")
	assert.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, `"outcome":"delivered"`)
	status, body = ingesttest.Post(t, url+"/topics/ahead/messages", "text/plain", "needs the buffer")
	assert.Equal(t, http.StatusServiceUnavailable, status, body)

	spilltest.StartNATS(t, &server.Options{Port: port, JetStream: true, StoreDir: t.TempDir()})
	ingesttest.WaitReady(t, "http://"+a.MonitorAddr(), 10*time.Second)
	assertHealthFollowsReadyz(t, a)
	status, body = ingesttest.Post(t, url+"/topics/ahead/messages", "text/plain", "buffered")
	assert.Equal(t, http.StatusAccepted, status, body)
	assert.Contains(t, body, `"outcome":"buffered"`)
}
