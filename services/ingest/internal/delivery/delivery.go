// Package delivery is the one path every record takes after an API parsed
// it: it is counted, handed to Kafka, and its outcome counted, whichever
// API it came from.
package delivery

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spillway/spillway/pkg/monitor"
	"github.com/spillway/spillway/pkg/record"
)

// Producer writes records to Kafka and reports each one's outcome.
type Producer interface {
	Produce(ctx context.Context, recs []record.Record) []record.Result
}

// Delivery sends records on their way and measures what becomes of them.
type Delivery struct {
	producer Producer
	topics   *monitor.BoundedLabels
	m        metrics
}

type metrics struct {
	received      *prometheus.CounterVec
	receivedBytes *prometheus.CounterVec
	delivered     *prometheus.CounterVec
	failed        *prometheus.CounterVec
	inFlight      prometheus.Gauge
	produceTime   prometheus.Histogram
}

// LatencyBuckets are the histogram buckets, in seconds, for request and
// produce latency: from half a millisecond to half a minute.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New returns a Delivery that produces with p and registers its metrics
// in reg. Topic labels are capped at maxTopics distinct values.
func New(p Producer, reg prometheus.Registerer, maxTopics int) *Delivery {
	f := promauto.With(reg)
	return &Delivery{
		producer: p,
		topics:   monitor.NewBoundedLabels(maxTopics),
		m: metrics{
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
			failed: f.NewCounterVec(prometheus.CounterOpts{
				Name: "spillway_records_failed_total",
				Help: "Records answered to the client as failed, per topic and reason.",
			}, []string{"topic", "reason"}),
			inFlight: f.NewGauge(prometheus.GaugeOpts{
				Name: "spillway_records_in_flight",
				Help: "Records received and not yet answered.",
			}),
			produceTime: f.NewHistogram(prometheus.HistogramOpts{
				Name:    "spillway_kafka_produce_duration_seconds",
				Help:    "Time from handing a request's records to the Kafka producer to Kafka's last answer for them.",
				Buckets: LatencyBuckets,
			}),
		},
	}
}

// Send delivers recs, received through api ("http" or "grpc"), and returns
// one result per record in order.
func (d *Delivery) Send(ctx context.Context, api string, recs []record.Record) []record.Result {
	for i := range recs {
		topic := d.topics.Value(recs[i].Topic)
		d.m.received.WithLabelValues(api, topic).Inc()
		d.m.receivedBytes.WithLabelValues(api, topic).Add(float64(recs[i].Size()))
	}
	d.m.inFlight.Add(float64(len(recs)))
	defer d.m.inFlight.Sub(float64(len(recs)))

	start := time.Now()
	results := d.producer.Produce(ctx, recs)
	d.m.produceTime.Observe(time.Since(start).Seconds())

	for i, r := range results {
		topic := d.topics.Value(recs[i].Topic)
		switch r.Outcome {
		case record.Delivered:
			d.m.delivered.WithLabelValues(topic).Inc()
		case record.Failed:
			d.m.failed.WithLabelValues(topic, string(record.ReasonOf(r.Err))).Inc()
		}
	}
	return results
}

// Reject counts records that failed before they could be sent (a bad
// topic name, a record over the limit) so that every failure is counted
// in one place.
func (d *Delivery) Reject(api, topic string, n int, reason record.Reason) {
	t := d.topics.Value(topic)
	d.m.received.WithLabelValues(api, t).Add(float64(n))
	d.m.failed.WithLabelValues(t, string(reason)).Add(float64(n))
}
