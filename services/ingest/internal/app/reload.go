package app

import (
	"context"
	"reflect"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/services/ingest/internal/filewatch"
	"github.com/spillway/spillway/services/ingest/internal/policy"
)

// reloadMetrics count configuration reloads.
type reloadMetrics struct {
	reloads    *prometheus.CounterVec
	successful prometheus.Gauge
	applied    prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer) *reloadMetrics {
	f := promauto.With(reg)
	m := &reloadMetrics{
		reloads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_config_reloads_total",
			Help: "Configuration reloads (SIGHUP or a changed file), per result: applied or rejected.",
		}, []string{"result"}),
		successful: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_config_last_reload_successful",
			Help: "1 when the last configuration reload was applied (or none was tried), 0 when it was rejected and the configuration before it stays in force.",
		}),
		applied: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was loaded, in Unix seconds.",
		}),
	}
	m.reloads.WithLabelValues("applied")
	m.reloads.WithLabelValues("rejected")
	m.successful.Set(1)
	m.applied.SetToCurrentTime()
	return m
}

// Reload reads the configuration file and the environment again and puts
// the new topic ACLs, rate limits, validation rules and topic mapping in
// force. Requests already running finish under the rules they started
// with. A configuration that does not load is rejected with its error,
// logged and returned, and the rules before it stay in force. Changes to
// other keys are logged: they take effect at the next start.
func (a *App) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	log := a.opts.Logger
	reject := func(err error) error {
		a.reloadM.reloads.WithLabelValues("rejected").Inc()
		a.reloadM.successful.Set(0)
		log.Error("configuration reload rejected; the configuration before it stays in force", "file", a.opts.ConfigPath, "error", err)
		return err
	}
	cfg, err := config.Load(a.opts.ConfigPath, a.opts.Environ)
	if err != nil {
		return reject(err)
	}
	pol, err := policy.New(cfg, a.policy.Load())
	if err != nil {
		return reject(err)
	}
	a.policy.Store(pol)
	a.reloadM.reloads.WithLabelValues("applied").Inc()
	a.reloadM.successful.Set(1)
	a.reloadM.applied.SetToCurrentTime()
	log.Info("configuration reloaded", "file", a.opts.ConfigPath, "validation_rules", len(cfg.Validation), "topic_mappings", len(cfg.TopicMapping))
	if !reloadableOnly(a.loaded, cfg) {
		log.Warn("the reloaded configuration changes keys other than security.allow_topics, security.deny_topics, security.acl, security.rate_limit, validation and topic_mapping; those take effect at the next start")
	}
	a.loaded = cfg
	return nil
}

// reloadableOnly says whether next differs from prev only in what Reload
// puts in force.
func reloadableOnly(prev, next *config.Config) bool {
	strip := func(c config.Config) config.Config {
		c.Security.AllowTopics, c.Security.DenyTopics, c.Security.ACL, c.Security.RateLimit = nil, nil, nil, config.RateLimit{}
		c.Validation, c.TopicMapping, c.Warnings = nil, nil, nil
		if c.Kafka.UsingDevBroker {
			c.Kafka.Brokers = nil // main puts the dev broker's address in
		}
		return c
	}
	return reflect.DeepEqual(strip(*prev), strip(*next))
}

// watchConfig reloads on every value of reloads (SIGHUP, from main) and
// when the configuration file changes (its size or modification time,
// looked at every ConfigCheckEvery), until ctx ends.
func (a *App) watchConfig(ctx context.Context) {
	var ticks <-chan time.Time
	var changes *filewatch.Poller
	if a.opts.ConfigPath != "" && a.opts.ConfigCheckEvery > 0 {
		t := time.NewTicker(a.opts.ConfigCheckEvery)
		defer t.Stop()
		ticks = t.C
		changes = filewatch.NewPoller(0, a.opts.ConfigPath) // the ticker paces it
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.opts.Reloads:
			a.opts.Logger.Info("reloading the configuration (SIGHUP)")
			if changes != nil {
				changes.Changed() // this reload reads the file as it is now
			}
			_ = a.Reload()
		case <-ticks:
			if changes.Changed() {
				a.opts.Logger.Info("the configuration file changed; reloading it", "file", a.opts.ConfigPath)
				_ = a.Reload()
			}
		}
	}
}
