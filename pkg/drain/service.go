package drain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/errgroup"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/deadletter"
	"github.com/spillway/spillway/pkg/monitor"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/telemetry"
)

// Role is what a drain service does: the forwarder or the resender.
type Role struct {
	Name string     // the service's name and its durable consumer's
	Kind spill.Kind // the records it drains
}

// The two drain services.
var (
	Forwarder = Role{Name: "forwarder", Kind: spill.WriteAhead}
	Resender  = Role{Name: "resender", Kind: spill.Spilled}
)

// ServiceOptions are what a drain service needs from its caller.
type ServiceOptions struct {
	Role     Role
	Config   *config.Config
	Logger   *slog.Logger
	Registry *prometheus.Registry // a new one when nil
	Tracing  *telemetry.Tracing   // none when nil
}

// Service is a running forwarder or resender.
type Service struct {
	opts      ServiceOptions
	monitor   *monitor.Server
	nc        *nats.Conn
	producers []*producer.Producer
	drainers  []*Drainer
	watchers  []func(context.Context) // run beside the drainers until ctx ends
}

// NewService binds the monitoring port, connects to JetStream and Kafka,
// and creates or updates the stream and the durable consumer. While no
// NATS server answers, or JetStream cannot (no meta leader, no quorum, a
// stream or consumer without a leader: a cluster starting), it tries again
// with short tries until ctx ends, and /readyz says what it waits for; a
// configuration error (spill.IsConfigError: credentials refused, a stream
// Spillway cannot take over) ends it at once.
func NewService(ctx context.Context, o ServiceOptions) (_ *Service, err error) {
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
		o.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	cfg := o.Config
	s := &Service{opts: o}
	defer func() { // s, not the named result, which a failed return sets to nil
		if err != nil {
			s.close()
			if s.monitor != nil {
				_ = s.monitor.Close()
			}
		}
	}()
	listen, rateLimit, period := cfg.Forward.MonitoringListen, cfg.Forward.RateLimit, time.Duration(0)
	if o.Role == Resender {
		listen, rateLimit, period = cfg.Resend.MonitoringListen, cfg.Producer.Resend.RateLimit, cfg.Producer.Resend.Period
	}
	if s.monitor, err = monitor.New(listen, o.Registry, monitor.WithPprof(cfg.Server.Monitoring.Pprof)); err != nil {
		return nil, fmt.Errorf("monitoring listen %s: %w", listen, err)
	}
	// Said at once, with the bound address (the listen may name port 0):
	// /healthz and /readyz answer while the rest starts.
	o.Logger.Info("monitoring listening", "addr", s.MonitorAddr())
	primary, err := producer.New(cfg.Kafka, o.Logger)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	s.producers = append(s.producers, primary)
	var nc *nats.Conn
	var js jetstream.JetStream
	if err := s.waitFor(ctx, "connect to NATS", func(context.Context) (err error) {
		nc, js, err = spill.Dial(cfg.Producer.WAL, nil, "spillway-"+o.Role.Name, o.Logger)
		return err
	}); err != nil {
		return nil, err
	}
	s.nc = nc
	if err := s.waitFor(ctx, "stream "+cfg.Producer.WAL.Stream, func(ctx context.Context) error {
		return spill.EnsureStream(ctx, js, cfg.Producer.WAL)
	}); err != nil {
		return nil, err
	}
	opts := Options{
		JS:        js,
		WAL:       cfg.Producer.WAL,
		Kind:      o.Role.Kind,
		Consumer:  o.Role.Name,
		Producer:  primary,
		RateLimit: rateLimit,
		Period:    period,
		Breaker:   cfg.Producer.CB,
		Ordered:   cfg.Producer.Order == config.OrderPartition,
		Holder:    holderName(),
		Metrics:   NewMetrics(o.Registry, cfg.Server.Monitoring.MaxTopicLabels),
		Logger:    o.Logger,
	}
	if o.Tracing != nil {
		opts.TracerProvider, opts.Propagators = o.Tracing.Provider, o.Tracing.Propagators
		if !o.Tracing.Exporting {
			// Nobody sees the spans: skip making two per record (a third of
			// the drain's CPU). Trace context still travels from the buffer
			// to Kafka unchanged.
			opts.TracerProvider = noop.NewTracerProvider()
		}
	}
	d, err := s.newDrainer(ctx, opts)
	if err != nil {
		return nil, err
	}
	s.drainers = append(s.drainers, d)
	if o.Role == Resender {
		// The dead letters held, for the operator who moves them back.
		var dl *deadletter.Store
		if err := s.waitFor(ctx, "stream "+cfg.Producer.WAL.Stream, func(ctx context.Context) (err error) {
			dl, err = deadletter.Open(ctx, js, cfg.Producer.WAL)
			return err
		}); err != nil {
			return nil, err
		}
		g := deadletter.NewGauge(o.Registry, cfg.Server.Monitoring.MaxTopicLabels)
		s.watchers = append(s.watchers, func(ctx context.Context) { g.Watch(ctx, dl, 2*time.Second, o.Logger) })
		// Each mirror's spilled copies go to the mirror, through a consumer
		// of their own, at the same rate limit.
		for _, m := range cfg.Mirrors {
			logger := o.Logger.With("mirror", m.Name)
			p, err := producer.New(m.Kafka, logger)
			if err != nil {
				return nil, fmt.Errorf("mirrors %s: kafka producer: %w", m.Name, err)
			}
			s.producers = append(s.producers, p)
			mo := opts
			mo.Kind, mo.Consumer, mo.Producer, mo.Logger = spill.Mirror(m.Name), "mirror-"+m.Name, p, logger
			mo.DeadLetter, mo.ReasonPrefix = spill.MirrorDeadLetter(m.Name), "mirror "+m.Name+": "
			d, err := s.newDrainer(ctx, mo)
			if err != nil {
				return nil, err
			}
			s.drainers = append(s.drainers, d)
		}
	}
	s.monitor.AddReadinessCheck(func() error {
		if !nc.IsConnected() {
			return errors.New("not connected to NATS")
		}
		return nil
	})
	return s, nil
}

