package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// wrkScript makes each request a POST of one record of the given size.
// done prints the run's counts as one JSON line: requests answered,
// answers with status 400 or above (wrk's "Non-2xx or 3xx responses"),
// socket errors, and the p99 latency.
const wrkScript = `wrk.method = "POST"
wrk.body = %q
wrk.headers["Content-Type"] = "text/plain"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('bench-wrk {"requests":%%d,"duration_us":%%d,"non2xx":%%d,"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,"p99_us":%%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(99)))
end
`

// wrkSummary is the line wrkScript's done prints.
type wrkSummary struct {
	Requests   int64 `json:"requests"`
	DurationUs int64 `json:"duration_us"`
	Non2xx     int64 `json:"non2xx"`
	Connect    int64 `json:"connect"`
	Read       int64 `json:"read"`
	Write      int64 `json:"write"`
	Timeout    int64 `json:"timeout"`
	P99Us      int64 `json:"p99_us"`
}

// parseWrk finds wrkScript's summary in wrk's output.
func parseWrk(out []byte) (wrkSummary, error) {
	var s wrkSummary
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "bench-wrk "); ok {
			err := json.Unmarshal([]byte(rest), &s)
			return s, err
		}
	}
	return s, fmt.Errorf("no summary line in wrk's output")
}

// failure says why a wrk run cannot be reported: any answer not 2xx, or
// any socket error; "" when every request was answered 2xx.
func (s wrkSummary) failure() string {
	var why []string
	for _, c := range []struct {
		n    int64
		what string
	}{{s.Non2xx, "answers not 2xx"}, {s.Connect, "connect errors"}, {s.Read, "read errors"}, {s.Write, "write errors"}, {s.Timeout, "timeouts"}} {
		if c.n > 0 {
			why = append(why, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if s.Requests == 0 {
		why = append(why, "no request answered")
	}
	if len(why) == 0 {
		return ""
	}
	return fmt.Sprintf("%s of %d requests", strings.Join(why, ", "), s.Requests)
}

// wrkFile is the script, written once into a temporary folder.
var wrkFile string

func writeWrkScript() string {
	if wrkFile == "" {
		dir, err := os.MkdirTemp("", "spillway-bench-wrk")
		if err != nil {
			fatal("%v", err)
		}
		tempDirs = append(tempDirs, dir)
		wrkFile = filepath.Join(dir, "post.lua")
		if err := os.WriteFile(wrkFile, fmt.Appendf(nil, wrkScript, strings.Repeat("x", *size)), 0o644); err != nil {
			fatal("%v", err)
		}
	}
	return wrkFile
}

// wrkLoad is a measurement by wrk: POSTs of one record to url (with
// a fresh topic per run in place of TOPIC) on conns connections, 2
// threads, for -duration, with the CPU of mover and broker over the run.
func wrkLoad(conns int, url string, mover, broker pidOf) func(int) result {
	return func(i int) result {
		u := strings.ReplaceAll(url, "TOPIC", fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i))
		ps := pids(mover, broker)
		args := []string{"-t2", fmt.Sprintf("-c%d", conns), "-d" + duration.String(), "--timeout", "5s", "--latency", "-s", writeWrkScript(), u}
		before := markCPU(ps...)
		out, err := runTool(wrkPath, args...)
		after := markCPU(ps...)
		if err != nil {
			fatal("wrk %v: %v\n%s", args, err, out)
		}
		s, err := parseWrk(out)
		if err != nil {
			fatal("wrk %v: %v\n%s", args, err, out)
		}
		acked := float64(s.Requests - s.Non2xx)
		res := result{acked: acked, p99ms: float64(s.P99Us) / 1000, failed: s.failure()}
		if s.DurationUs > 0 {
			res.rps = acked / (float64(s.DurationUs) / 1e6)
		}
		if mover != nil {
			res.moverUs = usPer(before, after, mover(), acked)
		}
		if broker != nil {
			res.brokerUs = usPer(before, after, broker(), acked)
		}
		return res
	}
}
