// Command spillway-resender carries spilled records (those Kafka could not
// take when they came) from the JetStream buffer to Kafka: every
// producer.resend.period, while Kafka is healthy, at most
// producer.resend.rate_limit records per second.
//
// "spillway-resender dead-letters list|show|move" reads the dead letters
// and moves them back into the buffer (package deadletter).
package main

import (
	"context"
	"os"

	"github.com/spillway/spillway/pkg/deadletter"
	"github.com/spillway/spillway/pkg/drain"
	"github.com/spillway/spillway/pkg/startup"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run()) }

func run() int {
	if len(os.Args) > 1 && os.Args[1] == deadletter.CommandName {
		return deadletter.Command("spillway-resender", os.Args[2:], os.Environ(), os.Stdout, os.Stderr)
	}
	return startup.Run("resender", version, func(ctx context.Context, s *startup.Service) (*drain.Service, error) {
		return drain.NewService(ctx, drain.ServiceOptions{Role: drain.Resender, Config: s.Config, Logger: s.Logger, Tracing: s.Tracing})
	})
}
