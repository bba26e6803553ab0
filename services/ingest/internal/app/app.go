// Package app wires the ingest service together: the Kafka producer, the
// JetStream buffer, the delivery path, the HTTP, gRPC and Kafka-protocol
// listeners and the monitoring port. Tests boot the whole service
// in-process through it.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/monitor"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
	"github.com/spillway/spillway/pkg/telemetry"
	"github.com/spillway/spillway/services/ingest/internal/backlog"
	"github.com/spillway/spillway/services/ingest/internal/certs"
	"github.com/spillway/spillway/services/ingest/internal/delivery"
	"github.com/spillway/spillway/services/ingest/internal/grpcapi"
	"github.com/spillway/spillway/services/ingest/internal/httpapi"
	"github.com/spillway/spillway/services/ingest/internal/identity"
	"github.com/spillway/spillway/services/ingest/internal/kafkaapi"
	"github.com/spillway/spillway/services/ingest/internal/mirror"
	"github.com/spillway/spillway/services/ingest/internal/policy"
)

// producerCloseTimeout bounds the Kafka producer's flush at shutdown.
const producerCloseTimeout = 5 * time.Second

// Options are what the ingest needs from its caller.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// Registry receives the service's metrics; a new one when nil.
	Registry *prometheus.Registry
	// Tracing traces requests and records; none when nil.
	Tracing *telemetry.Tracing
	// ConfigPath and Environ are where Config came from; Reload reads them
	// again.
	ConfigPath string
	Environ    []string
	// Reloads asks for a reload (main sends one on SIGHUP); nil: none.
	Reloads <-chan struct{}
	// ConfigCheckEvery is how often the configuration file is looked at
	// for changes; 0: only on Reloads.
	ConfigCheckEvery time.Duration
}

// App is a running ingest service.
type App struct {
	opts     Options
	producer *producer.Producer
	monitor  *monitor.Server
	httpSrv  *http.Server
	httpLn   net.Listener
	grpcSrv  *grpcapi.Server
	grpcLn   net.Listener
	kafkaSrv *kafkaapi.Server // nil: server.kafka.listen is empty
	kafkaLn  net.Listener
	draining chan struct{}
	natsAddr string
	backlog  *backlog.Tracker // producer.order partition, with a buffer
	// bufferFailed receives the configuration error that ends the wait
	// for the buffer; nil when the buffer was ready in New.
	bufferFailed chan error
	// healthMu makes each syncHealth read readiness and set the gRPC
	// health as one step, so that the last to run leaves it right; it
	// guards grpcSrv's assignment, as the buffer's background tries may
	// call syncHealth while New runs.
	healthMu sync.Mutex
	// policy is what a reload replaces: topic ACLs, rate limits,
	// validation and topic mapping.
	policy   atomic.Pointer[policy.Policy]
	reloadMu sync.Mutex
	loaded   *config.Config // the configuration last loaded
	reloadM  *reloadMetrics
	fresh    freshConns
	// stopWaiting ends near the shutdown deadline: requests still waiting
	// for Kafka stop waiting and their records are spilled.
	stopWaiting   context.Context
	cancelWaiting context.CancelFunc
	cleanups      []func()
}

