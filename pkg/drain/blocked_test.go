package drain

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// logLines is a slog handler's output, safe for concurrent writes.
type logLines struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// count is how many lines contain s.
func (l *logLines) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const (
	logBlocked   = "Kafka does not take the topic's buffered records"
	logUnblocked = "Kafka takes the topic's buffered records again"
)

func blockedValue(t *testing.T, reg prometheus.Gatherer, consumer, topic string, reason record.Reason) float64 {
	t.Helper()
	return metricValue(t, reg, "spillway_drain_topic_blocked", "consumer", consumer, "topic", topic, "reason", string(reason))
}

// TestBlockedGaugeAndLogOncePerChange: the gauge of a topic is 1 under
// the reason Kafka gives while its records are held back, moves with the
// reason, and is 0 once its records are delivered again; each change is
// logged once, however many batches repeat it. Topics past the label
// bound share "other", which counts them.
func TestBlockedGaugeAndLogOncePerChange(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, 1)
	var logs logLines
	b := newBlocked("forwarder", m, slog.New(slog.NewJSONHandler(&logs, nil)))
	notAuthorized := record.Errorf(record.ReasonNotAuthorized, "Kafka refused Spillway's credentials for this topic")
	unknown := record.Errorf(record.ReasonUnknownTopic, "the topic does not exist and is not created automatically")

	for range 10 {
		b.update(nil, map[string]error{"orders": notAuthorized})
	}
	assert.Equal(t, 1.0, blockedValue(t, reg, "forwarder", "orders", record.ReasonNotAuthorized))
	assert.Equal(t, 1, logs.count(logBlocked), "one log line for ten batches held back alike:\n%s", logs.String())
	assert.Equal(t, 1, logs.count(`"reason":"not_authorized"`))

	b.update(map[string]int{"orders": 3}, map[string]error{"orders": unknown}) // a record held back wins over a delivered one
	assert.Equal(t, 0.0, blockedValue(t, reg, "forwarder", "orders", record.ReasonNotAuthorized))
	assert.Equal(t, 1.0, blockedValue(t, reg, "forwarder", "orders", record.ReasonUnknownTopic))
	assert.Equal(t, 2, logs.count(logBlocked), "the new reason is logged")
	assert.Equal(t, 1, logs.count(`"was":"not_authorized"`))

	b.update(map[string]int{"elsewhere": 5}, nil) // says nothing about orders
	assert.Equal(t, 1.0, blockedValue(t, reg, "forwarder", "orders", record.ReasonUnknownTopic))
	for range 5 {
		b.update(map[string]int{"orders": 1}, nil)
	}
	assert.Equal(t, 0.0, blockedValue(t, reg, "forwarder", "orders", record.ReasonUnknownTopic))
	assert.Equal(t, 1, logs.count(logUnblocked), "one log line when Kafka takes the records again:\n%s", logs.String())
	assert.Equal(t, 2, logs.count(logBlocked))

	// Label bound 1: "orders" has its label, the next topics share "other".
	b.update(nil, map[string]error{"a": notAuthorized, "b": notAuthorized})
	assert.Equal(t, 2.0, blockedValue(t, reg, "forwarder", "other", record.ReasonNotAuthorized), "two blocked topics in other")
	b.update(map[string]int{"a": 1}, nil)
	assert.Equal(t, 1.0, blockedValue(t, reg, "forwarder", "other", record.ReasonNotAuthorized), "one left")
	b.update(map[string]int{"b": 1}, nil)
	assert.Equal(t, 0.0, blockedValue(t, reg, "forwarder", "other", record.ReasonNotAuthorized))
}

// runLogged starts a forwarder drainer that logs to logs.
func (e *env) runLogged(t *testing.T, logs *logLines) {
	t.Helper()
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	d, err := New(t.Context(), Options{
		JS: e.js, WAL: e.cfg.Producer.WAL, Kind: Forwarder.Kind, Consumer: Forwarder.Name, Producer: p,
		Breaker: e.cfg.Producer.CB, BatchSize: 100, Ordered: e.cfg.Producer.Order == config.OrderPartition, Metrics: e.metrics,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; _ = p.Close() })
}

// noDeadLetters fails the test if the stream holds a dead letter.
func noDeadLetters(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	s, err := js.Stream(t.Context(), "SPILLWAY")
	require.NoError(t, err)
	_, err = s.GetLastMsgForSubject(t.Context(), "spillway.dlq.>")
	assert.ErrorIs(t, err, jetstream.ErrMsgNotFound, "no dead letter was stored")
}

