// Command spillway-ingest takes records over HTTP and gRPC and writes them
// to Kafka.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/monitor"
	"github.com/spillway/spillway/pkg/telemetry"
	"github.com/spillway/spillway/services/ingest/internal/app"
)

// configCheckEvery is how often the configuration file is looked at for
// changes.
const configCheckEvery = 2 * time.Second

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run()) }

func run() int {
	configPath := flag.String("config", "", "YAML configuration file (kafka-ambassador's format); defaults and SPILLWAY_* variables apply without one")
	devBroker := flag.String("dev-broker", config.DevBroker, "the development broker to use when no kafka.brokers are configured (make run sets it)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	probe := flag.String("probe", "", "check URL answers 200 and exit 0, else 1 (a container health check)")
	flag.Parse()
	if *probe != "" {
		return monitor.Probe(*probe)
	}
	if *showVersion {
		fmt.Println("spillway-ingest", version)
		return 0
	}

	cfg, err := config.Load(*configPath, os.Environ())
	if err != nil {
		fmt.Fprintf(os.Stderr, "spillway-ingest: invalid configuration:\n%v\n", err)
		return 2
	}
	memoryLimit := config.TuneRuntime(os.Environ())
	logger := telemetry.NewLogger(os.Stderr, cfg.Log)
	logger.Debug("go runtime", "memory_limit_bytes", memoryLimit)
	if cfg.Kafka.UsingDevBroker {
		cfg.Kafka.Brokers = []string{*devBroker}
		logger.Warn("NO kafka.brokers CONFIGURED: using the development broker at " + *devBroker +
			", which keeps records in memory only. Set kafka.brokers (or SPILLWAY_KAFKA_BROKERS) for real use.")
	}
	for _, w := range cfg.Warnings {
		logger.Warn(w)
	}
	for _, p := range cfg.Kafka.IgnoredProperties {
		logger.Warn("kafka property has no counterpart in Spillway and is ignored", "property", "kafka."+p)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tracing, err := telemetry.NewTracing(ctx, "spillway-ingest", version, nil)
	if err != nil {
		logger.Error("tracing", "error", err)
		return 2
	}
	defer flushTraces(tracing, logger)
	// SIGHUP reloads the configuration, as a change of the file does.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloads := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reloads <- struct{}{}:
			default: // one is already waiting
			}
		}
	}()
	a, err := app.New(app.Options{
		Config: cfg, ConfigPath: *configPath, Environ: os.Environ(), Reloads: reloads, ConfigCheckEvery: configCheckEvery,
		Logger: logger.With("service", "ingest", "version", version), Tracing: tracing,
	})
	if err != nil {
		logger.Error("ingest failed to start", "error", err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		logger.Error("ingest stopped with an error", "error", err)
		return 1
	}
	return 0
}

// flushTraces exports the spans not yet sent, for at most 5 seconds.
func flushTraces(t *telemetry.Tracing, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		logger.Warn("flushing traces", "error", err)
	}
}
