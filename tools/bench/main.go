// Command bench is `make bench`: on one machine, in one run, it starts a
// Kafka broker (kfake, in its own process) and the ingest, measures the
// ingest through each API form with tools/loadgen, measures the limits the
// same way (kafka-go straight into the broker; an HTTP server that only
// answers 200), and writes the table, with the machine and the date, to
// docs/benchmarks.md. Every figure is the median of -runs runs.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

func main() { os.Exit(run()) }

type report struct {
	RecordsPerSec float64 `json:"records_per_second"`
	Failed        int64   `json:"failed"`
	Delivered     int64   `json:"delivered"`
	Buffered      int64   `json:"buffered"`
	LatencyMs     struct {
		P99 float64 `json:"p99"`
	} `json:"latency_ms"`
}

type row struct {
	name, against string
	rps, p99      float64
	limit         float64 // records/s of what it is compared to; 0: none
	rssMB         float64
	cpuUs         float64 // the ingest's CPU µs per record; 0: not measured
}

var (
	binDir   = flag.String("bin", "bin", "folder with the built binaries")
	runs     = flag.Int("runs", 3, "runs of each measurement; the median is reported")
	duration = flag.Duration("duration", 5*time.Second, "length of each run")
	size     = flag.Int("size", 100, "record size in bytes")
	out      = flag.String("out", "docs/benchmarks.md", "where the results go")
)

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func start(name string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(*binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	return cmd
}

func waitOK(url string) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
	fmt.Fprintln(os.Stderr, "bench: not ready:", url)
	os.Exit(1)
}

// cpuTicks is a process's user and system CPU time in clock ticks
// (/proc/PID/stat fields 14 and 15).
func cpuTicks(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	var u, s float64
	if len(f) > 12 {
		fmt.Sscan(f[11], &u)
		fmt.Sscan(f[12], &s)
	}
	return u + s
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// Linux.
const clockTicks = 100

// measureOnce runs loadgen once and returns its records/s and p99
// latency, and with cpuPID > 0 that process's CPU µs per record.
func measureOnce(i, cpuPID int, args ...string) (rps, p99, cpuUs float64) {
	before := 0.0
	if cpuPID > 0 {
		before = cpuTicks(cpuPID)
	}
	a := append([]string{"-json", "-duration", duration.String(), "-size", fmt.Sprint(*size), "-topic", fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i)}, args...)
	outb, err := exec.Command(filepath.Join(*binDir, "loadgen"), a...).Output()
	var r report
	if err != nil || json.Unmarshal(outb, &r) != nil {
		fmt.Fprintf(os.Stderr, "bench: loadgen %v: %v\n%s\n", a, err, outb)
		os.Exit(1)
	}
	if n := r.Delivered + r.Buffered; cpuPID > 0 && n > 0 {
		cpuUs = (cpuTicks(cpuPID) - before) / clockTicks * 1e6 / float64(n)
	}
	fmt.Fprintf(os.Stderr, "  %v: %.0f records/s, p99 %.1f ms, failed %d, cpu %.2f us/record\n", args, r.RecordsPerSec, r.LatencyMs.P99, r.Failed, cpuUs)
	return r.RecordsPerSec, r.LatencyMs.P99, cpuUs
}

// spec is one measurement of a group.
type spec struct {
	name   string
	args   []string
	cpuPID int // a process whose CPU per record is measured; 0: none
}

// measureGroup runs the specs in turn, -runs rounds, and returns each
// one's median records/s and p99. Taking turns, rather than all runs of
// one then all of the next, keeps a limit and what is held against it
// under the same conditions: these machines drift by 10–30% in minutes.
func measureGroup(specs ...spec) (rps, p99, cpuUs []float64) {
	rs := make([][]float64, len(specs))
	ps := make([][]float64, len(specs))
	cs := make([][]float64, len(specs))
	for i := range *runs {
		for j, sp := range specs {
			fmt.Fprintf(os.Stderr, "%s (run %d)\n", sp.name, i+1)
			r, p, c := measureOnce(i, sp.cpuPID, sp.args...)
			rs[j], ps[j], cs[j] = append(rs[j], r), append(ps[j], p), append(cs[j], c)
		}
	}
	for j := range specs {
		rps, p99, cpuUs = append(rps, median(rs[j])), append(p99, median(ps[j])), append(cpuUs, median(cs[j]))
	}
	return rps, p99, cpuUs
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}

