// Command bench is `make bench`: on one machine, in one run, it starts a
// Kafka broker (kfake, in its own process) and the ingest, measures the
// ingest through each API form and the limits it is held against (kafka-go
// and kgo straight into the broker, an HTTP server that only answers, a
// direct JetStream publish, a bare JetStream-to-Kafka pipe), and writes the
// table, with the machine and the date, to docs/benchmarks.md. Every
// figure is the median of -runs runs, taken in turns with its limit. Each
// row gives the CPU µs per record of the process that moved the records
// and of the broker, from /proc/PID/stat over the run.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spillway/spillway/pkg/config"
)

func main() { os.Exit(run()) }

var (
	binDir   = flag.String("bin", "bin", "folder with the built binaries")
	runs     = flag.Int("runs", 3, "runs of each measurement; the median is reported")
	duration = flag.Duration("duration", 5*time.Second, "length of each timed run")
	size     = flag.Int("size", 100, "record size in bytes")
	out      = flag.String("out", "docs/benchmarks.md", "file whose table (between the bench markers) is rewritten; empty: print only. With -only the file is written only when -out is given")
	only     = flag.String("only", "", "comma-separated groups to run (default all): "+strings.Join(groupNames(), ", "))
	wrkFlag  = flag.String("wrk", "auto", "wrk for the single-record HTTP rows: auto (wrk on PATH, else loadgen), a path, or off (loadgen)")

	// Modes in which bench runs a measured process of its own.
	serveAnswerAddr = flag.String("serve-answer", "", "internal: be the answer-only HTTP server on this address")
	serveWaitAddr   = flag.String("serve-answer-waiting", "", "a prototype, not a row: be the answer-only HTTP server that answers each request once a sender goroutine has held its batch for 1 ms (the wait without the work)")
	serveAmbAddr    = flag.String("serve-ambassador", "", "internal: be the answer-only kafka-ambassador gRPC server on this address")
	pipeURL         = flag.String("pipe", "", "internal: be the bare pipe, draining the spilled records of the JetStream at this URL into -pipe-brokers")
	pipeCredentials = flag.String("pipe-credentials", "", "internal: the bare pipe's NATS nkey seed file")
	pipeBrokers     = flag.String("pipe-brokers", "", "internal: the bare pipe's Kafka brokers")
)

// groups are what -only selects, in the order they run.
var groups = []struct{ name, what string }{
	{"batched", "kafka-go straight into the broker, against HTTP NDJSON, Confluent v2 and the gRPC stream, batches of 500"},
	{"ambassador", "kafka-ambassador's KafkaAmbassador/Produce stream, 1,000,000 records on one stream, driven as its own client does, against a server that only answers"},
	{"listener", "kgo straight into the broker, against kgo through the ingest's Kafka listener"},
	{"single", "one record per HTTP POST (wrk when installed) at 64 and 256 connections, against the answer-only server"},
	{"spill", "the spill path (breaker open), against a direct JetStream async publish"},
	{"resender", "the resender draining spilled records: at a configured rate, and without a limit against a bare pipe"},
	{"always", "write-ahead to JetStream (producer.wal.mode always)"},
}

func groupNames() []string {
	var n []string
	for _, g := range groups {
		n = append(n, g.name)
	}
	return n
}

func usage() {
	w := flag.CommandLine.Output()
	fmt.Fprintf(w, `Usage: bench [flags]

bench measures Spillway against the limits of this machine in one run and
writes the table into docs/benchmarks.md (make bench). Each row gives
records/s, p99 latency, the ratio to its limit, and the CPU µs per record
of the process that moved the records and of the broker.

Groups (-only a,b runs some of them; the table is then printed, and
written only with -out):
`)
	for _, g := range groups {
		fmt.Fprintf(w, "  %-11s %s\n", g.name, g.what)
	}
	fmt.Fprintf(w, "\nExamples:\n  bin/bench -bin bin                                  # make bench\n  bin/bench -bin bin -only single,ambassador -runs 1  # one figure, quickly\n\nFlags:\n")
	flag.PrintDefaults()
}

