package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// row is one line of the table.
type row struct {
	name, key string
	m         measured
	// against names the limit the row is held against, limit is it; nil:
	// none. cpuRatio says whether the two CPU per record compare (the
	// same work in two processes).
	against  string
	limit    *measured
	cpuRatio bool
	rssMB    float64
}

type table struct{ rows []*row }

// group measures specs in turn; the first is the limit the others are
// held against (against "" for none).
func (t *table) group(against string, cpuRatio bool, specs ...spec) {
	ms := measureGroup(specs...)
	for j, sp := range specs {
		r := &row{name: sp.name, key: sp.key, m: ms[j]}
		if j > 0 && against != "" {
			r.against, r.limit, r.cpuRatio = against, &ms[0], cpuRatio
		}
		t.rows = append(t.rows, r)
	}
}

func (t *table) last() *row { return t.rows[len(t.rows)-1] }

func (t *table) find(key string) *row {
	for _, r := range t.rows {
		if r.key == key && r.m.failed == "" {
			return r
		}
	}
	return nil
}

// failed lists the rows not reported, with why.
func (t *table) failed() []string {
	var out []string
	for _, r := range t.rows {
		if r.m.failed != "" {
			out = append(out, r.name+": "+r.m.failed)
		}
	}
	return out
}

func num(v float64, format string) string {
	if v <= 0 {
		return ""
	}
	return fmt.Sprintf(format, v)
}

// render is the generated part of docs/benchmarks.md: how it was run,
// the table, and the targets of issue 17 computed from it.
func (t *table) render() []byte {
	var b bytes.Buffer
	host, _ := os.Hostname()
	goVersion, _ := exec.Command("go", "version").Output()
	single := "loadgen"
	if wrkPath != "" {
		single = "wrk (2 threads, a Lua script for the body)"
	}
	fmt.Fprintf(&b, "Measured by `make bench` (`bin/bench -runs %d -duration %v -size %d`) on %s at commit %s, %s: %d cores, %s, %s. Single-record HTTP load: %s.\n\n",
		*runs, *duration, *size, time.Now().UTC().Format("2006-01-02"), commit(), host, runtime.NumCPU(), memTotal(), strings.TrimSpace(string(goVersion)), single)
	// A row is named by its key, and the key's measurement is in the list
	// under the table, so that a line of the table stays within a
	// screen's width (docs' TestTableWidth holds it to 120 bytes).
	fmt.Fprintln(&b, "| row | records/s | p99 ms | ratio | mover CPU µs/record | broker CPU µs/record | peak RSS MB |")
	fmt.Fprintln(&b, "| --- | ---: | ---: | --- | ---: | ---: | ---: |")
	for _, r := range t.rows {
		if r.m.failed != "" {
			fmt.Fprintf(&b, "| `%s` | not reported |  | %s |  |  |  |\n", r.key, r.m.failed)
			continue
		}
		ratio := ""
		if r.limit != nil && r.limit.rps > 0 {
			ratio = fmt.Sprintf("%.2f of %s", r.m.rps/r.limit.rps, r.against)
			if r.cpuRatio && r.m.moverUs > 0 && r.limit.moverUs > 0 {
				ratio += fmt.Sprintf("; CPU per record %.2f×", r.m.moverUs/r.limit.moverUs)
			}
		}
		fmt.Fprintf(&b, "| `%s` | %.0f | %s | %s | %s | %s | %s |\n", r.key, r.m.rps, num(r.m.p99ms, "%.1f"), ratio,
			num(r.m.moverUs, "%.2f"), num(r.m.brokerUs, "%.2f"), num(r.rssMB, "%.0f"))
	}
	fmt.Fprint(&b, "\nThe rows' measurements:\n\n")
	for _, r := range t.rows {
		fmt.Fprintf(&b, "- `%s`: %s\n", r.key, r.name)
	}
	if s := t.targets(); s != "" {
		fmt.Fprintf(&b, "\nIssues 17 and 29's targets, from this table:\n\n%s", s)
	}
	return b.Bytes()
}

