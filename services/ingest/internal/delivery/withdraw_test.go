package delivery_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestStoppedWaitingWithdrawsUnsent: Kafka takes 6 s to answer a produce.
// Record a is on the wire; record b, on the same partition, waits in the
// producer's queue behind it. Both are answered at producer.cb.max_wait
// (1 s) and spilled. a may still reach Kafka, and is counted as a possible
// duplicate; b is withdrawn from the queue before it is spilled, so it is
// never sent: once the ingest has stopped (its producer sends everything
// still queued), Kafka holds a and not b, the buffer holds both, once.
func TestStoppedWaitingWithdrawsUnsent(t *testing.T) {
	const delay = 6 * time.Second
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "slow", 1)
	var delaying atomic.Bool
	var held atomic.Int64 // produces seen while delaying
	c.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if delaying.Load() {
			held.Add(1)
			c.SleepControl(func() { time.Sleep(delay) })
		}
		return nil, nil, false
	})
	in := ingesttest.Start(t, addr, "SPILLWAY_PRODUCER_CB_MAX_WAIT=1s", "SPILLWAY_PRODUCER_CB_SLOW_CALL=10s")
	status, a := post(t, in, "slow", "warm") // the topic's layout is known
	require.Equal(t, http.StatusOK, status, a)

	delaying.Store(true)
	first := make(chan int, 1)
	go func() {
		status, err := postStatus(in.URL+"/topics/slow/messages", "a")
		if err != nil {
			t.Errorf("POST a: %v", err)
		}
		first <- status
	}()
	require.Eventually(t, func() bool { return held.Load() == 1 }, 5*time.Second, time.Millisecond, "a's produce reached Kafka")
	start := time.Now()
	status, b := post(t, in, "slow", "b") // queued behind a's batch
	require.Equal(t, http.StatusAccepted, status, "answered at max_wait from the buffer: %+v", b)
	assert.Less(t, time.Since(start), delay/2, "answered at max_wait, not when Kafka answered")
	require.Equal(t, http.StatusAccepted, <-first, "a, answered at max_wait from the buffer")
	delaying.Store(false) // what is sent from now on is answered at once

	metric := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	assert.Equal(t, 2.0, metric(`spillway_records_buffered_total{reason="timeout",topic="slow"}`))
	assert.Equal(t, 1.0, metric(`spillway_records_possible_duplicates_total{topic="slow"}`), "a was on the wire; b never was")
	msgs := stored(t, in, "spillway.spill.>", 2)
	require.Len(t, msgs, 2)
	values := map[string]string{} // value → id
	for _, m := range msgs {
		rec, err := spill.Decode(m.Data)
		require.NoError(t, err)
		values[string(rec.Value)] = rec.ID
	}
	require.Contains(t, values, "a")
	require.Equal(t, b.ID, values["b"])

	require.NoError(t, in.Stop()) // its producer sends what it still holds, and waits for Kafka
	got := kafkatest.Consume(t, addr, "slow", 2, 10*time.Second)
	var inKafka []string
	for _, r := range got {
		inKafka = append(inKafka, string(r.Value))
	}
	assert.ElementsMatch(t, []string{"warm", "a"}, inKafka, "b was withdrawn before it was sent: it is only in the buffer")
}
