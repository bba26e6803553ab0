// Command spillway-forwarder carries written-ahead records (producer.wal.mode
// always, or producer.wal.always_topics) from the JetStream buffer to Kafka,
// continuously, at most forward.rate_limit records per second.
package main

import (
	"os"

	"github.com/spillway/spillway/pkg/drain"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(drain.Main(drain.Forwarder, version)) }
