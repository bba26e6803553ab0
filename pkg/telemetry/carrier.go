package telemetry

import (
	"strings"

	"github.com/spillway/spillway/pkg/record"
)

// RecordCarrier carries trace context in a record's Kafka headers
// (traceparent, tracestate, baggage), so that a consumer downstream of
// Kafka can continue the trace. Set replaces a header of the same name.
type RecordCarrier struct{ Record *record.Record }

// Get returns the first header named key (case-insensitive).
func (c RecordCarrier) Get(key string) string {
	for _, h := range c.Record.Headers {
		if strings.EqualFold(h.Key, key) {
			return string(h.Value)
		}
	}
	return ""
}

// Set replaces the headers named key with one of value.
func (c RecordCarrier) Set(key, value string) {
	hs := c.Record.Headers[:0:0]
	for _, h := range c.Record.Headers {
		if !strings.EqualFold(h.Key, key) {
			hs = append(hs, h)
		}
	}
	c.Record.Headers = append(hs, record.Header{Key: key, Value: []byte(value)})
}

// Keys lists the header names.
func (c RecordCarrier) Keys() []string {
	keys := make([]string, len(c.Record.Headers))
	for i, h := range c.Record.Headers {
		keys[i] = h.Key
	}
	return keys
}
