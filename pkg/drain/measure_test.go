package drain

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
)

// TestMeasureResend measures the resender without a rate limit against a
// bare pipe (issue 17): a JetStream pull consumer fetching batches of 500,
// one synchronous kafka-go batch write with acks all, then the acks. As in
// a deployment, the mover (the Drainer, or the bare pipe) runs in this
// process, and its peers (an embedded JetStream, a kfake broker) in a
// child process of their own, new for each run and given the same spilled
// records. The runs alternate; the medians of records/s, of the mover's
// CPU µs per record (getrusage) and of the peers' (/proc/PID/stat) are
// printed. It is skipped unless SPILLWAY_MEASURE names the records per
// run:
//
//	SPILLWAY_MEASURE=200000 GOGC=400 go test -count=1 -run 'TestMeasureResend$' -v ./pkg/drain/
//
// GOGC=400 is what the services set for themselves (config.TuneRuntime);
// the peers keep Go's defaults. SPILLWAY_MEASURE_RUNS sets the runs per
// pipe (3); with SPILLWAY_MEASURE_PROFILE naming a folder, the mover's
// CPU profile of the last run of each pipe is written there. Each run fails the test
// unless every record reached Kafka and left the stream; no timing is
// asserted.
func TestMeasureResend(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SPILLWAY_MEASURE"))
	if n <= 0 {
		t.Skip("set SPILLWAY_MEASURE to the records per run to measure")
	}
	runs := 3
	if s, err := strconv.Atoi(os.Getenv("SPILLWAY_MEASURE_RUNS")); err == nil && s > 0 {
		runs = s
	}
	pipes := []struct {
		name string
		run  func(t *testing.T, e *env, addr string, n int) (stop func())
	}{
		{"bare pipe", runBarePipe},
		{"resender without a limit", runResender},
		{"ordered resender, no limit", runOrderedResender},
	}
	type figures struct{ rps, mover, peers []float64 }
	got := make([]figures, len(pipes))
	for range runs {
		for i, p := range pipes {
			r, m, ps := measureOnce(t, n, p.run, fmt.Sprintf("drain-%d", i))
			t.Logf("%-26s %8.0f records/s, CPU µs/record: mover %5.2f, peers %5.2f", p.name, r, m, ps)
			got[i].rps, got[i].mover, got[i].peers = append(got[i].rps, r), append(got[i].mover, m), append(got[i].peers, ps)
		}
	}
	for i, p := range pipes {
		t.Logf("median of %d: %-26s %8.0f records/s (%.2f of the bare pipe), CPU µs/record: mover %5.2f, peers %5.2f",
			runs, p.name, median(got[i].rps), median(got[i].rps)/median(got[0].rps), median(got[i].mover), median(got[i].peers))
	}
}

// TestMeasurePeers is TestMeasureResend's child process, not a test: it
// runs a kfake broker and an embedded JetStream storing under
// SPILLWAY_MEASURE_PEERS, writes their addresses to the file "peers"
// there, and runs until its standard input ends.
func TestMeasurePeers(t *testing.T) {
	dir := os.Getenv("SPILLWAY_MEASURE_PEERS")
	if dir == "" {
		t.Skip("the child process of TestMeasureResend")
	}
	_, addr := kafkatest.NewCluster(t)
	wal := measureWAL(t, dir, "127.0.0.1:0")
	srv, err := embeddednats.Start(wal, discard)
	require.NoError(t, err)
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	natsAddr := strings.TrimPrefix(srv.ClientURL(), "nats://")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "peers.tmp"), []byte(addr+" "+natsAddr+"\n"), 0o600))
	require.NoError(t, os.Rename(filepath.Join(dir, "peers.tmp"), filepath.Join(dir, "peers")))
	_, _ = io.Copy(io.Discard, os.Stdin)
}

func measureWAL(t *testing.T, dir, listen string) config.WAL {
	t.Helper()
	cfg, err := config.Parse(nil, []string{"SPILLWAY_PRODUCER_WAL_PATH=" + dir, "SPILLWAY_PRODUCER_WAL_LISTEN=" + listen})
	require.NoError(t, err)
	return cfg.Producer.WAL
}

