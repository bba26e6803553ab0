package ingesttest

import (
	"runtime"
	"time"
)

// HeapAlloc is the live heap after a collection: the baseline of a memory
// attack test, which runs the ingest in this process.
func HeapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// PeakHeapGrowth runs f while it samples the heap every few milliseconds,
// and returns the most it grew above before. The samples are taken
// without a collection: garbage counts, as it does in the process.
func PeakHeapGrowth(before uint64, f func()) uint64 {
	stop := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var most uint64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > before && m.HeapAlloc-before > most {
				most = m.HeapAlloc - before
			}
			select {
			case <-stop:
				peak <- most
				return
			case <-tick.C:
			}
		}
	}()
	f()
	close(stop)
	return <-peak
}
