// Command loadgen sends records to Spillway and reports throughput,
// latency percentiles (HDR histogram) and outcomes, so that users can size
// Spillway and we can hold it against the limits of the machine.
//
//	loadgen -target http -addr http://127.0.0.1:18080 -concurrency 64 -duration 10s
//	loadgen -target grpc-stream -addr 127.0.0.1:18282 -batch 100 -window 16 -rate 50000
//	loadgen -target ndjson -batch 500 -count 100000 -verify 127.0.0.1:9092
//	loadgen -target ambassador-stream -addr 127.0.0.1:18282 -concurrency 1 -count 200000
//
// Each record's value starts with a unique id, so that -verify can consume
// the topics afterwards and report missing and duplicate records.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/spillway/spillway/pkg/config"
)

func main() { os.Exit(run()) }

// Options are the load's shape.
type Options struct {
	Target      string
	Addr        string
	Topic       string
	Topics      int
	Size        int
	Keys        int
	Batch       int
	Concurrency int
	Window      int
	Rate        float64
	Duration    time.Duration
	Count       int64
	Verify      string
	JSON        bool
	Brokers     string
	// Compression is the kafka target's codec: none, gzip, snappy, lz4
	// or zstd.
	Compression string
	// NATSCredentials is the nkey seed file the jetstream target signs in
	// with: the ingest's embedded server admits only it.
	NATSCredentials string
	// CreateTopicsOn is a broker where the kgo target creates its topics
	// first, for -brokers that do not (the ingest's Kafka listener).
	CreateTopicsOn string
}

func run() int {
	var o Options
	flag.StringVar(&o.Target, "target", "http", "http (one record per request), ndjson, v2 (Confluent v2 json), grpc (unary Produce), grpc-stream (ProduceStream), ambassador-stream (kafka-ambassador's KafkaAmbassador/Produce, one record per message, as its own client: one stream per -concurrency, sent without waiting, acknowledgements read concurrently), kafka (kafka-go straight into -brokers: the limit), kgo (franz-go's kgo to -brokers: a broker, or the ingest's Kafka listener), jetstream (async publish straight into JetStream at -addr nats://…: the spill limit)")
	flag.StringVar(&o.Addr, "addr", "", "address: http://127.0.0.1:18080 for HTTP targets, 127.0.0.1:18282 for gRPC (default by target)")
	flag.StringVar(&o.Topic, "topic", "load", "topic (or prefix, with -topics > 1)")
	flag.IntVar(&o.Topics, "topics", 1, "number of topics, records spread evenly: TOPIC-0 … TOPIC-(n-1)")
	flag.IntVar(&o.Size, "size", 100, "record value size in bytes (at least the id's length)")
	flag.IntVar(&o.Keys, "keys", 0, "distinct keys, uniformly chosen; 0: no key")
	flag.IntVar(&o.Batch, "batch", 1, "records per request (ndjson, v2, grpc, grpc-stream, kafka)")
	flag.StringVar(&o.Compression, "compression", "none", "kafka target: the batches' codec, none, gzip, snappy, lz4 or zstd")
	flag.IntVar(&o.Concurrency, "concurrency", 64, "concurrent connections or streams")
	flag.IntVar(&o.Window, "window", 16, "grpc-stream: requests in flight per stream")
	flag.Float64Var(&o.Rate, "rate", 0, "target records/s (open loop, latency measured from each request's scheduled time); 0: as fast as possible (closed loop)")
	flag.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send")
	flag.Int64Var(&o.Count, "count", 0, "stop after this many records (0: after -duration)")
	flag.StringVar(&o.Verify, "verify", "", "Kafka broker: after the run, consume the topics and report missing and duplicate records")
	flag.StringVar(&o.Brokers, "brokers", "127.0.0.1:9092", "kafka and kgo targets: the brokers")
	flag.StringVar(&o.CreateTopicsOn, "create-topics-on", "", "kgo target: a Kafka broker on which to create the topics first (auto-created by a metadata request), for -brokers that do not create them, such as the ingest's Kafka listener")
	flag.StringVar(&o.NATSCredentials, "nats-credentials", "", "jetstream target: the nkey seed file to sign in with (the ingest's producer.wal.path/nats-user.nk)")
	flag.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	flag.Parse()

	if o.Addr == "" {
		switch o.Target {
		case "grpc", "grpc-stream", "ambassador-stream":
			o.Addr = "127.0.0.1:18282"
		default:
			o.Addr = "http://127.0.0.1:18080"
		}
	}
	if o.Target == "http" || o.Target == "answer" {
		o.Batch = 1
	}
	if !slices.Contains(config.Compressions(), config.Compression(o.Compression)) {
		fmt.Fprintf(os.Stderr, "loadgen: -compression %q: want one of %v\n", o.Compression, config.Compressions())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var rep *Report
	if o.Target == "ambassador-stream" {
		// Not a request-and-answer load: its own runner.
		r, err := runAmbassador(ctx, o, os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			return 1
		}
		return report(ctx, o, r)
	}
	sender, err := newSender(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 2
	}
	defer sender.Close()
	rep, err = Run(ctx, o, sender, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 1
	}
	return report(ctx, o, rep)
}

// report verifies the run when asked and prints its report.
func report(ctx context.Context, o Options, rep *Report) int {
	if o.Verify != "" {
		v, err := verify(ctx, o, rep.RunID, rep.Acknowledged())
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: verify:", err)
			return 1
		}
		rep.Verify = v
	}
	if o.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		rep.Print(os.Stdout)
	}
	if rep.Verify != nil && rep.Verify.Missing > 0 {
		return 1
	}
	return 0
}
