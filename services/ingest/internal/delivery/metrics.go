package delivery

import (
	"iter"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// LatencyBuckets are the histogram buckets, in seconds, for request and
// produce latency: from half a millisecond to half a minute.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

type metrics struct {
	received       *prometheus.CounterVec
	receivedBytes  *prometheus.CounterVec
	delivered      *prometheus.CounterVec
	buffered       *prometheus.CounterVec
	duplicates     *prometheus.CounterVec
	failed         *prometheus.CounterVec
	inFlight       prometheus.Gauge
	inFlightBytes  prometheus.Gauge
	produceTime    prometheus.Histogram
	breakerState   prometheus.Gauge
	breakerChanges *prometheus.CounterVec
	clientRecords  *prometheus.CounterVec
	clientBytes    *prometheus.CounterVec
	clientRequests *prometheus.CounterVec
	denied         *prometheus.CounterVec
	rejected       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	f := promauto.With(reg)
	return metrics{
		received: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_received_total",
			Help: "Records received from clients, per API and topic.",
		}, []string{"api", "topic"}),
		receivedBytes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_received_bytes_total",
			Help: "Bytes of records (key, value and headers) received from clients, per API and topic.",
		}, []string{"api", "topic"}),
		delivered: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_delivered_total",
			Help: "Records Kafka acknowledged, per topic.",
		}, []string{"topic"}),
		buffered: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_buffered_total",
			Help: "Records JetStream acknowledged instead of Kafka, per topic and reason (write_ahead, breaker_open, unavailable, timeout).",
		}, []string{"topic", "reason"}),
		duplicates: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_possible_duplicates_total",
			Help: "Records buffered after Kafka was tried and did not answer in time, per topic: Kafka may still take them, and the resender send them again (same spillway-id).",
		}, []string{"topic"}),
		failed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_failed_total",
			Help: "Records answered to the client as failed, per topic and reason.",
		}, []string{"topic", "reason"}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_records_in_flight",
			Help: "Records received and not yet answered.",
		}),
		inFlightBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_records_in_flight_bytes",
			Help: "What the records received and not yet answered cost in memory, as server.max_in_flight_bytes counts it.",
		}),
		produceTime: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "spillway_kafka_produce_duration_seconds",
			Help:    "Time from handing a request's records to the Kafka producer to Kafka's last answer for them.",
			Buckets: LatencyBuckets,
		}),
		breakerState: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_breaker_state",
			Help: "The Kafka circuit breaker: 0 closed, 1 half-open, 2 open.",
		}),
		breakerChanges: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_breaker_transitions_total",
			Help: "Changes of the Kafka circuit breaker's state, per state entered.",
		}, []string{"to"}),
		clientRecords: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_client_records_total",
			Help: "Records per client principal, topic and outcome (delivered, buffered, failed).",
		}, []string{"principal", "topic", "outcome"}),
		clientBytes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_client_bytes_total",
			Help: "Bytes of records (key, value and headers) per client principal and topic.",
		}, []string{"principal", "topic"}),
		clientRequests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_client_requests_total",
			Help: "Requests (HTTP requests, gRPC calls and stream messages) per client principal, library and library version.",
		}, []string{"principal", "library", "version"}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_validation_failures_total",
			Help: "Records refused (422) because they break a validation rule, per topic (as the client named it) and rule.",
		}, []string{"topic", "rule"}),
		denied: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_denied_total",
			Help: "Requests refused for bad or missing credentials (unauthenticated) and records refused for their topic (forbidden), per principal.",
		}, []string{"principal", "reason"}),
	}
}

// tallyKey is a set of up to two label values.
type tallyKey [2]string

// tally adds up values per label set, so that a batch costs one metric
// update per distinct label set rather than one per record. A batch has
// few distinct sets: a linear search beats a map.
type tally struct {
	keys []tallyKey
	vals []float64
}

func (t *tally) add(k tallyKey, v float64) {
	for i := range t.keys {
		if t.keys[i] == k {
			t.vals[i] += v
			return
		}
	}
	t.keys = append(t.keys, k)
	t.vals = append(t.vals, v)
}

// all yields each label set with its sum.
func (t *tally) all() iter.Seq2[tallyKey, float64] {
	return func(yield func(tallyKey, float64) bool) {
		for i, k := range t.keys {
			if !yield(k, t.vals[i]) {
				return
			}
		}
	}
}
