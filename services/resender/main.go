// Command spillway-resender carries spilled records (those Kafka could not
// take when they came) from the JetStream buffer to Kafka: every
// producer.resend.period, while Kafka is healthy, at most
// producer.resend.rate_limit records per second.
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
	return startup.Run("resender", version, func(ctx context.Context, s *startup.Service) (*drain.Service, error) {
		return drain.NewService(ctx, drain.ServiceOptions{Role: drain.Resender, Config: s.Config, Logger: s.Logger, Tracing: s.Tracing})
	})
}
