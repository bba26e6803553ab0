package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// result is one run of one measurement.
type result struct {
	rps, p99ms float64
	acked      float64 // records acknowledged
	// moverUs and brokerUs are CPU µs per acknowledged record of the
	// process that moved the records and of the broker; 0: not measured.
	moverUs, brokerUs float64
	// failed says why the run cannot be reported ("" when it can): a
	// record or an answer failed, or an acknowledgement is missing.
	failed string
}

// spec is one measurement of a group: measure runs it once (run i).
type spec struct {
	name    string
	key     string // names the row in the table and for the targets' summary
	measure func(i int) result
}

func (s spec) as(key string) spec { s.key = key; return s }

// loadgenReport is what bench reads of loadgen's -json report.
type loadgenReport struct {
	Records       int64          `json:"records"`
	RecordsPerSec float64        `json:"records_per_second"`
	Failed        int64          `json:"failed"`
	Delivered     int64          `json:"delivered"`
	Buffered      int64          `json:"buffered"`
	Errors        map[string]int `json:"errors"`
	CPUSeconds    float64        `json:"cpu_seconds"`
	LatencyMs     struct {
		P99 float64 `json:"p99"`
	} `json:"latency_ms"`
}

// pidOf names a process whose CPU a measurement reads; it is asked at the
// start of each run, because the broker is replaced between groups. nil,
// or a result of 0: none.
type pidOf func() int

// moverSelf is the mover of the direct-client rows: the load generator
// itself, which reports its own CPU over its load.
var moverSelf pidOf = func() int { return -1 }

func pids(fs ...pidOf) []int {
	var out []int
	for _, f := range fs {
		if f != nil {
			out = append(out, f())
		}
	}
	return out
}

// loadgen is a measurement by tools/loadgen with args (-duration and
// -size added, and a fresh topic per run), with the CPU of mover and
// broker over the run.
func loadgen(mover, broker pidOf, args ...string) func(int) result {
	return func(i int) result {
		ps := pids(mover, broker)
		a := append([]string{"-json", "-duration", duration.String(), "-size", fmt.Sprint(*size), "-topic", fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i)}, args...)
		before := markCPU(ps...)
		out, err := runTool(filepath.Join(*binDir, "loadgen"), a...)
		after := markCPU(ps...)
		var r loadgenReport
		if err != nil || json.Unmarshal(out, &r) != nil {
			fatal("loadgen %v: %v\n%s", a, err, out)
		}
		acked := float64(r.Delivered + r.Buffered)
		res := result{rps: r.RecordsPerSec, p99ms: r.LatencyMs.P99, acked: acked}
		if mover != nil {
			if p := mover(); p < 0 {
				if acked > 0 {
					res.moverUs = r.CPUSeconds * 1e6 / acked
				}
			} else {
				res.moverUs = usPer(before, after, p, acked)
			}
		}
		if broker != nil {
			res.brokerUs = usPer(before, after, broker(), acked)
		}
		if r.Failed > 0 || len(r.Errors) > 0 {
			var errs []string
			for _, e := range slices.Sorted(maps.Keys(r.Errors)) {
				errs = append(errs, fmt.Sprintf("%s: %d", e, r.Errors[e]))
			}
			res.failed = fmt.Sprintf("%d of %d records failed (%s)", r.Failed, r.Records, strings.Join(errs, ", "))
		}
		return res
	}
}

// via fails a run of the ingest in which it buffered records in
// JetStream (its breaker open, or Kafka slow) instead of delivering them
// to Kafka: the row would measure another path. mon is the ingest's
// monitoring address.
func (sp spec) via(mon string) spec {
	measure := sp.measure
	sp.measure = func(i int) result {
		before := bufferedByReason(mon)
		r := measure(i)
		after := bufferedByReason(mon)
		var why []string
		for _, reason := range slices.Sorted(maps.Keys(after)) {
			if n := after[reason] - before[reason]; n > 0 {
				why = append(why, fmt.Sprintf("%.0f %s", n, reason))
			}
		}
		if len(why) > 0 && r.failed == "" {
			r.failed = "records buffered in JetStream instead of Kafka: " + strings.Join(why, ", ")
		}
		return r
	}
	return sp
}

// runTool runs a load generator to its end and returns its standard
// output; its standard error goes to bench's.
func runTool(path string, args ...string) ([]byte, error) {
	cmd := exec.Command(path, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := track(cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	untrack(cmd)
	return []byte(out.String()), err
}

// measured is a spec's runs reduced to medians.
type measured struct {
	rps, p99ms, moverUs, brokerUs float64
	failed                        string // the first failed run's reason; "": none
}

// measureGroup runs the specs in turn, -runs rounds, and returns each
// one's medians. Taking turns, rather than all runs of one then all of
// the next, keeps a limit and what is held against it under the same
// conditions: these machines drift by 10–30% in minutes.
func measureGroup(specs ...spec) []measured {
	began := time.Now()
	defer func() { fmt.Fprintf(os.Stderr, "  (group: %s)\n", time.Since(began).Round(time.Second)) }()
	all := make([][]result, len(specs))
	for i := range *runs {
		for j, sp := range specs {
			fmt.Fprintf(os.Stderr, "%s (run %d)\n", sp.name, i+1)
			r := sp.measure(i)
			fmt.Fprintf(os.Stderr, "  %.0f records/s, p99 %.1f ms, CPU µs/record: mover %.2f, broker %.2f", r.rps, r.p99ms, r.moverUs, r.brokerUs)
			if r.failed != "" {
				fmt.Fprintf(os.Stderr, "; FAILED: %s", r.failed)
			}
			fmt.Fprintln(os.Stderr)
			all[j] = append(all[j], r)
		}
	}
	out := make([]measured, len(specs))
	for j, rs := range all {
		pick := func(f func(result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return median(v)
		}
		out[j] = measured{
			rps:      pick(func(r result) float64 { return r.rps }),
			p99ms:    pick(func(r result) float64 { return r.p99ms }),
			moverUs:  pick(func(r result) float64 { return r.moverUs }),
			brokerUs: pick(func(r result) float64 { return r.brokerUs }),
		}
		for _, r := range rs {
			if r.failed != "" {
				out[j].failed = r.failed
				break
			}
		}
	}
	return out
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}
