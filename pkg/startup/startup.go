// Package startup is what every Spillway service's main does before and
// after it serves, written once so that the three do it alike: the common
// flags, the configuration and its warnings, the development broker, the
// logger, tracing, the signals and the exit code.
package startup

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/monitor"
	"github.com/spillway/spillway/pkg/telemetry"
)

// Exit codes of a service.
const (
	ExitOK     = 0
	ExitFailed = 1 // it failed to start, or stopped with an error
	ExitConfig = 2 // its configuration (or the OTEL_* settings) is invalid
)

// traceFlushTimeout bounds the export of the spans not yet sent, at exit.
const traceFlushTimeout = 5 * time.Second

// Runner is a started service: Run serves until ctx ends, then shuts down.
type Runner interface {
	Run(ctx context.Context) error
}

// Service is what a main builds its service from.
type Service struct {
	Name    string // "ingest", "forwarder" or "resender"
	Version string
	// Config was loaded from ConfigPath ("": none) and Environ (the
	// SPILLWAY_* variables); its warnings are logged already.
	Config     *config.Config
	ConfigPath string
	Environ    []string
	Logger     *slog.Logger // with the service's name and version
	Tracing    *telemetry.Tracing

	reloadOnce sync.Once
	reloads    chan struct{}
	stops      []func()
}

// Run is a service's main function: it parses the flags, loads the
// configuration, logs its warnings, sets up tracing, calls start, and runs
// what start returned until SIGINT or SIGTERM. It returns the exit code.
func Run[S Runner](name, version string, start func(context.Context, *Service) (S, error)) int {
	return run(name, version, os.Args[1:], os.Environ(), os.Stdout, os.Stderr, start)
}

func run[S Runner](name, version string, args, environ []string, stdout, stderr io.Writer, start func(context.Context, *Service) (S, error)) int {
	binary := "spillway-" + name
	fs := flag.NewFlagSet(binary, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (kafka-ambassador's format), the same for the three services; defaults and SPILLWAY_* variables apply without one")
	devBroker := fs.String("dev-broker", config.DevBroker, "the development broker to use when no kafka.brokers are configured (make run sets it)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	probe := fs.String("probe", "", "check URL answers 200 and exit 0, else 1 (a container health check)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitConfig
	}
	if *probe != "" {
		return monitor.Probe(*probe)
	}
	if *showVersion {
		fmt.Fprintln(stdout, binary, version)
		return ExitOK
	}

	cfg, err := config.Load(*configPath, environ)
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", binary, err)
		return ExitConfig
	}
	memoryLimit := config.TuneRuntime(environ)
	s := &Service{Name: name, Version: version, Config: cfg, ConfigPath: *configPath, Environ: environ,
		Logger: telemetry.NewLogger(stderr, cfg.Log).With("service", name, "version", version)}
	defer s.stop()
	s.Logger.Debug("go runtime", "memory_limit_bytes", memoryLimit)
	if cfg.Kafka.UsingDevBroker {
		cfg.Kafka.Brokers = []string{*devBroker}
		s.Logger.Warn("NO kafka.brokers CONFIGURED: using the development broker at " + *devBroker +
			", which keeps records in memory only. Set kafka.brokers (or SPILLWAY_KAFKA_BROKERS) for real use.")
	}
	for _, w := range cfg.Warnings {
		s.Logger.Warn(w)
	}
	for _, p := range cfg.Kafka.IgnoredProperties {
		s.Logger.Warn("kafka property has no counterpart in Spillway and is ignored", "property", "kafka."+p)
	}

	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	s.Tracing, err = telemetry.NewTracing(ctx, binary, version, lookup(environ))
	if err != nil {
		s.Logger.Error("tracing", "error", err)
		return ExitConfig
	}
	defer s.flushTraces()

	svc, err := start(ctx, s)
	if err != nil {
		s.Logger.Error(name+" failed to start", "error", err)
		return ExitFailed
	}
	if err := svc.Run(ctx); err != nil {
		s.Logger.Error(name+" stopped with an error", "error", err)
		return ExitFailed
	}
	return ExitOK
}

// Reloads delivers a value on each SIGHUP, which asks for the
// configuration to be read again; signals that come while one waits are
// merged. Until it is first called, SIGHUP ends the process.
func (s *Service) Reloads() <-chan struct{} {
	s.reloadOnce.Do(func() {
		s.reloads = make(chan struct{}, 1)
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		s.stops = append(s.stops, func() { signal.Stop(hup); close(hup) })
		go func() {
			for range hup {
				select {
				case s.reloads <- struct{}{}:
				default: // one is already waiting
				}
			}
		}()
	})
	return s.reloads
}

func (s *Service) stop() {
	for _, f := range s.stops {
		f()
	}
}

// flushTraces exports the spans not yet sent, for at most
// traceFlushTimeout.
func (s *Service) flushTraces() {
	ctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
	defer cancel()
	if err := s.Tracing.Shutdown(ctx); err != nil {
		s.Logger.Warn("flushing traces", "error", err)
	}
}

// lookup is os.Getenv over environ.
func lookup(environ []string) func(string) string {
	return func(key string) string {
		v := ""
		for _, kv := range environ {
			if k, val, ok := strings.Cut(kv, "="); ok && k == key {
				v = val // the last one wins, as in os/exec
			}
		}
		return v
	}
}
