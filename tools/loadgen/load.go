package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Rec is one record of the load.
type Rec struct {
	Seq   int64
	Topic string
	Key   []byte
	Value []byte
}

// Result is what a request's records became.
type Result struct {
	Delivered []int64 // the sequence numbers answered delivered
	Buffered  []int64 // … and buffered
	Failed    int
	Err       string // a failure's class: "http 503", "grpc Unavailable", "connection"
}

// Sender sends one request of records. Implementations are safe for
// concurrent use; worker says which connection or stream to use.
type Sender interface {
	Send(ctx context.Context, worker int, recs []Rec) Result
	Close()
}

// Report is the final report.
type Report struct {
	Target        string         `json:"target"`
	RunID         string         `json:"run_id"`
	Records       int64          `json:"records"`
	Requests      int64          `json:"requests"`
	Delivered     int64          `json:"delivered"`
	Buffered      int64          `json:"buffered"`
	Failed        int64          `json:"failed"`
	Errors        map[string]int `json:"errors,omitempty"`
	Seconds       float64        `json:"seconds"`
	RecordsPerSec float64        `json:"records_per_second"`
	MBPerSec      float64        `json:"mb_per_second"`
	LatencyMs     Latency        `json:"latency_ms"`
	// CPUSeconds is the load generator's own CPU time (user and system)
	// while it sent: what a direct client costs, for the targets that
	// write straight into Kafka or JetStream.
	CPUSeconds float64       `json:"cpu_seconds"`
	Verify     *Verification `json:"verify,omitempty"`
	acked      []int64
	ackedSet   map[int64]bool
}

// Latency are request latency percentiles, in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// Acknowledged is the set of sequence numbers answered delivered or
// buffered.
func (r *Report) Acknowledged() map[int64]bool {
	if r.ackedSet == nil {
		r.ackedSet = make(map[int64]bool, len(r.acked))
		for _, s := range r.acked {
			r.ackedSet[s] = true
		}
	}
	return r.ackedSet
}

// Print writes the report for a person.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "target %s: %d records in %d requests over %.1fs\n", r.Target, r.Records, r.Requests, r.Seconds)
	fmt.Fprintf(w, "  %.0f records/s, %.2f MB/s\n", r.RecordsPerSec, r.MBPerSec)
	fmt.Fprintf(w, "  latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", r.LatencyMs.P50, r.LatencyMs.P90, r.LatencyMs.P99, r.LatencyMs.P999, r.LatencyMs.Max)
	fmt.Fprintf(w, "  delivered %d, buffered %d, failed %d\n", r.Delivered, r.Buffered, r.Failed)
	for e, n := range r.Errors {
		fmt.Fprintf(w, "  error %s: %d\n", e, n)
	}
	if v := r.Verify; v != nil {
		fmt.Fprintf(w, "  verify: %d acknowledged, %d found in Kafka, %d missing, %d duplicates\n", v.Acknowledged, v.Found, v.Missing, v.Duplicates)
	}
}

// worker holds one goroutine's counts; merged at the end.
type worker struct {
	mu       sync.Mutex
	hist     *hdrhistogram.Histogram
	requests int64
	records  int64
	failed   int64
	dlv, buf int64
	acked    []int64
	errors   map[string]int
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 120_000_000, 3) } // µs, up to 2 minutes

