package spill_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// TestMeasureSpill measures Buffer.Publish, the spill path's publish,
// against a direct JetStream async publish into the same kind of server
// (issue 17): 8 callers publish batches of 500 records of 100 bytes, each
// with its id as the message id, and wait for the batch's acks. As in the
// ingest, the server is embedded and reached in-process, so the CPU per
// record (getrusage) is the server's and the publisher's together. Each
// run has a new server; the runs alternate and the medians are printed.
// It is skipped unless SPILLWAY_MEASURE names the records per run:
//
//	SPILLWAY_MEASURE=200000 GOGC=400 go test -count=1 -run 'TestMeasureSpill$' -v ./pkg/spill/
//
// GOGC=400 is what the ingest sets for itself (config.TuneRuntime).
// SPILLWAY_MEASURE_RUNS sets the runs per way (3); with
// SPILLWAY_MEASURE_PROFILE naming a folder, the CPU profile of the last
// run of each way is written there. Each run fails the test unless the
// stream holds every record; no timing is asserted.
func TestMeasureSpill(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SPILLWAY_MEASURE"))
	if n <= 0 {
		t.Skip("set SPILLWAY_MEASURE to the records per run to measure")
	}
	runs := 3
	if s, err := strconv.Atoi(os.Getenv("SPILLWAY_MEASURE_RUNS")); err == nil && s > 0 {
		runs = s
	}
	const callers, batch = 8, 500
	ways := []struct {
		name    string
		publish func(t *testing.T, b *spill.Buffer, js jetstream.JetStream, recs []record.Record)
	}{
		{"direct JetStream async publish", publishDirect},
		{"Buffer.Publish (spill)", func(t *testing.T, b *spill.Buffer, _ jetstream.JetStream, recs []record.Record) {
			for _, r := range b.Publish(t.Context(), spill.Spilled, recs, "breaker_open") {
				if r.Outcome != record.Buffered {
					t.Errorf("not buffered: %v", r.Err)
					return
				}
			}
		}},
	}
	rps, cpu := make([][]float64, len(ways)), make([][]float64, len(ways))
	value := make([]byte, 100)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	for run := range runs {
		for w, way := range ways {
			t.Run("run", func(t *testing.T) {
				c := walConfig(t)
				b, js, _ := startBuffer(t, c)
				ts := time.Now()
				work := make(chan []record.Record, n/batch+1)
				for start := 0; start < n; start += batch {
					recs := make([]record.Record, min(batch, n-start))
					for i := range recs {
						recs[i] = record.Record{ID: fmt.Sprintf("01J%d%022d", run, start+i), Topic: "bench", Value: value, Timestamp: ts, Partition: record.AnyPartition}
					}
					work <- recs
				}
				close(work)
				if dir := os.Getenv("SPILLWAY_MEASURE_PROFILE"); dir != "" {
					f, err := os.Create(filepath.Join(dir, fmt.Sprintf("spill-%d.prof", w)))
					require.NoError(t, err)
					require.NoError(t, pprof.StartCPUProfile(f))
					defer f.Close()
				}
				start, cpu0 := time.Now(), cpuTime()
				var wg sync.WaitGroup
				for range callers {
					wg.Go(func() {
						for recs := range work {
							way.publish(t, b, js, recs)
						}
					})
				}
				wg.Wait()
				elapsed, used := time.Since(start), cpuTime()-cpu0
				pprof.StopCPUProfile()
				s, err := js.Stream(t.Context(), c.Stream)
				require.NoError(t, err)
				info, err := s.Info(t.Context())
				require.NoError(t, err)
				require.EqualValues(t, n, info.State.Msgs, "every record is in the stream, once")
				rps[w] = append(rps[w], float64(n)/elapsed.Seconds())
				cpu[w] = append(cpu[w], float64(used.Microseconds())/float64(n))
				t.Logf("%-32s %8.0f records/s %6.2f µs CPU/record", way.name, rps[w][run], cpu[w][run])
			})
		}
	}
	for w, way := range ways {
		t.Logf("median of %d: %-32s %8.0f records/s (%.2f of the direct publish) %6.2f µs CPU/record",
			runs, way.name, median(rps[w]), median(rps[w])/median(rps[0]), median(cpu[w]))
	}
}

// publishDirect is the least a publish of a batch does: an async publish
// of each record's value with its id, then a wait for every ack.
func publishDirect(t *testing.T, _ *spill.Buffer, js jetstream.JetStream, recs []record.Record) {
	futures := make([]jetstream.PubAckFuture, len(recs))
	for i, r := range recs {
		f, err := js.PublishAsync("spillway.spill."+r.Topic, r.Value, jetstream.WithMsgID(r.ID))
		if err != nil {
			t.Errorf("publish: %v", err)
			return
		}
		futures[i] = f
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Errorf("ack: %v", err)
			return
		}
	}
}

// cpuTime is the CPU this process used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
