// Command spillway-ingest takes records over HTTP and gRPC and writes them
// to Kafka.
package main

import (
	"context"
	"os"
	"time"

	"github.com/spillway/spillway/pkg/startup"
	"github.com/spillway/spillway/services/ingest/internal/app"
)

// configCheckEvery is how often the configuration file is looked at for
// changes.
const configCheckEvery = 2 * time.Second

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run()) }

func run() int {
	return startup.Run("ingest", version, func(_ context.Context, s *startup.Service) (*app.App, error) {
		return app.New(app.Options{
			Config: s.Config, ConfigPath: s.ConfigPath, Environ: s.Environ,
			Reloads: s.Reloads(), ConfigCheckEvery: configCheckEvery, // SIGHUP reloads, as a change of the file does
			Logger: s.Logger, Tracing: s.Tracing,
		})
	})
}