// targets is issues 17 and 29's targets, each with this run's figure:
// issue 29's where it set one anew.
func (t *table) targets() string {
	var b strings.Builder
	for _, c := range []struct {
		conns     int
		cpu, rate string
	}{{256, "1.6", "0.6"}, {64, "1.6", ""}} {
		in, ans := t.find(fmt.Sprintf("single-%d", c.conns)), t.find(fmt.Sprintf("answer-%d", c.conns))
		if in == nil || ans == nil || ans.m.moverUs <= 0 {
			continue
		}
		fmt.Fprintf(&b, "- Single-record HTTP, %d connections: the ingest's CPU per record is %.2f× the answer-only server's per request (%.1f against %.1f µs; target at most %s×); the broker's %.2f µs per record (target: half of the 3.1–7 µs when issue 29 was filed)",
			c.conns, in.m.moverUs/ans.m.moverUs, in.m.moverUs, ans.m.moverUs, c.cpu, in.m.brokerUs)
		if c.rate != "" {
			fmt.Fprintf(&b, "; %.2f of the answer-only server's records/s (target at least %s)", in.m.rps/ans.m.rps, c.rate)
		} else {
			fmt.Fprintf(&b, "; p99 %.1f ms (target at most 10)", in.m.p99ms)
		}
		b.WriteString(".\n")
	}
	if in, kgo := t.find("listener"), t.find("kgo"); in != nil && kgo != nil && kgo.m.rps > 0 && kgo.m.brokerUs > 0 {
		fmt.Fprintf(&b, "- Kafka listener: %.2f of kgo's records/s straight into the broker (target at least 0.35); the ingest's CPU per record %.2f µs (target at most 1.5); the broker's %.2f µs against %.2f straight from kgo, %.1f× (target at most 2×).\n",
			in.m.rps/kgo.m.rps, in.m.moverUs, in.m.brokerUs, kgo.m.brokerUs, in.m.brokerUs/kgo.m.brokerUs)
	}
	var batched []string
	for _, k := range []struct{ key, name string }{{"ndjson", "NDJSON"}, {"v2", "v2"}, {"grpc-stream", "gRPC stream"}, {"ambassador", "kafka-ambassador stream"}} {
		if r := t.find(k.key); r != nil {
			batched = append(batched, fmt.Sprintf("%s %.2f (broker %.2f)", k.name, r.m.moverUs, r.m.brokerUs))
		}
	}
	if len(batched) > 0 {
		fmt.Fprintf(&b, "- Batched APIs, the ingest's CPU µs per record: %s. Target for NDJSON batches of 500: at most 1.5.\n", strings.Join(batched, ", "))
	}
	if r := t.find("ambassador"); r != nil {
		fmt.Fprintf(&b, "- kafka-ambassador's stream: %.0f records/s on one stream, acknowledged after Kafka (target: at least 255k, kafka-ambassador's own rate on its own client in issue 29's run", r.m.rps)
		nd := t.find("ndjson")
		if nd != nil && nd.m.rps > 0 {
			fmt.Fprintf(&b, ", and at least 0.6 of NDJSON's: %.2f here", r.m.rps/nd.m.rps)
		}
		b.WriteString(")")
		if ans := t.find("ambassador-answer"); ans != nil && ans.m.rps > 0 {
			fmt.Fprintf(&b, "; %.2f of the answer-only server's %.0f", r.m.rps/ans.m.rps, ans.m.rps)
			if nd != nil && nd.m.rps > 0 {
				fmt.Fprintf(&b, " (itself %.2f of NDJSON's)", ans.m.rps/nd.m.rps)
			}
		}
		b.WriteString(".\n")
	}
	if r := t.find("resender"); r != nil && r.limit != nil {
		fmt.Fprintf(&b, "- Resender without a limit: %.2f of the bare pipe (target at least 0.7).\n", r.m.rps/r.limit.rps)
	}
	if r := t.find("spill"); r != nil && r.limit != nil {
		fmt.Fprintf(&b, "- Spill (breaker open): %.2f of a direct JetStream async publish (target at least 0.8).\n", r.m.rps/r.limit.rps)
	}
	for _, k := range []struct{ key, name string }{{"spill", "Spill"}, {"always", "Write-ahead"}} {
		free, limited := t.find(k.key), t.find(k.key+"-512")
		if free == nil || limited == nil || free.m.rps <= 0 {
			continue
		}
		fmt.Fprintf(&b, "- %s under a 512 MiB limit: %.2f of its records/s without one (target at least 0.8), peak RSS %.0f MB against %.0f (target at most 512).\n",
			k.name, limited.m.rps/free.m.rps, limited.rssMB, free.rssMB)
	}
	return b.String()
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

// commit is the checked-out commit the binaries were built from, so that
// a reader (and docs/scaling.md's test) can tell a stale table; marked
// -dirty when the work tree has changes.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
