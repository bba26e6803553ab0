package deadletter

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spillway/spillway/pkg/monitor"
)

// Gauge is spillway_dead_letters: the dead letters the buffer holds, per
// topic and mirror, refreshed from the stream's per-subject counts.
type Gauge struct {
	held   *prometheus.GaugeVec
	topics *monitor.BoundedLabels
	mu     sync.Mutex
	seen   map[[2]string]bool // series set once, which go to 0 rather than vanish
}

// NewGauge registers spillway_dead_letters in reg. Topic labels are capped
// at maxTopics distinct values, the rest counted as "other".
func NewGauge(reg prometheus.Registerer, maxTopics int) *Gauge {
	return &Gauge{
		held: promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{
			Name: "spillway_dead_letters",
			Help: "Dead letters the buffer holds (records Kafka will never accept as they are), per topic and mirror (\"\" for the primary cluster); spillway-resender dead-letters moves them back.",
		}, []string{"topic", "mirror"}),
		topics: monitor.NewBoundedLabels(maxTopics),
		seen:   map[[2]string]bool{},
	}
}

// Refresh sets the gauge from the stream's counts.
func (g *Gauge) Refresh(ctx context.Context, s *Store) error {
	held, err := s.Held(ctx)
	if err != nil {
		return err
	}
	now := map[[2]string]float64{}
	for subject, n := range held {
		topic, mirror := s.parseSubject(subject)
		now[[2]string{g.topics.Value(topic), mirror}] += float64(n)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for k := range g.seen {
		if _, ok := now[k]; !ok {
			g.held.WithLabelValues(k[0], k[1]).Set(0)
		}
	}
	for k, n := range now {
		g.seen[k] = true
		g.held.WithLabelValues(k[0], k[1]).Set(n)
	}
	return nil
}

// Watch refreshes the gauge every period until ctx ends. A failed refresh
// keeps the last values and is logged once until one succeeds.
func (g *Gauge) Watch(ctx context.Context, s *Store, period time.Duration, logger *slog.Logger) {
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	failing := false
	for {
		rctx, cancel := context.WithTimeout(ctx, period)
		err := g.Refresh(rctx, s)
		cancel()
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			logger.Warn("cannot count the dead letters", "error", err)
			failing = true
		case err == nil:
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