// TestConditionsThatHealStayBuffered: for each condition in Kafka that
// heals (authorization refused, the topic missing, no leader, throttling,
// an unknown server error, a request timeout) a buffered record is not
// dead-lettered: it stays buffered, the topic shows as blocked with the
// reason (logged once), and once Kafka takes records again it is in Kafka
// once with its value, and the topic is no longer blocked.
func TestConditionsThatHealStayBuffered(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   *kerr.Error
		reason record.Reason
	}{
		{"topic authorization failed", kerr.TopicAuthorizationFailed, record.ReasonNotAuthorized},
		{"cluster authorization failed", kerr.ClusterAuthorizationFailed, record.ReasonNotAuthorized},
		{"unknown topic", kerr.UnknownTopicOrPartition, record.ReasonUnknownTopic},
		{"leader not available", kerr.LeaderNotAvailable, record.ReasonUnavailable},
		{"throttled", kerr.ThrottlingQuotaExceeded, record.ReasonUnavailable},
		{"unknown server error", kerr.UnknownServerError, record.ReasonUnavailable},
		{"request timed out", kerr.RequestTimedOut, record.ReasonTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each waits for the drain's backoff (1 s, 2 s, 4 s)
			c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(3, "heals"))
			var failing atomic.Bool
			failing.Store(true)
			kafkatest.RefuseProduce(c, &failing, tc.code)
			// A breaker that stays closed and no retries in the producer:
			// only the drain's backoff acts.
			e := setup(t, addr, "SPILLWAY_KAFKA_RETRIES=0", "SPILLWAY_PRODUCER_CB_FAILS=1000")
			e.spill(t, spill.WriteAhead, record.Record{ID: "held", Topic: "heals", Key: []byte("k"), Value: []byte("kept, not dead-lettered"), Partition: record.AnyPartition})
			var logs logLines
			e.runLogged(t, &logs)

			require.Eventually(t, func() bool {
				return metricValue(t, e.reg, "spillway_records_retried_total", "consumer", "forwarder", "reason", string(tc.reason)) >= 2
			}, 15*time.Second, 20*time.Millisecond, "the record is tried again after a failure")
			assert.Equal(t, 1.0, blockedValue(t, e.reg, "forwarder", "heals", tc.reason))
			assert.Equal(t, 1, logs.count(logBlocked), "logged once, not per try:\n%s", logs.String())
			noDeadLetters(t, e.js)
			for _, r := range []record.Reason{record.ReasonInvalid, record.ReasonTooLarge} {
				assert.Equal(t, 0.0, metricValue(t, e.reg, "spillway_records_dead_lettered_total", "consumer", "forwarder", "reason", string(r)))
			}

			failing.Store(false) // healed
			recs := kafkatest.Consume(t, addr, "heals", 1, 20*time.Second)
			require.Len(t, recs, 1)
			assert.Equal(t, "kept, not dead-lettered", string(recs[0].Value))
			id, _ := kafkatest.HeaderValue(recs[0], record.IDHeader)
			assert.Equal(t, "held", id)
			require.Eventually(t, func() bool {
				return blockedValue(t, e.reg, "forwarder", "heals", tc.reason) == 0
			}, 5*time.Second, 20*time.Millisecond, "the topic is no longer blocked")
			assert.Equal(t, 1, logs.count(logUnblocked), "%s", logs.String())
			assert.Equal(t, 1, logs.count(logBlocked))
			noDeadLetters(t, e.js)
		})
	}
}

// TestMissingTopicStaysBufferedUntilCreated: with auto-creation off, a
// record buffered for a topic that does not exist stays buffered (the
// topic is blocked as unknown_topic) until an operator creates the topic;
// then it is delivered. Nothing is dead-lettered.
func TestMissingTopicStaysBufferedUntilCreated(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	e := setup(t, addr, "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false")
	e.spill(t, spill.WriteAhead, record.Record{ID: "early", Topic: "created-later", Value: []byte("waited"), Partition: record.AnyPartition})
	var logs logLines
	e.runLogged(t, &logs)

	require.Eventually(t, func() bool {
		return blockedValue(t, e.reg, "forwarder", "created-later", record.ReasonUnknownTopic) == 1
	}, 15*time.Second, 20*time.Millisecond, "the topic shows as blocked: unknown_topic")
	noDeadLetters(t, e.js)

	kafkatest.CreateTopic(t, addr, "created-later", 3)
	recs := kafkatest.Consume(t, addr, "created-later", 1, 20*time.Second)
	require.Len(t, recs, 1)
	assert.Equal(t, "waited", string(recs[0].Value))
	require.Eventually(t, func() bool {
		return blockedValue(t, e.reg, "forwarder", "created-later", record.ReasonUnknownTopic) == 0
	}, 5*time.Second, 20*time.Millisecond)
	noDeadLetters(t, e.js)
	assert.Equal(t, 1, logs.count(logBlocked), "%s", logs.String())
	assert.Equal(t, 1, logs.count(logUnblocked))
}
