// Command spillway-forwarder carries written-ahead records (producer.wal.mode
// always, or producer.wal.always_topics) from the JetStream buffer to Kafka,
// continuously, at most forward.rate_limit records per second.
package main

import (
	"context"
	"os"

	"github.com/spillway/spillway/pkg/drain"
	"github.com/spillway/spillway/pkg/startup"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run()) }

func run() int {
	return startup.Run("forwarder", version, func(ctx context.Context, s *startup.Service) (*drain.Service, error) {
		return drain.NewService(ctx, drain.ServiceOptions{Role: drain.Forwarder, Config: s.Config, Logger: s.Logger, Tracing: s.Tracing})
	})
}