// peakRSS is a process's peak resident memory in MB (VmHWM).
func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb / 1024
		}
	}
	return 0
}

func run() int {
	flag.Parse()
	broker := freeAddr()
	_, port, _ := net.SplitHostPort(broker)
	kafka := start("devkafka", nil, "-port", port)
	defer func() { _ = kafka.Process.Kill() }()
	// freshKafka replaces the broker with an empty one on the same port:
	// kfake keeps every record in memory, and a broker holding millions
	// of them slows down what is measured after them.
	freshKafka := func() {
		_ = kafka.Process.Kill()
		_ = kafka.Wait()
		kafka = start("devkafka", nil, "-port", port)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if c, err := net.Dial("tcp", broker); err == nil {
				_ = c.Close()
				return
			}
		}
	}

	// The answer-only HTTP server: the limit of HTTP on this machine.
	answer := freeAddr()
	go http.ListenAndServe(answer, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = r.Body.Read(make([]byte, 4096))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"outcome":"delivered"}`))
	}))

	var walDir string      // the last ingest's producer.wal.path, with its NATS credentials
	var kafkaListen string // the last ingest's server.kafka.listen
	ingestEnv := func(mode string) (env []string, httpAddr, grpcAddr, monAddr, natsAddr string) {
		h, g, m, n, k := freeAddr(), freeAddr(), freeAddr(), freeAddr(), freeAddr()
		dir, _ := os.MkdirTemp("", "spillway-bench")
		walDir, kafkaListen = dir, k
		return []string{
			"SPILLWAY_KAFKA_BROKERS=" + broker, "SPILLWAY_SERVER_HTTP_LISTEN=" + h, "SPILLWAY_SERVER_GRPC_LISTEN=" + g,
			"SPILLWAY_SERVER_MONITORING_LISTEN=" + m, "SPILLWAY_PRODUCER_WAL_LISTEN=" + n, "SPILLWAY_PRODUCER_WAL_PATH=" + dir,
			"SPILLWAY_PRODUCER_WAL_MODE=" + mode, "SPILLWAY_GLOBAL_LOG_LEVEL=warn", "SPILLWAY_SERVER_KAFKA_LISTEN=" + k,
		}, h, g, m, n
	}
	env, httpAddr, grpcAddr, mon, _ := ingestEnv("fallback")
	ingest := start("spillway-ingest", env)
	waitOK("http://" + mon + "/readyz")

	var rows []row
	// group measures specs in turn; the first is the limit the others are
	// held against (against "" for none). It returns the limit.
	group := func(against string, specs ...spec) float64 {
		rps, p99, cpu := measureGroup(specs...)
		limit := 0.0
		for j, sp := range specs {
			r := row{name: sp.name, rps: rps[j], p99: p99[j], cpuUs: cpu[j]}
			if j > 0 && against != "" {
				r.against, r.limit = against, rps[0]
			}
			rows = append(rows, r)
		}
		if len(rps) > 0 {
			limit = rps[0]
		}
		return limit
	}
	batchedLimit := group("the kafka-go limit",
		spec{name: "kafka-go Writer straight into the broker, batches of 500, 8 callers", args: []string{"-target", "kafka", "-brokers", broker, "-batch", "500", "-concurrency", "8"}},
		spec{name: "ingest, HTTP NDJSON, batches of 500, 8 connections", args: []string{"-target", "ndjson", "-addr", "http://" + httpAddr, "-batch", "500", "-concurrency", "8"}},
		spec{name: "ingest, Confluent v2, batches of 500, 8 connections", args: []string{"-target", "v2", "-addr", "http://" + httpAddr, "-batch", "500", "-concurrency", "8"}},
		spec{name: "ingest, gRPC stream, batches of 500, 4 streams × 4 in flight", args: []string{"-target", "grpc-stream", "-addr", grpcAddr, "-batch", "500", "-concurrency", "4", "-window", "4"}},
	)
	freshKafka()
	_ = exec.Command(filepath.Join(*binDir, "loadgen"), "-target", "http", "-addr", "http://"+httpAddr, "-count", "200", "-concurrency", "8", "-topic", "warm-up").Run()
	// The Kafka listener: the same client, kgo with its defaults
	// (idempotent, acks all), straight into the broker and through the
	// ingest's listener; 8 callers of 500 records each.
	group("kgo straight into the broker",
		spec{name: "kgo straight into the broker, batches of 500, 8 callers", args: []string{"-target", "kgo", "-brokers", broker, "-batch", "500", "-concurrency", "8"}},
		spec{name: "ingest, Kafka listener, kgo batches of 500, 8 callers", args: []string{"-target", "kgo", "-brokers", kafkaListen, "-create-topics-on", broker, "-batch", "500", "-concurrency", "8"}, cpuPID: ingest.Process.Pid},
	)
	for _, c := range []string{"64", "256"} {
		freshKafka()
		// The ingest finds the new broker on its next produce; a few
		// records first, so that the measurement starts warm.
		_ = exec.Command(filepath.Join(*binDir, "loadgen"), "-target", "http", "-addr", "http://"+httpAddr, "-count", "200", "-concurrency", "8", "-topic", "warm-up").Run()
		group("the answer-only server",
			spec{name: "answer-only HTTP server, single records, " + c + " connections", args: []string{"-target", "http", "-addr", "http://" + answer, "-concurrency", c}},
			spec{name: "ingest, HTTP single records, " + c + " connections", args: []string{"-target", "http", "-addr", "http://" + httpAddr, "-concurrency", c}},
		)
	}
	rows[len(rows)-1].rssMB = peakRSS(ingest.Process.Pid)
	_ = ingest.Process.Signal(os.Interrupt)
	_ = ingest.Wait()

	// The spill path: Kafka unreachable for the ingest and its breaker
	// open, every record is published to JetStream; against a direct
	// JetStream async publish into the same server.
	deadKafka := freeAddr()
	env, httpAddr, _, mon, natsAddr := ingestEnv("fallback")
	env = append(env, "SPILLWAY_KAFKA_BROKERS="+deadKafka, "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1h",
		"SPILLWAY_PRODUCER_WAL_MAX_BYTES=8589934592")
	ingest = start("spillway-ingest", env)
	waitOK("http://" + mon + "/readyz")
	group("direct JetStream publish",
		spec{name: "JetStream async publish straight into the ingest's embedded server, batches of 500, 8 callers", args: []string{"-target", "jetstream", "-addr", "nats://" + natsAddr, "-nats-credentials", filepath.Join(walDir, "nats-user.nk"), "-batch", "500", "-concurrency", "8"}},
		spec{name: "ingest, spill to JetStream (breaker open), NDJSON batches of 500, 8 connections", args: []string{"-target", "ndjson", "-addr", "http://" + httpAddr, "-batch", "500", "-concurrency", "8"}},
	)
	rows[len(rows)-1].rssMB = peakRSS(ingest.Process.Pid)

	// The resender, draining what was spilled into the broker: at a
	// configured rate, then without a limit.
	const rate = 20000
	achieved := drainRate(broker, natsAddr, walDir, rate)
	rows = append(rows, row{name: fmt.Sprintf("resender at a configured %d records/s (achieved over 4 s)", rate), against: "the configured rate", rps: achieved, limit: rate})
	unlimited := drainRate(broker, natsAddr, walDir, 0)
	rows = append(rows, row{name: "resender without a rate limit (over 4 s)", against: "the kafka-go limit", rps: unlimited, limit: batchedLimit})
	_ = ingest.Process.Signal(os.Interrupt)
	_ = ingest.Wait()

	env, httpAddr, _, mon, _ = ingestEnv("always")
	ingest = start("spillway-ingest", env)
	waitOK("http://" + mon + "/readyz")
	group("", spec{name: "ingest, write-ahead to JetStream (mode always), NDJSON batches of 500, 8 connections", args: []string{"-target", "ndjson", "-addr", "http://" + httpAddr, "-batch", "500", "-concurrency", "8"}})
	rows[len(rows)-1].rssMB = peakRSS(ingest.Process.Pid)
	_ = ingest.Process.Signal(os.Interrupt)
	_ = ingest.Wait()

	var b bytes.Buffer
	host, _ := os.Hostname()
	goVersion, _ := exec.Command("go", "version").Output()
	fmt.Fprintf(&b, "Measured by `make bench` (`bin/bench -runs %d -duration %v -size %d`) on %s, %s: %d cores, %s, %s.\n",
		*runs, *duration, *size, time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), memTotal(), strings.TrimSpace(string(goVersion)))
	fmt.Fprintf(&b, "The broker (kfake), the services and the load generator share the cores. Each figure is the median of %d runs, taken in turns with the limit it is compared with, because these shared machines drift by 10–30%% within minutes: compare within one table.\n\n", *runs)
	fmt.Fprintln(&b, "| measurement | records/s | p99 ms | ratio | peak RSS MB | ingest CPU µs/record |")
	fmt.Fprintln(&b, "| --- | ---: | ---: | --- | ---: | ---: |")
	for _, r := range rows {
		ratio := ""
		if r.limit > 0 {
			ratio = fmt.Sprintf("%.2f of %s", r.rps/r.limit, r.against)
		}
		rss := ""
		if r.rssMB > 0 {
			rss = fmt.Sprintf("%.0f", r.rssMB)
		}
		p99 := ""
		if r.p99 > 0 {
			p99 = fmt.Sprintf("%.1f", r.p99)
		}
		cpu := ""
		if r.cpuUs > 0 {
			cpu = fmt.Sprintf("%.2f", r.cpuUs)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %s |\n", r.name, r.rps, p99, ratio, rss, cpu)
	}
	if err := writeTable(*out, b.Bytes()); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	os.Stdout.Write(b.Bytes())
	return 0
}

// drainRate runs a resender against the spilled records in the JetStream at
// natsAddr (the ingest's, storing under walDir, where its credentials
// are), and returns the records it delivered per second between its first
// and fifth second. rate 0 is no limit.
func drainRate(broker, natsAddr, walDir string, rate int) float64 {
	mon := freeAddr()
	r := start("spillway-resender", []string{"SPILLWAY_KAFKA_BROKERS=" + broker, "SPILLWAY_PRODUCER_WAL_LISTEN=" + natsAddr, "SPILLWAY_PRODUCER_WAL_PATH=" + walDir,
		"SPILLWAY_RESEND_MONITORING_LISTEN=" + mon, "SPILLWAY_PRODUCER_RESEND_PERIOD=100ms",
		fmt.Sprintf("SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=%d", rate), "SPILLWAY_GLOBAL_LOG_LEVEL=warn"})
	defer func() { _ = r.Process.Signal(os.Interrupt); _ = r.Wait() }()
	waitOK("http://" + mon + "/readyz")
	time.Sleep(time.Second) // past the first round's start
	c1, t1 := drained(mon), time.Now()
	time.Sleep(4 * time.Second)
	c2, t2 := drained(mon), time.Now()
	fmt.Fprintf(os.Stderr, "resender (rate %d): %.0f records in %.1fs\n", rate, c2-c1, t2.Sub(t1).Seconds())
	return (c2 - c1) / t2.Sub(t1).Seconds()
}

// drained sums spillway_records_drained_total from a monitoring port.
func drained(mon string) float64 {
	resp, err := http.Get("http://" + mon + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	total := 0.0
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, "spillway_records_drained_total{") {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			total += v
		}
	}
	return total
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return fmt.Sprintf("%.0f GiB memory", kb/1024/1024)
		}
	}
	return "memory unknown"
}

// The table goes between these markers in the output file; the prose
// around it is kept.
const (
	startMarker = "<!-- bench:start -->"
	endMarker   = "<!-- bench:end -->"
)

func writeTable(path string, table []byte) error {
	doc, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	before, after := "# Benchmarks\n\n", "\n"
	if i, j := bytes.Index(doc, []byte(startMarker)), bytes.Index(doc, []byte(endMarker)); i >= 0 && j > i {
		before, after = string(doc[:i]), string(doc[j+len(endMarker):])
	}
	return os.WriteFile(path, []byte(before+startMarker+"\n"+string(table)+endMarker+after), 0o644)
}
