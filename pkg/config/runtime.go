package config

import (
	"runtime/debug"
	"strings"
)

// DefaultGCPercent is the Go garbage collector's target when GOGC is not
// set. At Go's default of 100 the ingest spent about a quarter of its CPU
// collecting under load; at 400 single-record HTTP and NDJSON throughput
// rose by 25–35% on the 2-core machines (docs/benchmarks.md), for a heap
// that peaks at a few times its live size, which the in-flight bound
// (server.max_in_flight_records) keeps small. Set GOGC (and GOMEMLIMIT)
// to choose otherwise.
const DefaultGCPercent = 400

// SetGCPercent applies DefaultGCPercent unless environ sets GOGC.
func SetGCPercent(environ []string) {
	for _, kv := range environ {
		if strings.HasPrefix(kv, "GOGC=") {
			return
		}
	}
	debug.SetGCPercent(DefaultGCPercent)
}