// startPeers starts TestMeasurePeers in a child process and returns the
// broker's and the NATS server's addresses and the child's pid. The child
// ends with the test.
func startPeers(t *testing.T, dir string) (kafkaAddr, natsAddr string, pid int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMeasurePeers$", "-test.count=1")
	// The peers run with Go's defaults, whatever GOGC the mover is given.
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, "GOGC=") }),
		"SPILLWAY_MEASURE_PEERS="+dir, "SPILLWAY_MEASURE=")
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	var peers []byte
	require.Eventually(t, func() bool {
		peers, err = os.ReadFile(filepath.Join(dir, "peers"))
		return err == nil
	}, 30*time.Second, 10*time.Millisecond, "the peers start")
	f := strings.Fields(string(peers))
	require.Len(t, f, 2)
	return f[0], f[1], cmd.Process.Pid
}

// measureOnce spills n records into new peers, then times run draining
// them: the wall time and the CPU of this process and of the peers until
// the stream is empty.
func measureOnce(t *testing.T, n int, run func(t *testing.T, e *env, addr string, n int) (stop func()), name string) (recordsPerSec, moverMicros, peersMicros float64) {
	var rps, mover, peers float64
	t.Run("run", func(t *testing.T) {
		dir := t.TempDir()
		addr, natsAddr, pid := startPeers(t, dir)
		cfg, err := config.Parse(nil, []string{"SPILLWAY_KAFKA_BROKERS=" + addr, "SPILLWAY_PRODUCER_WAL_PATH=" + dir,
			"SPILLWAY_PRODUCER_WAL_LISTEN=" + natsAddr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=10000"})
		require.NoError(t, err)
		nc, js, err := spill.Connect(t.Context(), cfg.Producer.WAL, nil, "measure", discard)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		reg := prometheus.NewRegistry()
		e := &env{cfg: cfg, js: js, buffer: spill.NewBuffer(js, cfg.Producer.WAL), metrics: NewMetrics(reg, 100), reg: reg}
		spillBench(t, e, n)

		if dir := os.Getenv("SPILLWAY_MEASURE_PROFILE"); dir != "" {
			f, err := os.Create(filepath.Join(dir, name+".prof"))
			require.NoError(t, err)
			require.NoError(t, pprof.StartCPUProfile(f))
			defer f.Close()
		}
		start, cpu0, peers0 := time.Now(), cpuTime(), procCPU(t, pid)
		stop := run(t, e, addr, n)
		s, err := e.js.Stream(t.Context(), cfg.Producer.WAL.Stream)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			info, err := s.Info(t.Context())
			return err == nil && info.State.Msgs == 0
		}, 5*time.Minute, 5*time.Millisecond, "every record acknowledged leaves the stream")
		elapsed, used, peersUsed := time.Since(start), cpuTime()-cpu0, procCPU(t, pid)-peers0
		pprof.StopCPUProfile()
		// Stopped after the clock: the ordered drain's fetcher waits out
		// its idle long poll (up to a second) on its way out, which is no
		// part of the drain's pace.
		stop()
		rps = float64(n) / elapsed.Seconds()
		mover = float64(used.Microseconds()) / float64(n)
		peers = float64(peersUsed.Microseconds()) / float64(n)
		require.Len(t, kafkatest.Consume(t, addr, "bench", n, time.Minute), n)
	})
	return rps, mover, peers
}

// spillBench spills n records of 100 bytes, as the ingest does when Kafka
// is unreachable: a ULID-sized id and a timestamp.
func spillBench(t *testing.T, e *env, n int) {
	t.Helper()
	value := make([]byte, 100)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	ts := time.Now()
	for start := 0; start < n; start += 500 {
		recs := make([]record.Record, min(500, n-start))
		for i := range recs {
			recs[i] = record.Record{ID: fmt.Sprintf("01JBENCH%018d", start+i), Topic: "bench", Value: value, Timestamp: ts, Partition: record.AnyPartition}
		}
		for _, r := range e.buffer.Publish(t.Context(), spill.Spilled, recs, "breaker_open") {
			require.Equal(t, record.Buffered, r.Outcome, r.Err)
		}
	}
}

