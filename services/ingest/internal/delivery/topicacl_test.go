package delivery_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestOneTopicsACLDoesNotOpenTheBreaker: Kafka refuses one topic to
// Spillway's principal (TOPIC_AUTHORIZATION_FAILED, as a topic's ACL
// does). That topic's records are spilled (202, reason not_authorized),
// and they say nothing about Kafka: 100 of them, among load on another
// topic, leave the breaker closed, and every record of the other topic is
// delivered, none buffered.
func TestOneTopicsACLDoesNotOpenTheBreaker(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "denied", 1)
	kafkatest.CreateTopic(t, addr, "orders", 3)
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "denied", Err: kerr.TopicAuthorizationFailed, Count: -1})
	in := ingesttest.Start(t, addr) // the breaker's defaults: 5 failures in a row, or half of 20 produces

	const denied, orders = 100, 100
	statuses := map[string][]int{}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	send := func(topic string, n int) {
		for i := range n {
			status, err := postStatus(in.URL+"/topics/"+topic+"/messages", fmt.Sprintf("%s-%d", topic, i))
			if err != nil {
				t.Errorf("POST to %s: %v", topic, err)
				return
			}
			mu.Lock()
			statuses[topic] = append(statuses[topic], status)
			mu.Unlock()
		}
	}
	for range 2 { // load on orders, from 2 clients, while the denied topic's records arrive from 10
		wg.Go(func() { send("orders", orders/2) })
	}
	for range 10 {
		wg.Go(func() { send("denied", denied/10) })
	}
	wg.Wait()

	metric := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	assert.Equal(t, 0.0, metric("spillway_breaker_state"), "one topic's ACL is not Kafka failing")
	assert.Equal(t, -1.0, metric(`spillway_breaker_transitions_total{to="open"}`), "never opened")
	require.Len(t, statuses["orders"], orders)
	require.Len(t, statuses["denied"], denied)
	for i, s := range statuses["orders"] {
		require.Equal(t, http.StatusOK, s, "orders record %d: delivered", i)
	}
	for i, s := range statuses["denied"] {
		require.Equal(t, http.StatusAccepted, s, "denied record %d: spilled, for the resender once the ACL is fixed", i)
	}
	assert.Equal(t, -1.0, metric(`spillway_records_buffered_total{reason="breaker_open",topic="orders"}`))
	// The first record refused is buffered for its reason; the others of
	// its lane (keyless records share one) wait behind it
	// (producer.order partition) without trying Kafka.
	refused, behind := metric(`spillway_records_buffered_total{reason="not_authorized",topic="denied"}`), metric(`spillway_records_buffered_total{reason="backlog",topic="denied"}`)
	assert.GreaterOrEqual(t, refused, 1.0)
	assert.Equal(t, float64(denied), refused+max(behind, 0))
	assert.Equal(t, float64(orders), metric(`spillway_records_delivered_total{topic="orders"}`))
	assert.Len(t, kafkatest.Consume(t, addr, "orders", orders, 10*time.Second), orders)
}

// postStatus posts one record and returns the status, without failing the
// test from another goroutine.
func postStatus(url, value string) (int, error) {
	resp, err := http.Post(url, "text/plain", strings.NewReader(value))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, nil
}
