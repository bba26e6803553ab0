package app_test

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
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
