package config

import (
	"runtime/debug"
	"strings"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// DefaultGCPercent is the Go garbage collector's target when GOGC is not
// set. At Go's default of 100 the ingest spent about a quarter of its CPU
// collecting under load; at 400 single-record HTTP and NDJSON throughput
// rose by 25–35% on the 2-core machines (docs/benchmarks.md).
const DefaultGCPercent = 400

// DefaultMemoryLimit is the soft memory limit (GOMEMLIMIT) when neither
// GOMEMLIMIT nor a container memory limit is set: past it the collector
// works harder instead of letting a large GOGC grow the heap, which the
// embedded JetStream's caches can make large.
const DefaultMemoryLimit = 1 << 30

// memoryLimitRatio is the share of the container's memory limit taken as
// the soft limit, leaving room for memory outside Go's heap.
const memoryLimitRatio = 0.8

// TuneRuntime sets the collector's target to DefaultGCPercent unless
// environ sets GOGC, and the soft memory limit to 80% of the container's
// memory limit (cgroups), else DefaultMemoryLimit, unless GOMEMLIMIT is
// set. It returns the memory limit in force.
func TuneRuntime(environ []string) int64 {
	gogc := false
	for _, kv := range environ {
		gogc = gogc || strings.HasPrefix(kv, "GOGC=")
	}
	if !gogc {
		debug.SetGCPercent(DefaultGCPercent)
	}
	limit, _ := memlimit.Set( // it leaves a GOMEMLIMIT set in the environment alone
		memlimit.WithRatio(memoryLimitRatio),
		memlimit.WithProvider(memlimit.ApplyFallback(memlimit.FromCgroup, memlimit.Limit(uint64(DefaultMemoryLimit/memoryLimitRatio)))),
	)
	return limit
}