// New builds the service and binds its listeners, so that Addr answers at
// once; Run serves.
func New(o Options) (_ *App, err error) {
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
		o.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	a := &App{opts: o, draining: make(chan struct{})}
	a.stopWaiting, a.cancelWaiting = context.WithCancel(context.Background())
	defer func() { // a, not the named result, which a failed return sets to nil
		if err != nil {
			a.close()
			if a.monitor != nil {
				_ = a.monitor.Close()
			}
		}
	}()
	cfg := o.Config

	a.producer, err = producer.New(cfg.Kafka, o.Logger)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	a.cleanups = append(a.cleanups, func() {
		// Every request has been answered by now: records Kafka did not
		// acknowledge in time were spilled or failed. A hung Kafka must not
		// hold the exit, so the flush gets a few seconds at most.
		closed := make(chan error, 1)
		go func() { closed <- a.producer.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				o.Logger.Error("closing the kafka producer", "error", err)
			}
		case <-time.After(producerCloseTimeout):
			o.Logger.Warn("the kafka producer did not flush in time; leaving it", "timeout", producerCloseTimeout)
		}
	})

	a.monitor, err = monitor.New(cfg.Server.Monitoring.Listen, o.Registry, monitor.WithPprof(cfg.Server.Monitoring.Pprof))
	if err != nil {
		return nil, fmt.Errorf("server.monitoring.listen: %w", err)
	}
	// Said at once, with the bound address (the listen may name port 0):
	// /healthz and /readyz answer while the rest starts.
	o.Logger.Info("monitoring listening", "addr", a.monitor.Addr())

	authCtx, stopAuth := context.WithCancel(context.Background())
	a.cleanups = append(a.cleanups, stopAuth) // ends the JWKS refresh
	auth, err := identity.NewAuthenticator(authCtx, cfg.Security, cfg.Server.TLS, o.Logger)
	if err != nil {
		return nil, err
	}
	pol, err := policy.New(cfg, nil)
	if err != nil {
		return nil, err
	}
	a.policy.Store(pol)
	a.loaded = cfg
	a.reloadM = newReloadMetrics(o.Registry)
	var tlsFiles *certs.Reloader
	if cfg.Server.TLS.Enabled() {
		if tlsFiles, err = certs.New(cfg.Server.TLS, o.Logger); err != nil {
			return nil, err
		}
	}
	buffer, err := a.startBuffer()
	if err != nil {
		return nil, err
	}
	mirrors, err := a.startMirrors(buffer)
	if err != nil {
		return nil, err
	}
	d := delivery.New(delivery.Options{
		Producer:         a.producer,
		Buffer:           buffer,
		WAL:              cfg.Producer.WAL,
		Breaker:          cfg.Producer.CB,
		MaxRecordBytes:   cfg.Kafka.MaxMessageBytes,
		MaxInFlight:      cfg.Server.MaxInFlightRecords,
		MaxInFlightBytes: cfg.Server.MaxInFlightBytes,
		Registry:         o.Registry,
		MaxTopics:        cfg.Server.Monitoring.MaxTopicLabels,
		Policy:           &a.policy,
		Mirrors:          mirrors,
		MaxPrincipals:    cfg.Server.Monitoring.MaxPrincipalLabels,
		MaxLibraries:     cfg.Server.Monitoring.MaxLibraryLabels,
		Logger:           o.Logger,
		StopWaiting:      a.stopWaiting,
		TracerProvider:   exportedTracerProvider(o.Tracing),
		Propagators:      propagators(o.Tracing),
		Backlog:          a.backlog,
		Placer:           a.producer,
	})
	handler := httpapi.New(httpapi.Options{
		Sender:            d,
		Topics:            d.Writable(a.producer),
		MaxBodyBytes:      cfg.Server.HTTP.MaxBodyBytes,
		MaxRequestRecords: cfg.Server.MaxRequestRecords,
		MaxStreams:        cfg.Server.HTTP.MaxStreams,
		StreamIdleTimeout: cfg.Server.HTTP.StreamIdleTimeout,
		Draining:          a.draining,
		Auth:              auth,
		Registry:          o.Registry,
		Logger:            o.Logger,
		LatencyBuckets:    delivery.LatencyBuckets,
		TracerProvider:    exportedTracerProvider(o.Tracing),
		Propagators:       propagators(o.Tracing),
	})
	grpcSrv := grpcapi.New(grpcapi.Options{
		Sender:            d,
		Topics:            d.Writable(a.producer),
		Config:            cfg.Server.GRPC,
		MaxRequestRecords: cfg.Server.MaxRequestRecords,
		MaxRequestHeaders: cfg.Server.MaxRequestHeaders,
		Registry:          o.Registry,
		Logger:            o.Logger,
		LatencyBuckets:    delivery.LatencyBuckets,
		Draining:          a.draining,
		Auth:              auth,
		TLS:               grpcTLS(tlsFiles),
		TracerProvider:    tracerProvider(o.Tracing),
		Propagators:       propagators(o.Tracing),
		NotReady:          a.monitor.Ready,
	})
	a.healthMu.Lock()
	a.grpcSrv = grpcSrv
	a.healthMu.Unlock()
	a.grpcLn, err = net.Listen("tcp", cfg.Server.GRPC.Listen)
	if err != nil {
		return nil, fmt.Errorf("server.grpc.listen: %w", err)
	}
	a.cleanups = append(a.cleanups, func() { _ = a.grpcLn.Close() })

	if cfg.Server.Kafka.Listen != "" {
		a.kafkaLn, err = net.Listen("tcp", cfg.Server.Kafka.Listen)
		if err != nil {
			return nil, fmt.Errorf("server.kafka.listen: %w", err)
		}
		a.cleanups = append(a.cleanups, func() { _ = a.kafkaLn.Close() })
		if tlsFiles != nil { // TLS and client certificates as on the HTTP and gRPC listeners
			a.kafkaLn = tls.NewListener(a.kafkaLn, tlsFiles.ServerConfig())
		}
		a.kafkaSrv = kafkaapi.New(kafkaapi.Options{
			Sender:          d,
			Partitions:      kafkaPartitions{a.producer},
			Writable:        func(l kafkaapi.TopicLister) kafkaapi.TopicLister { return d.Writable(l) },
			Map:             func(topic string) string { return a.policy.Load().Map(topic) },
			Auth:            auth,
			MaxRequestBytes: cfg.Server.Kafka.MaxRequestBytes,
			// Kafka clients pack requests by bytes (kgo: 1 MiB a
			// partition), as brokers bound them: a request holds up to
			// what the ingest may hold in flight, not an HTTP body's
			// server.max_request_records.
			MaxRequestRecords: cfg.Server.MaxInFlightRecords,
			Advertised:        cfg.Server.Kafka.Advertised,
			Logger:            o.Logger.With("api", kafkaapi.API),

			MaxConnections:           cfg.Server.Kafka.MaxConnections,
			MaxConnectionsPerAddress: cfg.Server.Kafka.MaxConnectionsPerAddress,
			IdleTimeout:              cfg.Server.Kafka.ConnectionsMaxIdle,
			SignInTimeout:            cfg.Server.Kafka.SignInTimeout,
			IdempotentProducers:      cfg.Server.Kafka.IdempotentProducers,
			Registry:                 o.Registry,
		})
	}

	a.httpLn, err = net.Listen("tcp", cfg.Server.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("server.http.listen: %w", err)
	}
	if tlsFiles != nil {
		a.httpLn = tls.NewListener(a.httpLn, tlsFiles.ServerConfig("h2", "http/1.1"))
	}
	a.httpSrv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.Server.HTTP.ReadHeaderTimeout,
		ReadTimeout:       cfg.Server.HTTP.ReadTimeout,
		WriteTimeout:      cfg.Server.HTTP.WriteTimeout,
		IdleTimeout:       cfg.Server.HTTP.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
		ConnState:         a.fresh.track,
	}
	return a, nil
}

