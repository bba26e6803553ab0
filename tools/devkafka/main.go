// Command devkafka is a development Kafka broker: kfake, a Kafka-protocol
// cluster that keeps records in memory, on 127.0.0.1 with topic
// auto-creation on. `make run` starts it when no brokers are configured.
// It is not for production: its records are gone when it stops.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() { os.Exit(run()) }

func run() int {
	port := flag.Int("port", 9092, "port to listen on, on 127.0.0.1")
	partitions := flag.Int("partitions", 3, "partitions of an auto-created topic")
	flag.Parse()

	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(*port),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(*partitions),
		kfake.ClusterID("spillway-dev"),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "devkafka: cannot start on 127.0.0.1:%d: %v\n", *port, err)
		return 1
	}
	defer c.Close()
	fmt.Printf("devkafka: development Kafka broker on %s (in memory; topics are created on first use)\n", c.ListenAddrs()[0])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0
}
