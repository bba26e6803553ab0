package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// Each drain run measures drainRecords records after the first drainWarm
// (past the drainer's start: connecting, creating its consumer, the first
// fetches).
const (
	drainWarm    = 2000
	drainRecords = 100_000
)

// drains measures the processes that empty the spilled records in the
// ingest's JetStream into Kafka (the resender, the bare pipe) the same
// way: by the stream's message count. The stream is a work queue, so a
// message is gone once its drainer acknowledged it, after Kafka did.
type drains struct {
	nc     *nats.Conn
	stream jetstream.Stream
}

func newDrains(natsAddr, walDir string) *drains {
	opt, err := nats.NkeyOptionFromSeed(filepath.Join(walDir, "nats-user.nk"))
	if err != nil {
		fatal("%v", err)
	}
	nc, err := nats.Connect("nats://"+natsAddr, opt)
	if err != nil {
		fatal("connect to the ingest's JetStream: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		fatal("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, spillStream)
	if err != nil {
		fatal("stream %s: %v", spillStream, err)
	}
	return &drains{nc: nc, stream: stream}
}

func (d *drains) close() { d.nc.Close() }

// buffered is the number of records in the stream.
func (d *drains) buffered() int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := d.stream.Info(ctx)
	if err != nil {
		fatal("stream %s: %v", spillStream, err)
	}
	return int64(info.State.Msgs)
}

// clearConsumers deletes the stream's consumers: a work queue admits one
// consumer per subject, so the resender's and the pipe's take turns.
// Messages a deleted consumer had not acknowledged stay in the stream.
func (d *drains) clearConsumers() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := d.stream.ConsumerNames(ctx)
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if err := names.Err(); err != nil {
		fatal("consumers of %s: %v", spillStream, err)
	}
	for _, n := range all {
		if err := d.stream.DeleteConsumer(ctx, n); err != nil {
			fatal("delete consumer %s: %v", n, err)
		}
	}
}

// needed is the records the resender group drains: the rate-limited runs
// (two seconds of the rate each) and the pipe and resender runs without a
// limit.
func needed(rate int) int64 {
	perRate := int64(drainWarm + 2*rate)
	perRun := int64(drainWarm + drainRecords)
	// The margin: what a drainer takes between the last count and its
	// stop, about 10 ms of its rate.
	return int64(*runs)*perRate + int64(*runs)*2*perRun + 20_000
}

// fill adds n spilled records to the stream as the ingest stores them
// (its encoding, subject and message id), so that the drains have
// enough: publishing straight into JetStream is faster than spilling
// through the ingest.
func (d *drains) fill(n int64) {
	js, err := jetstream.New(d.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		fatal("%v", err)
	}
	const topic = "bench-drain"
	subject := spill.Subjects{Prefix: spillPrefix}.For(spill.Spilled, topic)
	value := []byte(strings.Repeat("x", *size))
	prefix := fmt.Sprintf("bench-%d-", time.Now().UnixNano())
	for i := range n {
		r := record.Record{ID: prefix + fmt.Sprint(i), Topic: topic, Value: value, Partition: record.AnyPartition, Timestamp: time.Now()}
		b, err := spill.Encode(&r, "")
		if err != nil {
			fatal("encode: %v", err)
		}
		h := nats.Header{spill.HeaderTopic: []string{topic}, nats.MsgIdHdr: []string{r.ID}}
		for {
			_, err := js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: b, Header: h})
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				fatal("publish: %v", err)
			}
			waitPublished(js) // backpressure: the window is full
		}
	}
	waitPublished(js)
}

// waitPublished waits until JetStream acknowledged every async publish,
// for at most a minute.
func waitPublished(js jetstream.JetStream) {
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		fatal("JetStream did not acknowledge %d records in a minute", js.PublishAsyncPending())
	}
}

// measure starts a drainer, waits until it drained drainWarm records,
// then measures it over the next n: records/s and the CPU µs per record
// of the drainer and the broker. The drainer is stopped at the end.
func (d *drains) measure(n int64, startDrainer func() *service, broker pidOf) result {
	c0 := d.buffered()
	if c0 < drainWarm+n {
		return result{failed: fmt.Sprintf("only %d records buffered, %d needed", c0, drainWarm+n)}
	}
	d.clearConsumers()
	s := startDrainer()
	// Killed at the end: what it holds unacknowledged stays in the stream
	// for the next drainer, and a graceful stop would drain more records
	// than were counted.
	defer s.kill()
	c1, t1, why := d.waitDrained(s, c0-drainWarm, 30*time.Second)
	if why != "" {
		return result{failed: why}
	}
	before := markCPU(s.pid(), broker())
	c2, t2, why := d.waitDrained(s, c1-n, 2*time.Minute)
	after := markCPU(s.pid(), broker())
	if why != "" {
		return result{failed: why}
	}
	got := float64(c1 - c2)
	return result{
		acked:    got,
		rps:      got / t2.Sub(t1).Seconds(),
		moverUs:  usPer(before, after, s.pid(), got),
		brokerUs: usPer(before, after, broker(), got),
	}
}

// waitDrained polls the stream until at most target records are left,
// and returns the count and the moment it saw it; why is not "" when the
// drainer exited or did not get there within limit.
func (d *drains) waitDrained(s *service, target int64, limit time.Duration) (int64, time.Time, string) {
	deadline := time.Now().Add(limit)
	for {
		c, now := d.buffered(), time.Now()
		if c <= target {
			return c, now, ""
		}
		if s.exited() {
			return c, now, fmt.Sprintf("%s exited with %d records left", s.name, c)
		}
		if now.After(deadline) {
			return c, now, fmt.Sprintf("%s left %d records after %v, %d expected", s.name, c, limit, target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// resender starts spillway-resender on the spilled records, into broker,
// at rate records/s (0: no limit).
func resender(broker, natsAddr, walDir string, rate int) func() *service {
	return func() *service {
		mon := freeAddr()
		return start("spillway-resender", []string{"SPILLWAY_KAFKA_BROKERS=" + broker, "SPILLWAY_PRODUCER_WAL_LISTEN=" + natsAddr, "SPILLWAY_PRODUCER_WAL_PATH=" + walDir,
			"SPILLWAY_RESEND_MONITORING_LISTEN=" + mon, "SPILLWAY_PRODUCER_RESEND_PERIOD=100ms",
			fmt.Sprintf("SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=%d", rate), "SPILLWAY_GLOBAL_LOG_LEVEL=warn"})
	}
}

// pipe starts the bare pipe (bench -pipe) on the spilled records, into
// broker.
func pipe(broker, natsAddr, walDir string) func() *service {
	return func() *service {
		return start("bench", nil, "-pipe", "nats://"+natsAddr, "-pipe-credentials", filepath.Join(walDir, "nats-user.nk"), "-pipe-brokers", broker)
	}
}