// freshConns are the HTTP connections accepted that have not sent a
// request yet. http.Server.Shutdown waits 5 seconds before it counts
// those as idle; clients open them ahead of need (Go's transport does), so
// shutdown closes them at once: they hold no request.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (f *freshConns) track(c net.Conn, state http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		f.conns = map[net.Conn]struct{}{}
	}
	if state == http.StateNew {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
}

func (f *freshConns) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		_ = c.Close()
	}
}

// grpcTLS is the gRPC listener's TLS configuration; nil: plaintext.
func grpcTLS(files *certs.Reloader) *tls.Config {
	if files == nil {
		return nil
	}
	return files.ServerConfig("h2")
}

// startBuffer connects to the JetStream buffer, starting the embedded
// server unless an external one is configured. It returns nil (no buffer)
// when the configuration needs none.
//
// It tries the connection and then the stream's create-or-update once
// (spill.TryTimeout). When no NATS server answers, or JetStream cannot
// answer yet (no meta leader, no quorum: a cluster starting), the ingest
// starts anyway: the buffer is a spill.PendingBuffer that answers every
// record unavailable, /readyz and the gRPC health say why, and the step
// is tried again in the background until it succeeds. Records that do not
// need the buffer (mode fallback, Kafka healthy) go to Kafka meanwhile. A
// configuration error (spill.IsConfigError: a stream Spillway cannot take
// over, credentials refused) stops the ingest: at once, or from Run when
// a later try meets it.
func (a *App) startBuffer() (delivery.Buffer, error) {
	if !a.opts.Config.NeedsBuffer() {
		return nil, nil
	}
	wal := a.opts.Config.Producer.WAL
	log := a.opts.Logger
	var embedded spill.InProcess
	if len(wal.NATS.URLs) == 0 {
		srv, err := embeddednats.Start(wal, log)
		if err != nil {
			return nil, err
		}
		embedded = srv
		a.natsAddr = srv.Addr().String()
		a.cleanups = append(a.cleanups, func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		})
	}
	// nc and js are set once the connection is made: here, or by the
	// background tries, which the cleanup waits for before it drains nc.
	var nc *nats.Conn
	var js jetstream.JetStream
	drain := func() {
		if nc == nil {
			return
		}
		if err := nc.Drain(); err != nil {
			log.Warn("draining the NATS connection", "error", err)
		}
	}
	// producer.order partition: the backlog tracker holds a lane behind
	// the records it spilled, and learns of the others' once the buffer is
	// reached (startBacklog). Its cleanup runs before nc is drained.
	var backlogs sync.WaitGroup
	backlogCtx, stopBacklog := context.WithCancel(context.Background())
	startBacklog := func() {
		if a.backlog != nil {
			backlogs.Go(func() { a.backlog.Run(backlogCtx, js) })
		}
	}
	if a.opts.Config.Producer.Order == config.OrderPartition {
		a.backlog = backlog.New(wal, a.opts.Registry, log)
		a.backlog.OnPartitionCount(a.producer.LearnPartitionCount)
		a.producer.OnPartitionCount(a.backlog.PartitionCount)
	}
	pending := &spill.PendingBuffer{}
	connect := &spill.Retry{Step: "connect to NATS", Logger: log, Report: pending.SetReason}
	dial := func(context.Context) (err error) {
		nc, js, err = spill.Dial(wal, embedded, "spillway-ingest", log)
		return err
	}
	stream := &spill.Retry{Step: "stream " + wal.Stream, Logger: log, Report: pending.SetReason}
	ensure := func(ctx context.Context) error { return spill.EnsureStream(ctx, js, wal) }
	err := connect.Once(context.Background(), dial)
	if err == nil {
		if err = stream.Once(context.Background(), ensure); err == nil {
			a.cleanups = append(a.cleanups, drain, func() { stopBacklog(); backlogs.Wait() })
			startBacklog()
			return spill.NewBuffer(js, wal), nil
		}
	}
	if spill.IsConfigError(err) {
		stopBacklog()
		drain()
		return nil, err
	}
	a.monitor.AddReadinessCheck(pending.Ready)
	a.bufferFailed = make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := error(nil)
		if nc == nil {
			err = connect.Run(ctx, dial)
		}
		if err == nil {
			err = stream.Run(ctx, ensure)
		}
		if err != nil {
			if ctx.Err() == nil { // a configuration error
				a.bufferFailed <- err
			}
			return
		}
		startBacklog()
		pending.Set(spill.NewBuffer(js, wal))
		a.syncHealth()
	}()
	a.cleanups = append(a.cleanups, func() {
		cancel()
		<-done
		stopBacklog()
		backlogs.Wait()
		drain()
	})
	return pending, nil
}