// runResender runs the resender's Drainer as the service does (the
// defaults, a period of 100 ms, no rate limit) until n records are drained.
func runResender(t *testing.T, e *env, _ string, n int) (stop func()) {
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	d, err := New(t.Context(), Options{
		JS: e.js, WAL: e.cfg.Producer.WAL, Kind: Resender.Kind, Consumer: Resender.Name, Producer: p,
		Period: 100 * time.Millisecond, Breaker: e.cfg.Producer.CB, Metrics: e.metrics, Logger: discard,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(e.metrics.drained.WithLabelValues(Resender.Name, "bench")) == float64(n)
	}, 5*time.Minute, 5*time.Millisecond)
	return func() { cancel(); <-done; _ = p.Close() }
}

// runOrderedResender is runResender with producer.order partition.
func runOrderedResender(t *testing.T, e *env, _ string, n int) (stop func()) {
	p, err := producer.New(e.cfg.Kafka, discard)
	require.NoError(t, err)
	d, err := New(t.Context(), Options{
		JS: e.js, WAL: e.cfg.Producer.WAL, Kind: Resender.Kind, Consumer: Resender.Name, Producer: p,
		Breaker: e.cfg.Producer.CB, Metrics: e.metrics, Logger: discard, Ordered: true, Holder: "measure",
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(e.metrics.drained.WithLabelValues(Resender.Name, "bench")) == float64(n)
	}, 5*time.Minute, 5*time.Millisecond)
	return func() { cancel(); <-done; _ = p.Close() }
}

// runBarePipe is the least a drain from JetStream to Kafka does, as
// bench -pipe (tools/bench/serve.go) does it: fetch 500, decode them,
// write them in one synchronous kafka-go call with acks all, ack each
// message.
func runBarePipe(t *testing.T, e *env, addr string, n int) (stop func()) {
	ctx := t.Context()
	s, err := e.js.Stream(ctx, e.cfg.Producer.WAL.Stream)
	require.NoError(t, err)
	c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "bare", FilterSubject: spill.Subjects{Prefix: e.cfg.Producer.WAL.SubjectPrefix}.All(spill.Spilled),
		AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1000,
	})
	require.NoError(t, err)
	w := &kafka.Writer{Addr: kafka.TCP(addr), Balancer: kafka.Murmur2Balancer{}, BatchSize: 500, BatchTimeout: time.Millisecond,
		RequiredAcks: kafka.RequireAll, AllowAutoTopicCreation: true, MaxAttempts: 3, Transport: &kafka.Transport{MetadataTTL: time.Second}}
	msgs := make([]jetstream.Msg, 0, 500)
	kms := make([]kafka.Message, 0, 500)
	for done := 0; done < n; {
		batch, err := c.Fetch(500, jetstream.FetchMaxWait(time.Second))
		require.NoError(t, err)
		msgs, kms = msgs[:0], kms[:0]
		for m := range batch.Messages() {
			r, err := spill.Decode(m.Data())
			require.NoError(t, err)
			km := kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value, Time: r.Timestamp,
				Headers: []kafka.Header{{Key: record.IDHeader, Value: []byte(r.ID)}}}
			for _, h := range r.Headers {
				km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
			}
			msgs, kms = append(msgs, m), append(kms, km)
		}
		if len(kms) == 0 {
			continue
		}
		require.NoError(t, w.WriteMessages(ctx, kms...))
		for _, m := range msgs {
			require.NoError(t, m.Ack())
		}
		done += len(msgs)
	}
	return func() { _ = w.Close() }
}

// cpuTime is the CPU this process used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU process pid used, user and system, from
// /proc/PID/stat, in clock ticks of 10 ms.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(t, err)
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	require.NoError(t, err)
	fields := strings.Fields(line[strings.LastIndexByte(line, ')')+2:]) // fields from the third (state) on
	utime, err := strconv.ParseInt(fields[11], 10, 64)
	require.NoError(t, err)
	stime, err := strconv.ParseInt(fields[12], 10, 64)
	require.NoError(t, err)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
