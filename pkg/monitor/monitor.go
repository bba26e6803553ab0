// Package monitor serves a service's monitoring port: Prometheus metrics
// from the service's own registry, liveness, readiness and, when asked
// for, pprof.
package monitor

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the monitoring HTTP server. It starts not ready.
type Server struct {
	srv    *http.Server
	ln     net.Listener
	ready  atomic.Bool
	served chan error // Serve's result, once the server stopped

	mu       sync.Mutex
	checks   []func() error
	starting error // why not ready while starting; nil: ErrStarting
}

// ErrStarting is the reason /readyz gives while the service is not ready
// and has said no other (SetStarting): it is starting or shutting down.
var ErrStarting = errors.New("starting or shutting down")

// Option changes what the monitoring server serves.
type Option func(*options)

type options struct{ pprof bool }

// WithPprof serves Go's profiles under /debug/pprof/ when on
// (server.monitoring.pprof). They are off by default: a profile shows the
// command line, and a CPU profile or trace costs the service while it
// runs, so whoever reaches the port must not get them unasked.
func WithPprof(on bool) Option { return func(o *options) { o.pprof = on } }

// New binds addr and serves at once, so that while the service starts
// /healthz answers 200 and /readyz 503 (not ready yet) instead of nothing;
// Serve waits until the server stops.
func New(addr string, reg *prometheus.Registry, opts ...Option) (*Server, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, served: make(chan error, 1)}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if o.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { s.served <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the bound address, useful when New was given port 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// SetReady says whether the service takes records. It forgets the reason
// SetStarting gave.
func (s *Server) SetReady(ready bool) {
	s.SetStarting(nil)
	s.ready.Store(ready)
}

// SetStarting says why the service, not ready yet, is still starting: a
// dependency it waits for, which /readyz names. nil: ErrStarting.
func (s *Server) SetStarting(reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starting = reason
}

// AddReadinessCheck adds a check that must pass for /readyz to say ready.
func (s *Server) AddReadinessCheck(check func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, check)
}

// Ready is nil when the service is ready, else why not: what /readyz
// answers, for a service that reports its readiness elsewhere too (the
// ingest's gRPC health).
func (s *Server) Ready() error {
	s.mu.Lock()
	checks, reason := s.checks, s.starting
	s.mu.Unlock()
	if !s.ready.Load() {
		if reason == nil {
			reason = ErrStarting
		}
		return reason
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.Ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Serve waits until Shutdown or Close stopped the server, which New
// started.
func (s *Server) Serve() error {
	if err := <-s.served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close stops the server at once, also when Serve never ran.
func (s *Server) Close() error {
	_ = s.srv.Close()
	if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}

// Probe gets url and returns 0 when it answers 200, 1 otherwise: a health
// check for container images that have no shell or curl
// (`spillway-ingest -probe http://127.0.0.1:28080/readyz`).
func Probe(url string) int {
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