// startMirrors starts a producer and a mirror for each of mirrors; at
// shutdown, after the servers stopped, each mirror sends or spills what it
// holds.
func (a *App) startMirrors(buffer delivery.Buffer) ([]delivery.Mirror, error) {
	cfg := a.opts.Config
	if len(cfg.Mirrors) == 0 {
		return nil, nil
	}
	metrics := mirror.NewMetrics(a.opts.Registry)
	var spillTo mirror.Buffer
	if b, ok := buffer.(mirror.Buffer); ok {
		spillTo = b
	}
	var out []delivery.Mirror
	var started []*mirror.Mirror
	// At shutdown, after the servers stopped, all mirrors spill what they
	// hold at once, within one deadline.
	a.cleanups = append(a.cleanups, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*producerCloseTimeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, m := range started {
			wg.Go(func() {
				if err := m.Close(ctx); err != nil {
					a.opts.Logger.Warn("closing a mirror", "mirror", m.Name(), "error", err)
				}
			})
		}
		wg.Wait()
	})
	for _, mc := range cfg.Mirrors {
		p, err := producer.New(mc.Kafka, a.opts.Logger.With("mirror", mc.Name))
		if err != nil {
			return nil, fmt.Errorf("mirrors %s: kafka producer: %w", mc.Name, err)
		}
		m := mirror.New(mc, p, spillTo, cfg.Producer.CB, metrics, a.opts.Logger)
		started = append(started, m)
		out = append(out, m)
	}
	return out, nil
}

