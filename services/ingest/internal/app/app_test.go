package app_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/app"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestShutdownFinishesInFlightRequests stops the ingest while a request
// waits for a slow Kafka: the request must still be answered, delivered,
// and the listeners must then be closed.
func TestShutdownFinishesInFlightRequests(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	status, body := ingesttest.Post(t, in.URL+"/topics/slow/messages", "text/plain", "warm-up")
	require.Equal(t, http.StatusOK, status, body)

	var slow atomic.Bool
	slow.Store(true)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if slow.Load() {
			time.Sleep(700 * time.Millisecond)
		}
		return nil, nil, false
	})

	type answer struct {
		status int
		body   string
	}
	answered := make(chan answer, 1)
	go func() {
		s, b := ingesttest.Post(t, in.URL+"/topics/slow/messages", "text/plain", "in flight")
		answered <- answer{s, b}
	}()
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight") == 1
	}, 5*time.Second, 10*time.Millisecond)

	stopped := make(chan error, 1)
	go func() { stopped <- in.Stop() }()

	select {
	case a := <-answered:
		assert.Equal(t, http.StatusOK, a.status, a.body)
		assert.True(t, strings.Contains(a.body, `"outcome":"delivered"`), a.body)
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight request was not answered")
	}
	require.NoError(t, <-stopped)
	slow.Store(false)

	_, err := net.DialTimeout("tcp", strings.TrimPrefix(in.URL, "http://"), time.Second)
	assert.Error(t, err, "the HTTP port is closed after shutdown")
	got := kafkatest.Consume(t, addr, "slow", 2, 10*time.Second)
	assert.Len(t, got, 2)
}

// TestShutdownSpillsWhatKafkaHasNotAcknowledged stops the ingest while a
// request waits for a Kafka slower than the shutdown deadline: the record
// is spilled to the buffer and answered 202 before the ingest exits.
func TestShutdownSpillsWhatKafkaHasNotAcknowledged(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_SHUTDOWN_TIMEOUT=2s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=20000")
	status, body := ingesttest.Post(t, in.URL+"/topics/late/messages", "text/plain", "warm-up")
	require.Equal(t, http.StatusOK, status, body)

	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		return nil, nil, false
	})
	answered := make(chan string, 1)
	go func() {
		s, b := ingesttest.Post(t, in.URL+"/topics/late/messages", "text/plain", "in flight")
		answered <- fmt.Sprint(s, " ", b)
	}()
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight") == 1
	}, 5*time.Second, 10*time.Millisecond)

	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- in.Stop() }()
	select {
	case a := <-answered:
		assert.True(t, strings.HasPrefix(a, "202 "), a)
		assert.Contains(t, a, `"outcome":"buffered"`)
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight request was not answered")
	}
	assert.Less(t, time.Since(start), 2*time.Second, "answered before the shutdown deadline")
	require.NoError(t, <-stopped)
}

// TestStartErrorIsReturned: a listener that cannot bind is an error that
// names the key, not a crash, and what New had started is stopped.
func TestStartErrorIsReturned(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	cfg, err := config.Parse(nil, []string{
		"SPILLWAY_SERVER_HTTP_LISTEN=" + busy.Addr().String(), "SPILLWAY_SERVER_GRPC_LISTEN=127.0.0.1:0", "SPILLWAY_SERVER_KAFKA_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_MONITORING_LISTEN=127.0.0.1:0", "SPILLWAY_PRODUCER_WAL_PATH=" + t.TempDir(), "SPILLWAY_PRODUCER_WAL_LISTEN=127.0.0.1:0",
	})
	require.NoError(t, err)
	_, err = app.New(app.Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "server.http.listen")
}
