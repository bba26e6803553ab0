// Command spillway-resender carries spilled records (those Kafka could not
// take when they came) from the JetStream buffer to Kafka: every
// producer.resend.period, while Kafka is healthy, at most
// producer.resend.rate_limit records per second.
package main

import (
	"os"

	"github.com/spillway/spillway/pkg/drain"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(drain.Main(drain.Resender, version)) }