func tracerProvider(t *telemetry.Tracing) trace.TracerProvider {
	if t == nil {
		return nil
	}
	return t.Provider
}

// exportedTracerProvider is the provider of the per-record producer spans
// and of the HTTP requests' spans: none when no span leaves the process,
// as making them cost 8% of the ingest's CPU under batch load, and as much
// again under single-record HTTP load. Trace context still goes into each
// record's headers: the request's, or the record's own.
func exportedTracerProvider(t *telemetry.Tracing) trace.TracerProvider {
	if t == nil || !t.Exporting {
		return nil
	}
	return t.Provider
}

func propagators(t *telemetry.Tracing) propagation.TextMapPropagator {
	if t == nil {
		return nil
	}
	return t.Propagators
}

// NATSAddr is the embedded JetStream's client address, "" without one.
func (a *App) NATSAddr() string { return a.natsAddr }

// NATSCredentials is the file holding the nkey seed that the embedded
// JetStream admits (spill.EmbeddedCredentials), "" without one.
func (a *App) NATSCredentials() string {
	if a.natsAddr == "" {
		return ""
	}
	return spill.EmbeddedCredentials(a.opts.Config.Producer.WAL)
}

// HTTPAddr is the HTTP API's bound address.
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

// GRPCAddr is the gRPC API's bound address.
func (a *App) GRPCAddr() string { return a.grpcLn.Addr().String() }

// KafkaAddr is the Kafka-protocol listener's bound address, "" when it is
// off.
func (a *App) KafkaAddr() string {
	if a.kafkaLn == nil {
		return ""
	}
	return a.kafkaLn.Addr().String()
}

// MonitorAddr is the monitoring port's bound address.
func (a *App) MonitorAddr() string { return a.monitor.Addr() }

