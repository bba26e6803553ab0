package drain

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spillway/spillway/pkg/monitor"
)

// Metrics are a drain service's metrics.
type Metrics struct {
	topics        *monitor.BoundedLabels
	drained       *prometheus.CounterVec
	retried       *prometheus.CounterVec
	deadLettered  *prometheus.CounterVec
	breakerState  *prometheus.GaugeVec
	blocked       *prometheus.GaugeVec
	streamMsgs    prometheus.Gauge
	streamBytes   prometheus.Gauge
	pending       *prometheus.GaugeVec
	ackPending    *prometheus.GaugeVec
	oldestSeconds *prometheus.GaugeVec
}

// NewMetrics registers the drain metrics in reg. Topic labels are capped
// at maxTopics distinct values.
func NewMetrics(reg prometheus.Registerer, maxTopics int) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		topics: monitor.NewBoundedLabels(maxTopics),
		drained: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_drained_total",
			Help: "Buffered records Kafka acknowledged, per consumer (forwarder or resender) and topic.",
		}, []string{"consumer", "topic"}),
		retried: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_retried_total",
			Help: "Buffered records Kafka could not take yet and that will be sent again, per consumer and reason.",
		}, []string{"consumer", "reason"}),
		deadLettered: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_records_dead_lettered_total",
			Help: "Buffered records Kafka will never accept, moved to the dead-letter subject, per consumer and reason.",
		}, []string{"consumer", "reason"}),
		breakerState: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_drain_breaker_state",
			Help: "The drain's Kafka circuit breaker: 0 closed, 1 half-open, 2 open.",
		}, []string{"consumer"}),
		blocked: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_drain_topic_blocked",
			Help: "1 while Kafka does not take a topic's buffered records for a condition that heals (reason not_authorized, unknown_topic, unavailable or timeout): they stay buffered and are retried; 0 once Kafka takes them again. The topic label's overflow bucket \"other\" counts its blocked topics.",
		}, []string{"consumer", "topic", "reason"}),
		streamMsgs: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_stream_messages",
			Help: "Messages in the buffer's stream (written ahead, spilled and dead letters).",
		}),
		streamBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_stream_bytes",
			Help: "Bytes in the buffer's stream.",
		}),
		pending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_consumer_pending_messages",
			Help: "Messages the consumer has not been given yet.",
		}, []string{"consumer"}),
		ackPending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_consumer_ack_pending_messages",
			Help: "Messages given to the consumer and not acknowledged yet.",
		}, []string{"consumer"}),
		oldestSeconds: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_buffer_oldest_record_age_seconds",
			Help: "Age of the oldest record the consumer has not delivered (drain lag); 0 when none waits.",
		}, []string{"consumer"}),
	}
}

// observe refreshes the stream and consumer gauges every two seconds.
func (d *Drainer) observe(ctx context.Context) {
	m := d.opts.Metrics
	ticker := time.NewTicker(2 * time.Second)
	defer ticker.Stop()
	for {
		d.refresh(ctx, m)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (d *Drainer) refresh(ctx context.Context, m *Metrics) {
	if si, err := d.stream.Info(ctx); err == nil {
		m.streamMsgs.Set(float64(si.State.Msgs))
		m.streamBytes.Set(float64(si.State.Bytes))
	}
	ci, err := d.currentConsumer().Info(ctx)
	if err != nil {
		return
	}
	name := d.opts.Consumer
	m.pending.WithLabelValues(name).Set(float64(ci.NumPending))
	m.ackPending.WithLabelValues(name).Set(float64(ci.NumAckPending))
	age := 0.0
	if ci.NumPending+uint64(ci.NumAckPending) > 0 {
		oldest, err := d.stream.GetMsg(ctx, ci.AckFloor.Stream+1, jetstream.WithGetMsgSubject(d.subjects.All(d.opts.Kind)))
		if err == nil {
			age = time.Since(oldest.Time).Seconds()
		}
	}
	m.oldestSeconds.WithLabelValues(name).Set(age)
}
