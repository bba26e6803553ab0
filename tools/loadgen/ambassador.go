package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/proto/gen/kafkaambassador"
)

// ackGrace bounds the wait for the acknowledgements still owed once the
// last record is sent: a server that never answers ends the run as
// failed records instead of hanging it.
const ackGrace = time.Minute

// sentRecord is a record waiting for its ProdRs.
type sentRecord struct {
	seq    int64
	offset uint64
	at     time.Time
}

// runAmbassador drives kafka-ambassador's KafkaAmbassador/Produce the way
// its own Go client does: one bidi stream per worker (-concurrency), each
// ProdRq sent without waiting for an answer, the ProdRs acknowledgements
// read concurrently. kafka-ambassador answers in order, so each ProdRs
// must carry the streamOffset of the oldest record not yet acknowledged.
// A record is failed when its acknowledgement is missing, out of order,
// or the stream ended with an error before it.
func runAmbassador(ctx context.Context, o Options, progress *os.File) (*Report, error) {
	if o.Concurrency < 1 || o.Size < 1 {
		return nil, fmt.Errorf("-concurrency and -size must be at least 1")
	}
	if o.Rate > 0 {
		return nil, fmt.Errorf("-rate is not supported by -target ambassador-stream: its client sends as fast as the stream takes")
	}
	l, err := newLoad(o)
	if err != nil {
		return nil, err
	}
	conns := make([]*grpc.ClientConn, o.Concurrency)
	for i := range conns {
		if conns[i], err = grpc.NewClient(o.Addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return nil, err
		}
		defer conns[i].Close()
	}

	sendCtx, stopSending := l.context(ctx)
	defer stopSending()
	cpuStart := cpuSeconds()
	var seq atomic.Int64
	workers := make([]*worker, o.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for g := range o.Concurrency {
		w := &worker{hist: newHist(), errors: map[string]int{}}
		workers[g] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.stream(sendCtx, stopSending, conns[g], &seq, w)
		}()
	}
	done := make(chan struct{})
	if fi, err := progress.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		go showProgress(done, workers, start, progress)
	}
	wg.Wait()
	close(done)
	elapsed := time.Since(start).Seconds()

	rep := &Report{Target: o.Target, RunID: l.runID, Errors: map[string]int{}, Seconds: elapsed, CPUSeconds: cpuSeconds() - cpuStart}
	hist := newHist()
	for _, w := range workers {
		hist.Merge(w.hist)
		rep.Requests += w.requests
		rep.Records += w.records
		rep.Delivered += w.dlv
		rep.Failed += w.failed
		rep.acked = append(rep.acked, w.acked...)
		for e, n := range w.errors {
			rep.Errors[e] += n
		}
	}
	rep.RecordsPerSec = float64(rep.Delivered) / elapsed
	rep.MBPerSec = rep.RecordsPerSec * float64(o.Size) / 1e6
	ms := func(q float64) float64 { return float64(hist.ValueAtQuantile(q)) / 1000 }
	rep.LatencyMs = Latency{P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(99.9), Max: float64(hist.Max()) / 1000}
	return rep, nil
}

// stream sends records on one Produce stream until sendCtx ends or -count
// records are taken, while it reads their acknowledgements, and counts
// the outcome into w. A ProdRs has no outcome: an acknowledged record
// counts as delivered.
func (l *load) stream(sendCtx context.Context, stopSending context.CancelFunc, conn *grpc.ClientConn, seq *atomic.Int64, w *worker) {
	// The stream outlives sendCtx: after the last record it waits for the
	// acknowledgements, for at most ackGrace.
	ctx, cancel := context.WithCancel(context.WithoutCancel(sendCtx))
	defer cancel()
	// fail counts n records failed for why; n 0 is a stream that ended
	// with an error when no record was waiting, counted once.
	fail := func(n int64, why string) {
		w.mu.Lock()
		w.records += n
		w.requests += n
		w.failed += n
		w.errors[why] += int(max(n, 1))
		w.mu.Unlock()
	}
	st, err := kafkaambassador.NewKafkaAmbassadorClient(conn).Produce(ctx)
	if err != nil {
		fail(0, "grpc ambassador open "+status.Code(err).String())
		return
	}
	// waiting holds the records sent and not yet acknowledged, oldest
	// first; its capacity bounds what one stream has in flight.
	waiting := make(chan sentRecord, 1<<16)
	sendDone := make(chan struct{})
	go func() {
		defer close(waiting)
		defer close(sendDone)
		defer func() { _ = st.CloseSend() }()
		for sendCtx.Err() == nil {
			s := seq.Add(1) - 1
			if l.o.Count > 0 && s >= l.o.Count {
				stopSending()
				return
			}
			topic := l.topics[int(s)%len(l.topics)]
			r := sentRecord{seq: s, offset: uint64(s), at: time.Now()}
			if err := st.Send(&kafkaambassador.ProdRq{Topic: topic, Message: l.value(s), StreamOffset: r.offset}); err != nil {
				// The stream ended; Recv says why. This record was not
				// taken.
				fail(1, "grpc ambassador send")
				return
			}
			select {
			case waiting <- r:
			case <-ctx.Done():
				fail(1, "grpc ambassador ended")
				return
			}
		}
	}()
	go func() {
		<-sendDone
		select {
		case <-time.After(ackGrace):
			cancel() // acknowledgements still missing after the grace: they count as failed
		case <-ctx.Done():
		}
	}()

	var why string
	for {
		rs, err := st.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				why = "grpc ambassador " + status.Code(err).String()
			}
			break
		}
		r, ok := <-waiting
		if !ok {
			why = "grpc ambassador acknowledged a record not sent"
			break
		}
		if rs.GetStreamOffset() != r.offset {
			fail(1, "grpc ambassador acknowledgement out of order")
			why = fmt.Sprintf("grpc ambassador acknowledged streamOffset %d, want %d", rs.GetStreamOffset(), r.offset)
			break
		}
		w.mu.Lock()
		_ = w.hist.RecordValue(max(1, time.Since(r.at).Microseconds()))
		w.records++
		w.requests++
		w.dlv++
		w.acked = append(w.acked, r.seq)
		w.mu.Unlock()
	}
	cancel() // the sender stops if it is still sending
	if why == "" {
		why = "grpc ambassador acknowledgement missing"
	}
	var missing int64
	for range waiting {
		missing++
	}
	if missing > 0 {
		fail(missing, why)
	} else if why != "grpc ambassador acknowledgement missing" {
		fail(0, why)
	}
}