// Run serves until ctx ends, then shuts down in order: readiness and gRPC
// health go false, the servers stop accepting and let in-flight requests
// finish (streams stop taking requests, acknowledge those they took, and
// end), the producer flushes, and the monitoring port closes last.
func (a *App) Run(ctx context.Context) error {
	log := a.opts.Logger
	g, gctx := errgroup.WithContext(ctx)
	g.Go(a.monitor.Serve)
	g.Go(func() error {
		a.watchConfig(gctx)
		return nil
	})
	g.Go(func() error {
		if err := a.httpSrv.Serve(a.httpLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := a.grpcSrv.Serve(a.grpcLn); err != nil {
			return fmt.Errorf("grpc server: %w", err)
		}
		return nil
	})
	if a.kafkaSrv != nil {
		g.Go(func() error {
			if err := a.kafkaSrv.Serve(a.kafkaLn); !errors.Is(err, kafkaapi.ErrServerClosed) {
				return fmt.Errorf("kafka listener: %w", err)
			}
			return nil
		})
	}
	if a.bufferFailed != nil {
		g.Go(func() error {
			select {
			case err := <-a.bufferFailed:
				return err
			case <-gctx.Done():
				return nil
			}
		})
	}
	a.monitor.SetReady(true)
	a.syncHealth()
	log.Info("ingest started", "http", a.HTTPAddr(), "grpc", a.GRPCAddr(), "kafka", a.KafkaAddr(), "monitoring", a.MonitorAddr(),
		"nats", a.NATSAddr(), "brokers", a.opts.Config.Kafka.Brokers)

	g.Go(func() error {
		<-gctx.Done()
		return a.shutdown()
	})
	return g.Wait()
}

// syncHealth sets the gRPC health to what /readyz says: SERVING when
// ready, else NOT_SERVING (with /readyz's reason in the Check answer's
// trailer, grpcapi). Readiness changes when Run starts and ends, and when
// the buffer the ingest waited for is ready.
func (a *App) syncHealth() {
	a.healthMu.Lock()
	defer a.healthMu.Unlock()
	if a.grpcSrv == nil { // in New: NOT_SERVING, as it starts
		return
	}
	a.grpcSrv.SetServing(a.monitor.Ready() == nil)
}

func (a *App) shutdown() error {
	log := a.opts.Logger
	log.Info("ingest shutting down")
	a.monitor.SetReady(false)
	a.syncHealth()
	close(a.draining)
	timeout := a.opts.Config.Server.ShutdownTimeout
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Requests still waiting for Kafka at 80% of the deadline (and at least
	// a second before it) stop waiting and spill, so that they are answered
	// before it.
	spillAt := time.AfterFunc(max(0, min(timeout*8/10, timeout-time.Second)), a.cancelWaiting)
	defer spillAt.Stop()
	var errs []error
	grpcStopped := make(chan struct{})
	go func() {
		a.grpcSrv.GracefulStop()
		close(grpcStopped)
	}()
	kafkaStopped := make(chan error, 1)
	go func() {
		if a.kafkaSrv == nil {
			kafkaStopped <- nil
			return
		}
		kafkaStopped <- a.kafkaSrv.Shutdown(ctx)
	}()
	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- a.httpSrv.Shutdown(ctx) }()
	// The connections that never sent a request go at once, and any that
	// the listener accepted before Shutdown closed it.
	var shutdownErr error
	for closing := time.NewTicker(50 * time.Millisecond); ; {
		a.fresh.close()
		select {
		case shutdownErr = <-shutdownDone:
			closing.Stop()
		case <-closing.C:
			continue
		}
		break
	}
	if err := shutdownErr; err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	select {
	case <-grpcStopped:
	default:
		select {
		case <-grpcStopped:
		case <-ctx.Done():
			a.grpcSrv.Stop()
			<-grpcStopped
			errs = append(errs, errors.New("grpc shutdown: requests still running at the deadline were cut off"))
		}
	}
	if err := <-kafkaStopped; err != nil {
		errs = append(errs, err)
	}
	a.close()
	if err := a.monitor.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("monitoring shutdown: %w", err))
	}
	log.Info("ingest stopped")
	return errors.Join(errs...)
}

// close runs the cleanups in reverse order of their setup.
func (a *App) close() {
	for i := len(a.cleanups) - 1; i >= 0; i-- {
		a.cleanups[i]()
	}
	a.cleanups = nil
}