// wrkPath is the wrk binary of the single-record rows; "": loadgen.
var wrkPath string

func run() int {
	flag.Usage = usage
	flag.Parse()
	switch {
	case *serveAnswerAddr != "":
		return serveAnswer(*serveAnswerAddr)
	case *serveWaitAddr != "":
		return serveAnswerWaiting(*serveWaitAddr)
	case *serveAmbAddr != "":
		return serveAmbassadorAnswer(*serveAmbAddr)
	case *pipeURL != "":
		return runPipe(*pipeURL, *pipeCredentials, *pipeBrokers)
	}
	sel := map[string]bool{}
	for _, g := range groupNames() {
		sel[g] = *only == ""
	}
	if *only != "" {
		for _, g := range strings.Split(*only, ",") {
			g = strings.TrimSpace(g)
			if _, ok := sel[g]; !ok {
				fmt.Fprintf(os.Stderr, "bench: -only: no group %q; the groups are %s\n", g, strings.Join(groupNames(), ", "))
				return 2
			}
			sel[g] = true
		}
		outGiven := false
		flag.Visit(func(f *flag.Flag) { outGiven = outGiven || f.Name == "out" })
		if !outGiven {
			*out = ""
		}
	}
	switch *wrkFlag {
	case "off":
	case "auto":
		wrkPath, _ = exec.LookPath("wrk")
	default:
		wrkPath = *wrkFlag
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintln(os.Stderr, "bench:", s, "- stopping what it started")
		stopAll()
		removeTemp(true)
		os.Exit(130)
	}()
	defer stopAll()
	began := time.Now()

	broker := freeAddr()
	_, port, _ := strings.Cut(broker, ":")
	kafka := start("devkafka", nil, "-port", port)
	waitListening(kafka, broker)
	kafkaPID := func() int { return kafka.pid() }
	// freshKafka replaces the broker with an empty one on the same port:
	// kfake keeps every record in memory, and a broker holding millions
	// of them slows down what is measured after them.
	freshKafka := func() {
		kafka.kill()
		kafka = start("devkafka", nil, "-port", port)
		waitListening(kafka, broker)
	}

	var walDir string // the last ingest's producer.wal.path, with its NATS credentials
	type ingestAddrs struct{ http, grpc, mon, nats, kafka string }
	ingestEnv := func(mode string) ([]string, ingestAddrs) {
		a := ingestAddrs{freeAddr(), freeAddr(), freeAddr(), freeAddr(), freeAddr()}
		dir, err := os.MkdirTemp("", "spillway-bench")
		if err != nil {
			fatal("%v", err)
		}
		walDir = dir
		tempDirs = append(tempDirs, dir)
		return []string{
			"SPILLWAY_KAFKA_BROKERS=" + broker, "SPILLWAY_SERVER_HTTP_LISTEN=" + a.http, "SPILLWAY_SERVER_GRPC_LISTEN=" + a.grpc,
			"SPILLWAY_SERVER_MONITORING_LISTEN=" + a.mon, "SPILLWAY_PRODUCER_WAL_LISTEN=" + a.nats, "SPILLWAY_PRODUCER_WAL_PATH=" + dir,
			"SPILLWAY_PRODUCER_WAL_MODE=" + mode, "SPILLWAY_GLOBAL_LOG_LEVEL=warn", "SPILLWAY_SERVER_KAFKA_LISTEN=" + a.kafka,
		}, a
	}
	startIngest := func(env []string, a ingestAddrs) *service {
		in := start("spillway-ingest", env)
		in.dir = walDir
		waitOK(in, "http://"+a.mon+"/readyz")
		return in
	}
	// startLimited starts an ingest as a pod with a 512 MiB memory limit
	// would run it: GOMEMLIMIT 400MiB, in a memory cgroup of 512 MiB that
	// the kernel enforces, when bench may make one. how says which.
	startLimited := func(env []string, a ingestAddrs) (in *service, how string) {
		in = start("spillway-ingest", append(env, "GOMEMLIMIT=400MiB"))
		in.dir = walDir
		how = "GOMEMLIMIT 400MiB, in a 512 MiB memory cgroup"
		cg, err := newMemoryCgroup(512 << 20)
		if err == nil {
			if err = cg.add(in.pid()); err != nil {
				cg.remove()
			}
		}
		if err != nil {
			how = "GOMEMLIMIT 400MiB, no memory cgroup (" + err.Error() + ")"
		} else {
			in.cgroup = cg
		}
		waitOK(in, "http://"+a.mon+"/readyz")
		return in, how
	}
	// warm sends a few records through the ingest until Kafka takes them
	// (delivered, not buffered), for at most 30 seconds: after a new
	// broker the ingest reconnects, and its breaker may be open a while.
	warm := func(a ingestAddrs) {
		var last []byte
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			out, err := runTool(filepath.Join(*binDir, "loadgen"), "-json", "-target", "http", "-addr", "http://"+a.http, "-count", "200", "-concurrency", "8", "-topic", "warm-up")
			var r loadgenReport
			if err == nil && json.Unmarshal(out, &r) == nil && r.Delivered == 200 {
				return
			}
			last = out
		}
		fatal("the ingest does not deliver to the new broker after 30s: %s", last)
	}
	t := &table{}
	lg := func(name string, mover, broker pidOf, args ...string) spec {
		return spec{name: name, measure: loadgen(mover, broker, args...)}
	}

	if sel["batched"] || sel["ambassador"] || sel["listener"] || sel["single"] {
		env, a := ingestEnv("fallback")
		in := startIngest(env, a)
		warm(a)
		ingest := func() int { return in.pid() }
		// fresh starts each group on an empty broker, with a new ingest:
		// killing the broker under a running ingest opens its breaker,
		// and it would buffer records in JetStream for a while.
		fresh := func() {
			in.stop()
			freshKafka()
			env, a = ingestEnv("fallback")
			in = startIngest(env, a)
			warm(a)
		}
		if sel["batched"] {
			t.group("the kafka-go limit", true,
				lg("kafka-go Writer straight into the broker, batches of 500, 8 callers", moverSelf, kafkaPID, "-target", "kafka", "-brokers", broker, "-batch", "500", "-concurrency", "8", "-compression", string(ingestCodec())).as("kafka-go"),
				lg("ingest, HTTP NDJSON, batches of 500, 8 connections", ingest, kafkaPID, "-target", "ndjson", "-addr", "http://"+a.http, "-batch", "500", "-concurrency", "8").as("ndjson").via(a.mon),
				lg("ingest, Confluent v2, batches of 500, 8 connections", ingest, kafkaPID, "-target", "v2", "-addr", "http://"+a.http, "-batch", "500", "-concurrency", "8").as("v2").via(a.mon),
				lg("ingest, gRPC stream, batches of 500, 4 streams × 4 in flight", ingest, kafkaPID, "-target", "grpc-stream", "-addr", a.grpc, "-batch", "500", "-concurrency", "4", "-window", "4").as("grpc-stream").via(a.mon),
			)
		}
		if sel["ambassador"] {
			// The same client on one stream, first against a server that
			// answers each message at once: gRPC's own cost of one
			// message a record, in and out, is the row's limit.
			answerAddr := freeAddr()
			answer := start("bench", nil, "-serve-ambassador", answerAddr)
			waitListening(answer, answerAddr)
			fresh()
			ambassador := func(addr string) []string {
				return []string{"-target", "ambassador-stream", "-addr", addr, "-count", "1000000", "-concurrency", "1"}
			}
			t.group("the answer-only gRPC server", true,
				lg("answer-only kafka-ambassador gRPC server, 1,000,000 records on 1 stream, sent without waiting", func() int { return answer.pid() }, nil, ambassador(answerAddr)...).as("ambassador-answer"),
				lg("ingest, kafka-ambassador gRPC stream, 1,000,000 records on 1 stream, sent without waiting", ingest, kafkaPID, ambassador(a.grpc)...).as("ambassador").via(a.mon),
			)
			answer.stop()
		}
		if sel["listener"] {
			// The same client, kgo with its defaults (idempotent, acks
			// all), straight into the broker and through the listener.
			fresh()
			t.group("kgo straight into the broker", true,
				lg("kgo straight into the broker, batches of 500, 8 callers", moverSelf, kafkaPID, "-target", "kgo", "-brokers", broker, "-batch", "500", "-concurrency", "8").as("kgo"),
				lg("ingest, Kafka listener, kgo batches of 500, 8 callers", ingest, kafkaPID, "-target", "kgo", "-brokers", a.kafka, "-create-topics-on", broker, "-batch", "500", "-concurrency", "8").as("listener").via(a.mon),
			)
		}
		if sel["single"] {
			answerAddr := freeAddr()
			answer := start("bench", nil, "-serve-answer", answerAddr)
			waitListening(answer, answerAddr)
			answerPID := func() int { return answer.pid() }
			for _, c := range []int{64, 256} {
				fresh()
				var answerSpec, ingestSpec spec
				tool := "wrk"
				if wrkPath != "" {
					answerSpec = spec{measure: wrkLoad(c, "http://"+answerAddr+"/topics/TOPIC/messages", answerPID, nil)}
					ingestSpec = spec{measure: wrkLoad(c, "http://"+a.http+"/topics/TOPIC/messages", ingest, kafkaPID)}
				} else {
					tool = "loadgen"
					answerSpec = lg("", answerPID, nil, "-target", "http", "-addr", "http://"+answerAddr, "-concurrency", fmt.Sprint(c))
					ingestSpec = lg("", ingest, kafkaPID, "-target", "http", "-addr", "http://"+a.http, "-concurrency", fmt.Sprint(c))
				}
				answerSpec.name = fmt.Sprintf("answer-only HTTP server, single records, %d connections (%s)", c, tool)
				ingestSpec.name = fmt.Sprintf("ingest, HTTP single records, %d connections (%s)", c, tool)
				t.group("the answer-only server", true, answerSpec.as(fmt.Sprintf("answer-%d", c)), ingestSpec.as(fmt.Sprintf("single-%d", c)).via(a.mon))
			}
			answer.stop()
		}
		t.last().rssMB = peakRSS(in.pid())
		in.stop()
	}

	if sel["spill"] || sel["resender"] {
		// The spill path: Kafka unreachable for the ingest and its breaker
		// open, every record is published to its embedded JetStream.
		env, a := ingestEnv("fallback")
		env = append(env, "SPILLWAY_KAFKA_BROKERS="+freeAddr(), "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1h",
			"SPILLWAY_PRODUCER_WAL_MAX_BYTES=8589934592")
		in := startIngest(env, a)
		ingest := func() int { return in.pid() }
		spillArgs := []string{"-target", "ndjson", "-addr", "http://" + a.http, "-batch", "500", "-concurrency", "8"}
		if sel["spill"] {
			// The same spill, in an ingest of its own under a memory
			// limit, its runs taken in turn with the others.
			limitedEnv, la := ingestEnv("fallback")
			limitedEnv = append(limitedEnv, env[len(limitedEnv):]...) // Kafka unreachable, as above
			limited, how := startLimited(limitedEnv, la)
			walDir = in.dir // the drains below read the first ingest's store
			// The JetStream server is in the ingest's process: it is the
			// broker of the direct publish.
			t.group("direct JetStream publish", false,
				lg("JetStream async publish straight into the ingest's embedded server, batches of 500, 8 callers", moverSelf, ingest, "-target", "jetstream", "-addr", "nats://"+a.nats, "-nats-credentials", filepath.Join(in.dir, "nats-user.nk"), "-batch", "500", "-concurrency", "8").as("jetstream"),
				lg("ingest, spill to JetStream (breaker open), NDJSON batches of 500, 8 connections", ingest, nil, spillArgs...).as("spill"),
				lg("the spill row, "+how, func() int { return limited.pid() }, nil,
					"-target", "ndjson", "-addr", "http://"+la.http, "-batch", "500", "-concurrency", "8").as("spill-512"),
			)
			t.last().rssMB = peakRSS(limited.pid())
			t.find("spill").rssMB = peakRSS(in.pid())
			limited.stop()
		}
		if sel["resender"] {
			const rate = 20000
			d := newDrains(a.nats, walDir)
			// Enough spilled records for every drain run.
			if have, want := d.buffered(), needed(rate); have < want {
				fmt.Fprintf(os.Stderr, "adding %d spilled records for the drains\n", want-have)
				d.fill(want - have)
			}
			freshKafka()
			t.group("the configured rate", false,
				spec{name: fmt.Sprintf("resender at a configured %d records/s", rate), key: "resender-rate", measure: func(int) result {
					return d.measure(2*rate, resender(broker, a.nats, walDir, rate), kafkaPID)
				}},
			)
			t.last().limit, t.last().against = &measured{rps: rate}, "the configured rate"
			t.group("the bare pipe", true,
				spec{name: "bare pipe: JetStream pull consumer, fetches of 500, one kafka-go WriteMessages each (acks all), then the acks", key: "pipe", measure: func(int) result {
					return d.measure(drainRecords, pipe(broker, a.nats, walDir), kafkaPID)
				}},
				spec{name: "resender without a rate limit", key: "resender", measure: func(int) result {
					return d.measure(drainRecords, resender(broker, a.nats, walDir, 0), kafkaPID)
				}},
			)
			d.close()
		}
		in.stop()
	}

	if sel["always"] {
		env, a := ingestEnv("always")
		in := startIngest(env, a)
		limitedEnv, la := ingestEnv("always")
		limited, how := startLimited(limitedEnv, la)
		t.group("the write-ahead row without a limit", true,
			lg("ingest, write-ahead to JetStream (mode always), NDJSON batches of 500, 8 connections", func() int { return in.pid() }, nil,
				"-target", "ndjson", "-addr", "http://"+a.http, "-batch", "500", "-concurrency", "8").as("always"),
			lg("the write-ahead row, "+how, func() int { return limited.pid() }, nil,
				"-target", "ndjson", "-addr", "http://"+la.http, "-batch", "500", "-concurrency", "8").as("always-512"))
		t.find("always").rssMB = peakRSS(in.pid())
		t.last().rssMB = peakRSS(limited.pid())
		limited.stop()
		in.stop()
	}

	doc := t.render()
	if *out != "" {
		if err := writeTable(*out, doc); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			stopAll()
			removeTemp(false)
			return 1
		}
	}
	os.Stdout.Write(doc)
	fmt.Fprintf(os.Stderr, "bench: %s\n", time.Since(began).Round(time.Second))
	if failed := t.failed(); len(failed) > 0 {
		stopAll()
		removeTemp(true)
		fmt.Fprintf(os.Stderr, "bench: not reported, because records or answers failed: %s\nbench: the services' output is in %s\n", strings.Join(failed, "; "), logDir)
		return 1
	}
	stopAll()
	removeTemp(false)
	return 0
}

// ingestCodec is the services' default kafka.compression.codec: the
// kafka-go limit and the bare pipe compress their batches as the ingest
// and the resender do, so that the broker does the same work for them.
func ingestCodec() config.Compression {
	cfg, err := config.Parse(nil, nil)
	if err != nil {
		fatal("the default configuration: %v", err)
	}
	return cfg.Kafka.Compression
}
