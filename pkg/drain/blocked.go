package drain

import (
	"log/slog"
	"sync"

	"github.com/spillway/spillway/pkg/record"
)

// blocked tracks the topics whose buffered records Kafka does not take for
// a condition that heals (credentials refused, the topic missing, Kafka
// unavailable or slow): their records stay buffered, so an operator must
// see the condition and its reason. It keeps one reason per topic, sets
// the gauge spillway_drain_topic_blocked and logs each change once, not
// each record.
type blocked struct {
	consumer string
	m        *Metrics
	logger   *slog.Logger

	mu     sync.Mutex
	topics map[string]record.Reason // only the blocked ones
}

func newBlocked(consumer string, m *Metrics, logger *slog.Logger) *blocked {
	return &blocked{consumer: consumer, m: m, logger: logger, topics: map[string]record.Reason{}}
}

// update takes one batch's outcome: the records delivered and the reason
// Kafka did not take records now, per topic. A topic with a record held
// back is blocked with that reason, even if others went through (a
// missing partition blocks some of a topic's records); a topic whose
// records were all delivered is no longer blocked. Topics absent from
// both keep their state: the batch says nothing about them.
func (b *blocked) update(delivered map[string]int, held map[string]error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(held) == 0 && len(b.topics) == 0 {
		return // the common case: nothing blocked, nothing held
	}
	for topic, err := range held {
		reason := record.ReasonOf(err)
		was, ok := b.topics[topic]
		if ok && was == reason {
			continue
		}
		if ok {
			b.gauge(topic, was).Dec()
		}
		b.topics[topic] = reason
		b.gauge(topic, reason).Inc()
		b.logger.Warn("Kafka does not take the topic's buffered records: they stay buffered and are tried again with backoff",
			"consumer", b.consumer, "topic", topic, "reason", reason, "was", string(was), "error", record.ClientMessage(err))
	}
	for topic := range delivered {
		if _, stillHeld := held[topic]; stillHeld {
			continue
		}
		was, ok := b.topics[topic]
		if !ok {
			continue
		}
		delete(b.topics, topic)
		b.gauge(topic, was).Dec()
		b.logger.Info("Kafka takes the topic's buffered records again", "consumer", b.consumer, "topic", topic, "was", string(was))
	}
}

// gauge is the series of topic and reason. Topics past the label bound
// share the "other" series, which then counts the blocked topics in it.
func (b *blocked) gauge(topic string, reason record.Reason) interface {
	Inc()
	Dec()
} {
	return b.m.blocked.WithLabelValues(b.consumer, b.m.topics.Value(topic), string(reason))
}
