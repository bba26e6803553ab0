package config

import "slices"

// The JetStream buffer's vocabulary: the buffer is the store; a record is
// written ahead to it (mode always, or always_topics) before Kafka sees
// it, or spilled to it when Kafka cannot take it (mode fallback); a
// mirror's failures spill to it too. These methods are the one place that
// decides which.

// NeedsBuffer says whether the ingest needs the JetStream buffer, and so
// whether the forwarder and resender have anything to drain: some topic is
// written ahead or spills, or a mirror's failures spill.
func (c *Config) NeedsBuffer() bool {
	w := c.Producer.WAL
	return w.Mode != ModeDisable || len(w.AlwaysTopics) > 0 || len(c.Mirrors) > 0
}

// WritesAhead says whether topic's records go to the buffer before Kafka.
func (w *WAL) WritesAhead(topic string) bool {
	return !slices.Contains(w.DisableTopics, topic) && (w.Mode == ModeAlways || slices.Contains(w.AlwaysTopics, topic))
}

// Spills says whether topic's records go to the buffer when Kafka cannot
// take them.
func (w *WAL) Spills(topic string) bool {
	return w.Mode != ModeDisable && !slices.Contains(w.DisableTopics, topic)
}