// waitFor runs one step of the buffer's set-up until JetStream answers
// (spill.Retry: short tries, a growing pause between them), with /readyz
// naming the step's last error meanwhile. A configuration error, or ctx's
// end, stops it.
func (s *Service) waitFor(ctx context.Context, step string, try func(context.Context) error) error {
	r := spill.Retry{Step: step, Logger: s.opts.Logger, Report: func(err error) {
		if err != nil {
			err = fmt.Errorf("buffer: %w", err)
		}
		s.monitor.SetStarting(err)
	}}
	return r.Run(ctx, try)
}

// newDrainer makes a Drainer, waiting for its stream and durable consumer
// (waitFor).
func (s *Service) newDrainer(ctx context.Context, o Options) (d *Drainer, err error) {
	err = s.waitFor(ctx, "consumer "+o.Consumer, func(ctx context.Context) error {
		d, err = New(ctx, o)
		return err
	})
	return d, err
}

// holderName names this replica in a drain's lease: its host and process.
func holderName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// MonitorAddr is the monitoring port's bound address.
func (s *Service) MonitorAddr() string { return s.monitor.Addr() }

// Run drains until ctx ends, then stops fetching, finishes the batch in
// flight, flushes the producer and drains the NATS connection.
func (s *Service) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(s.monitor.Serve)
	g.Go(func() error {
		s.monitor.SetReady(true)
		s.opts.Logger.Info(s.opts.Role.Name+" started", "monitoring", s.MonitorAddr(), "brokers", s.opts.Config.Kafka.Brokers)
		var dg errgroup.Group
		for _, d := range s.drainers {
			dg.Go(func() error { return d.Run(gctx) })
		}
		for _, w := range s.watchers {
			dg.Go(func() error { w(gctx); return nil })
		}
		err := dg.Wait()
		s.monitor.SetReady(false)
		s.close()
		sctx, cancel := context.WithTimeout(context.Background(), s.opts.Config.Server.ShutdownTimeout)
		defer cancel()
		return errors.Join(err, s.monitor.Shutdown(sctx))
	})
	return g.Wait()
}

func (s *Service) close() {
	for _, p := range s.producers {
		if err := p.Close(); err != nil {
			s.opts.Logger.Warn("closing the kafka producer", "error", err)
		}
	}
	s.producers = nil
	if s.nc != nil {
		if err := s.nc.Drain(); err != nil {
			s.opts.Logger.Warn("draining the NATS connection", "error", err)
		}
		// Drain returns at once; the last acknowledgements are sent until
		// the connection closes.
		deadline := time.Now().Add(5 * time.Second)
		for !s.nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		s.nc = nil
	}
}