// Run sends the load and returns the report. Progress goes to progress
// once a second when it is a terminal.
func Run(ctx context.Context, o Options, s Sender, progress *os.File) (*Report, error) {
	if o.Batch < 1 || o.Concurrency < 1 || o.Size < 1 {
		return nil, fmt.Errorf("-batch, -concurrency and -size must be at least 1")
	}
	l, err := newLoad(o)
	if err != nil {
		return nil, err
	}
	topics, runID := l.topics, l.runID

	var cancel context.CancelFunc
	ctx, cancel = l.context(ctx)
	defer cancel()
	cpuStart := cpuSeconds()

	goroutines := o.Concurrency
	if o.Target == "grpc-stream" {
		goroutines *= o.Window
	}
	// Open loop: a pacer hands out scheduled start times; latency counts
	// from them, so a slow server is not hidden by fewer requests.
	var tickets chan time.Time
	if o.Rate > 0 {
		tickets = make(chan time.Time, goroutines)
		interval := time.Duration(float64(time.Second) * float64(o.Batch) / o.Rate)
		go func() {
			defer close(tickets)
			next := time.Now()
			for ctx.Err() == nil {
				select {
				case tickets <- next:
				case <-ctx.Done():
					return
				}
				next = next.Add(interval)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
		}()
	}

	var seq atomic.Int64
	workers := make([]*worker, goroutines)
	var wg sync.WaitGroup
	start := time.Now()
	for g := range goroutines {
		w := &worker{hist: newHist(), errors: map[string]int{}}
		workers[g] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), uint64(start.UnixNano())))
			conn := g % o.Concurrency
			recs := make([]Rec, o.Batch)
			for {
				scheduled := time.Now()
				if tickets != nil {
					t, ok := <-tickets
					if !ok {
						return
					}
					scheduled = t
				} else if ctx.Err() != nil {
					return
				}
				first := seq.Add(int64(o.Batch)) - int64(o.Batch)
				n := o.Batch
				if o.Count > 0 {
					if first >= o.Count {
						cancel()
						return
					}
					n = int(min(int64(o.Batch), o.Count-first))
				}
				topic := topics[int(first/int64(o.Batch))%len(topics)]
				for i := range n {
					value := l.value(first + int64(i))
					var key []byte
					if o.Keys > 0 {
						key = fmt.Appendf(nil, "key-%d", rng.IntN(o.Keys))
					}
					recs[i] = Rec{Seq: first + int64(i), Topic: topic, Key: key, Value: value}
				}
				res := s.Send(context.WithoutCancel(ctx), conn, recs[:n])
				elapsed := time.Since(scheduled)
				w.mu.Lock()
				_ = w.hist.RecordValue(max(1, elapsed.Microseconds()))
				w.requests++
				w.records += int64(n)
				w.dlv += int64(len(res.Delivered))
				w.buf += int64(len(res.Buffered))
				w.acked = append(w.acked, res.Delivered...)
				w.acked = append(w.acked, res.Buffered...)
				w.failed += int64(res.Failed)
				if res.Err != "" {
					w.errors[res.Err]++
				}
				w.mu.Unlock()
			}
		}()
	}

	done := make(chan struct{})
	if fi, err := progress.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		go showProgress(done, workers, start, progress)
	}
	wg.Wait()
	close(done)
	elapsed := time.Since(start).Seconds()

	rep := &Report{Target: o.Target, RunID: runID, Errors: map[string]int{}, Seconds: elapsed, CPUSeconds: cpuSeconds() - cpuStart}
	hist := newHist()
	for _, w := range workers {
		hist.Merge(w.hist)
		rep.Requests += w.requests
		rep.Records += w.records
		rep.Delivered += w.dlv
		rep.Buffered += w.buf
		rep.Failed += w.failed
		rep.acked = append(rep.acked, w.acked...)
		for e, n := range w.errors {
			rep.Errors[e] += n
		}
	}
	rep.RecordsPerSec = float64(rep.Delivered+rep.Buffered) / elapsed
	rep.MBPerSec = rep.RecordsPerSec * float64(o.Size) / 1e6
	ms := func(q float64) float64 { return float64(hist.ValueAtQuantile(q)) / 1000 }
	rep.LatencyMs = Latency{P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(99.9), Max: float64(hist.Max()) / 1000}
	return rep, nil
}

// load is what every target shares: the run's id, the topics, and how a
// record's value is made.
type load struct {
	o       Options
	runID   string
	topics  []string
	padding string
}

func newLoad(o Options) (*load, error) {
	runID := strconv.FormatInt(time.Now().UnixNano()%1e12, 36)
	idLen := len(runID) + 1 + 12
	if o.Size < idLen {
		return nil, fmt.Errorf("-size must be at least %d bytes to hold the record id", idLen)
	}
	topics := make([]string, max(o.Topics, 1))
	for i := range topics {
		topics[i] = o.Topic
		if o.Topics > 1 {
			topics[i] = fmt.Sprintf("%s-%d", o.Topic, i)
		}
	}
	return &load{o: o, runID: runID, topics: topics, padding: strings.Repeat("x", o.Size)}, nil
}

// context ends the load: after -count records (the caller cancels), or
// after -duration.
func (l *load) context(ctx context.Context) (context.Context, context.CancelFunc) {
	if l.o.Count > 0 {
		return context.WithCancel(ctx) // -count wins over -duration
	}
	return context.WithTimeout(ctx, l.o.Duration)
}

// value is record seq's value: its id (RUNID-SEQ), a space, and padding up
// to -size bytes.
func (l *load) value(seq int64) []byte {
	id := fmt.Sprintf("%s-%012d", l.runID, seq)
	value := make([]byte, l.o.Size)
	copy(value, id)
	copy(value[len(id):], l.padding)
	value[len(id)] = ' '
	return value
}

// cpuSeconds is this process's CPU time so far, user and system (the
// counters /proc/self/stat shows, at a finer grain).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func showProgress(done <-chan struct{}, workers []*worker, start time.Time, out *os.File) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			fmt.Fprintln(out)
			return
		case <-t.C:
		}
		hist := newHist()
		var ok, failed int64
		for _, w := range workers {
			w.mu.Lock()
			hist.Merge(w.hist)
			ok += w.dlv + w.buf
			failed += w.failed
			w.mu.Unlock()
		}
		fmt.Fprintf(out, "\r%6.1fs  %9.0f records/s  errors %d  p99 %.2f ms   ", time.Since(start).Seconds(),
			float64(ok)/time.Since(start).Seconds(), failed, float64(hist.ValueAtQuantile(99))/1000)
	}
}
