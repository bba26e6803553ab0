// Package backlog keeps a lane that spilled behind its buffered records
// (producer.order partition): once any record of a lane (a topic's
// partition, or its key's hash, spill.Lane) is buffered, every later
// record of the lane is buffered too, until the lane's backlog has been
// delivered; then the lane is handed back to Kafka, its new records held
// for the moments of the hand-over, so that none passes the last buffered
// one.
//
// The backlog is visible to every ingest through the buffer: a lane's
// backlog is its subject in the stream (PREFIX.spill.TOPIC.LANE), which
// each ingest reads every checkInterval, and a marker per lane in a
// JetStream key-value bucket, which each ingest watches, so that another
// ingest learns of a spill within milliseconds rather than at its next
// check.
package backlog

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

// checkInterval is how often the stream's backlogs are read.
const checkInterval = 100 * time.Millisecond

// handOverBacklog is the most records a lane may have in the stream for
// its hand-over to begin: at the resender's default 10,000 records/s, its
// new records wait about a tenth of a second.
const handOverBacklog = 1000

// handOverGrace is how long a hand-over waits, after it told the other
// ingests, before it looks at the lane's backlog: their publishes of the
// lane begun before they saw it land meanwhile. At 50 ms, with make test's
// packages, lint and fuzz beside it on 2 cores, TestOrderPerKeyCluster
// found 3 records in 21,890 passed (its bound is 1 in 10,000): publishes
// landed later than that. The lane's new records wait this long once per
// hand-over.
const handOverGrace = 250 * time.Millisecond

// handOverWait bounds how long a lane's new records are held while its
// last buffered records are delivered; past it the hand-over is given up
// and tried again later (the records held are buffered).
const handOverWait = 2 * time.Second

// Bucket is the key-value bucket of the lanes' markers.
func Bucket(c config.WAL) string { return c.Stream + "_BACKLOG" }

// laneID names a lane: a topic and its lane token.
type laneID struct{ topic, lane string }

// key is the lane's marker key: LANE.TOPIC (a topic's dots stay dots: the
// lane is the first token).
func (l laneID) key() string { return l.lane + "." + l.topic }

func parseKey(k string) (laneID, bool) {
	lane, topic, ok := strings.Cut(k, ".")
	return laneID{topic: topic, lane: lane}, ok && topic != ""
}

// lane is the state of a lane with a backlog.
type lane struct {
	inFlight int           // this ingest's publishes of the lane not answered yet
	handOver chan struct{} // non-nil while handed over: closed at its end
	marked   bool          // its marker is in the bucket, as far as the watch said
	remote   bool          // the hand-over is another ingest's: its marker says "handover"
	notUntil time.Time     // no hand-over before: one was given up
	last     uint64        // its records in the stream at the last check
}

// Tracker knows which lanes have a backlog. Its zero lanes cost the
// healthy path one atomic load per batch.
type Tracker struct {
	js       jetstream.JetStream // set by Run, read only by its goroutines
	wal      config.WAL
	subjects spill.Subjects
	logger   *slog.Logger

	active atomic.Int64 // lanes with a backlog

	mu    sync.Mutex
	lanes map[laneID]*lane
	kv    jetstream.KeyValue // nil until the bucket is open

	healthy atomic.Pointer[func() bool] // whether Kafka takes records now

	lanesGauge prometheus.Gauge
	handOvers  *prometheus.CounterVec

	counts counts
}

// New returns a Tracker of the buffer c; Run starts it once the buffer
// is reached. Until then it knows only the lanes this ingest spilled.
func New(c config.WAL, reg prometheus.Registerer, logger *slog.Logger) *Tracker {
	f := promauto.With(reg)
	return &Tracker{
		wal: c, subjects: spill.Subjects{Prefix: c.SubjectPrefix}, logger: logger,
		lanes:  map[laneID]*lane{},
		counts: counts{known: map[string]int{}, loaded: make(chan struct{})},
		lanesGauge: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_backlog_lanes",
			Help: "Lanes (a topic's partition, or its keys' hash) whose records are buffered behind their backlog until the resender has delivered it (producer.order partition).",
		}),
		handOvers: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_backlog_hand_overs_total",
			Help: "Hand-overs of a lane back to Kafka once its backlog was delivered: done, or given up (its backlog did not empty within 2 s).",
		}, []string{"outcome"}),
	}
}

// Run opens the bucket on js, watches it and reads the stream's backlogs
// until ctx ends; while JetStream does not answer it tries again. It is
// called once, when the buffer has been reached.
func (t *Tracker) Run(ctx context.Context, js jetstream.JetStream) {
	t.js = js
	t.handOvers.WithLabelValues("done")
	t.handOvers.WithLabelValues("given_up")
	go t.watch(ctx)
	go t.watchCounts(ctx)
	tick := time.NewTicker(checkInterval)
	defer tick.Stop()
	for {
		t.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// watch follows the markers: a lane marked by any ingest has a backlog.
// A marker removed is left to this ingest's own check: the lane's records
// this ingest buffered may still be in the stream.
func (t *Tracker) watch(ctx context.Context) {
	for ctx.Err() == nil {
		kv, err := t.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      Bucket(t.wal),
			Description: "Spillway: lanes whose records wait behind their backlog in the buffer",
			History:     1,
			Storage:     storage(t.wal),
			Replicas:    t.wal.Replicas,
		})
		if err != nil {
			t.logger.Debug("backlog bucket not ready", "error", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		t.mu.Lock()
		t.kv = kv
		t.mu.Unlock()
		w, err := kv.WatchAll(ctx)
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				continue // the markers stored so far have come
			}
			id, ok := parseKey(e.Key())
			if !ok {
				continue
			}
			t.mu.Lock()
			if e.Operation() == jetstream.KeyValuePut {
				l := t.markLocked(id)
				l.marked = true
				handingOver := string(e.Value()) == valueHandOver
				switch {
				case handingOver && l.handOver == nil:
					// Another ingest hands the lane back: hold its records
					// here too, until that ingest says how it ended.
					l.handOver, l.remote = make(chan struct{}), true
					hold := l.handOver
					time.AfterFunc(handOverWait+time.Second, func() { t.endRemote(id, hold, false) })
				case !handingOver && l.remote:
					t.endRemoteLocked(id, l, false) // given up: the lane keeps its backlog
				}
			} else if l := t.lanes[id]; l != nil {
				l.marked = false
				if l.remote {
					t.endRemoteLocked(id, l, true) // handed back
				}
			}
			t.mu.Unlock()
		}
		_ = w.Stop()
	}
}

func storage(c config.WAL) jetstream.StorageType {
	if c.InMemory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

// The markers' values: a lane with a backlog, and one being handed back.
const (
	valueBacklog  = "backlog"
	valueHandOver = "handover"
)

// endRemote ends another ingest's hand-over held here, unless it ended
// already (hold is no longer the lane's).
func (t *Tracker) endRemote(id laneID, hold chan struct{}, handedBack bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.lanes[id]; l != nil && l.remote && l.handOver == hold {
		t.endRemoteLocked(id, l, handedBack)
	}
}

// endRemoteLocked releases the records held for another ingest's
// hand-over: to Kafka when it handed the lane back (and none of this
// ingest's publishes of the lane is in flight), else to the buffer.
func (t *Tracker) endRemoteLocked(id laneID, l *lane, handedBack bool) {
	close(l.handOver)
	l.handOver, l.remote = nil, false
	if handedBack && l.inFlight == 0 {
		delete(t.lanes, id)
		t.active.Add(-1)
		t.lanesGauge.Dec()
	}
}

// markLocked gives id a backlog; t.mu is held.
func (t *Tracker) markLocked(id laneID) *lane {
	l := t.lanes[id]
	if l == nil {
		l = &lane{}
		t.lanes[id] = l
		t.active.Add(1)
		t.lanesGauge.Inc()
	}
	return l
}

// SetKafkaHealthy tells the Tracker how to know that Kafka takes records
// (the ingest's breaker is not open): a lane is handed back only then, for
// its backlog cannot be delivered before.
func (t *Tracker) SetKafkaHealthy(f func() bool) { t.healthy.Store(&f) }

func (t *Tracker) kafkaHealthy() bool {
	f := t.healthy.Load()
	return f == nil || (*f)()
}

// Active says whether any lane has a backlog; when none has, records go
// to Kafka without looking at their lanes.
func (t *Tracker) Active() bool { return t != nil && t.active.Load() > 0 }

// Pace holds recs, for at most wait, while Kafka takes records and the
// backlog of any of their lanes is longer than a hand-over takes: their
// clients then send at the pace the resender delivers the backlog, and it
// shrinks until the lane is handed back to Kafka. Answered buffered at
// once instead, a lane's clients can add to its backlog faster than the
// resender delivers it (a partition's keys together, at its rate_limit),
// and the lane would never be handed back. While Kafka is down records
// are not held: the backlog cannot shrink then.
func (t *Tracker) Pace(ctx context.Context, recs []record.Record, wait time.Duration) {
	if !t.crowded(recs) {
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	tick := time.NewTicker(checkInterval / 2)
	defer tick.Stop()
	for t.crowded(recs) {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		case <-tick.C:
		}
	}
}

// crowded says whether Kafka takes records and a lane of recs has more
// than handOverBacklog records in the stream, as last read.
func (t *Tracker) crowded(recs []record.Record) bool {
	if !t.kafkaHealthy() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range recs {
		if l := t.lanes[laneID{recs[i].Topic, spill.Lane(&recs[i])}]; l != nil && l.handOver == nil && l.last > handOverBacklog {
			return true
		}
	}
	return false
}

// Has says whether the lane of topic has a backlog, or is being handed
// back to Kafka.
func (t *Tracker) Has(topic, lane string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lanes[laneID{topic, lane}] != nil
}

// Behind says, for each of recs, whether its lane has a backlog, so that
// it must be buffered too; a lane being handed back to Kafka is waited
// for. Each record behind is counted in flight until Done.
func (t *Tracker) Behind(ctx context.Context, recs []record.Record) []bool {
	behind := make([]bool, len(recs))
	ids := make([]laneID, len(recs))
	for i := range recs {
		ids[i] = laneID{recs[i].Topic, spill.Lane(&recs[i])}
	}
	for {
		var wait chan struct{}
		t.mu.Lock()
		for _, id := range ids {
			if l := t.lanes[id]; l != nil && l.handOver != nil {
				wait = l.handOver
				break
			}
		}
		if wait == nil {
			for i, id := range ids {
				if l := t.lanes[id]; l != nil {
					behind[i] = true
					l.inFlight++
				}
			}
			t.mu.Unlock()
			return behind
		}
		t.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			// The client left: its records are buffered, behind the lane's
			// backlog, rather than raced past it.
			t.mu.Lock()
			for i, id := range ids {
				behind[i] = true
				t.markLocked(id).inFlight++
			}
			t.mu.Unlock()
			return behind
		}
	}
}

// Spilling gives the lanes of recs a backlog, for they are about to be
// buffered, and counts them in flight until Done. A lane new to the
// backlog is marked in the bucket first, so that the other ingests hold
// its records back from the moment this one's are buffered.
func (t *Tracker) Spilling(ctx context.Context, recs []record.Record) {
	var fresh []laneID
	t.mu.Lock()
	for i := range recs {
		id := laneID{recs[i].Topic, spill.Lane(&recs[i])}
		l := t.markLocked(id)
		l.inFlight++
		if !l.marked {
			l.marked = true
			fresh = append(fresh, id)
		}
	}
	kv := t.kv
	t.mu.Unlock()
	if kv == nil || len(fresh) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	for _, id := range fresh {
		if _, err := kv.Put(ctx, id.key(), []byte(valueBacklog)); err != nil {
			t.logger.Warn("cannot mark a lane's backlog for the other ingests; they learn of it from the stream", "topic", id.topic, "lane", id.lane, "error", err)
			t.mu.Lock()
			if l := t.lanes[id]; l != nil {
				l.marked = false
			}
			t.mu.Unlock()
		}
	}
}

// Done ends the in-flight count of records buffered after Behind (those
// with behind[i]) or Spilling (behind nil: all).
func (t *Tracker) Done(recs []record.Record, behind []bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range recs {
		if behind != nil && !behind[i] {
			continue
		}
		if l := t.lanes[laneID{recs[i].Topic, spill.Lane(&recs[i])}]; l != nil && l.inFlight > 0 {
			l.inFlight--
		}
	}
}

// check reads the stream's backlogs: a lane with records in the stream
// has a backlog (marked for the others if it is not), and a lane whose
// backlog is short is handed back to Kafka.
func (t *Tracker) check(ctx context.Context) {
	counts, err := t.backlogs(ctx)
	if err != nil {
		return
	}
	var handOver []laneID
	var unmarked []laneID
	t.mu.Lock()
	for id, n := range counts {
		if n > 0 {
			if l := t.markLocked(id); !l.marked {
				l.marked = true
				unmarked = append(unmarked, id)
			}
		}
	}
	now := time.Now()
	healthy := t.kafkaHealthy()
	for id, l := range t.lanes {
		n := counts[id]
		// Handed back once its backlog is short and being delivered: gone
		// (and nothing of it in flight), or shorter than at the last
		// check. While Kafka is down it is neither, and the lane's records
		// are not held for nothing.
		draining := (n == 0 && l.inFlight == 0) || n < l.last
		l.last = n
		if healthy && draining && n <= handOverBacklog && l.handOver == nil && now.After(l.notUntil) {
			handOver = append(handOver, id)
		}
	}
	kv := t.kv
	t.mu.Unlock()
	if kv != nil {
		for _, id := range unmarked {
			_, _ = kv.Put(ctx, id.key(), []byte(valueBacklog))
		}
	}
	for _, id := range handOver {
		t.handBack(ctx, id)
	}
}

// backlogs is the number of records in the stream per lane.
func (t *Tracker) backlogs(ctx context.Context) (map[laneID]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := t.js.Stream(ctx, t.wal.Stream)
	if err != nil {
		return nil, err
	}
	prefix := t.subjects.For(spill.Spilled, "") // PREFIX.spill._unknown
	prefix = strings.TrimSuffix(prefix, spill.NoTopic)
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, err
	}
	out := make(map[laneID]uint64, len(info.State.Subjects))
	for subject, n := range info.State.Subjects {
		topic, lane, ok := strings.Cut(strings.TrimPrefix(subject, prefix), ".")
		if !ok || strings.Contains(lane, ".") {
			continue // a record buffered before lanes had subjects
		}
		out[laneID{topic: strings.ReplaceAll(topic, "%2E", "."), lane: lane}] = n
	}
	return out, nil
}

// handBack hands lane id back to Kafka: its new records are held while
// the lane's publishes in flight end and the last of its backlog is
// confirmed delivered (its subject empty), then
// its marker is removed and the records held go to Kafka. If the backlog
// does not empty within handOverWait (another ingest buffers the lane's
// records) the lane keeps its backlog and the records held are buffered.
func (t *Tracker) handBack(ctx context.Context, id laneID) {
	t.mu.Lock()
	l := t.lanes[id]
	if l == nil || l.handOver != nil {
		t.mu.Unlock()
		return
	}
	l.handOver = make(chan struct{})
	kv := t.kv
	t.mu.Unlock()
	deadline := time.Now().Add(handOverWait)
	if kv != nil {
		// The other ingests hold the lane's records too, from the moment
		// they see this; a moment for them to see it before the backlog
		// is looked at.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_, err := kv.Put(pctx, id.key(), []byte(valueHandOver))
		cancel()
		if err == nil {
			sleepCtx(ctx, handOverGrace)
		}
	}
	empty := false
	for ctx.Err() == nil && time.Now().Before(deadline) {
		t.mu.Lock()
		n := l.inFlight
		t.mu.Unlock()
		if n == 0 {
			subject := t.subjects.For(spill.Spilled, id.topic) + "." + id.lane
			empty = t.waitEmpty(ctx, subject, deadline)
			break
		}
		sleepCtx(ctx, time.Millisecond)
	}
	if kv != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		var err error
		if empty {
			err = kv.Delete(dctx, id.key())
		} else {
			_, err = kv.Put(dctx, id.key(), []byte(valueBacklog))
		}
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.logger.Warn("cannot mark the end of a lane's hand-over", "topic", id.topic, "lane", id.lane, "error", err)
		}
	}
	t.mu.Lock()
	close(l.handOver)
	l.handOver = nil
	if empty {
		delete(t.lanes, id)
		t.active.Add(-1)
		t.lanesGauge.Dec()
		t.handOvers.WithLabelValues("done").Inc()
	} else {
		l.notUntil = time.Now().Add(time.Second)
		t.handOvers.WithLabelValues("given_up").Inc()
	}
	t.mu.Unlock()
}

// waitEmpty polls until subject has no record in the stream, or the
// deadline.
func (t *Tracker) waitEmpty(ctx context.Context, subject string, deadline time.Time) bool {
	s, err := t.js.Stream(ctx, t.wal.Stream)
	if err != nil {
		return false
	}
	for ctx.Err() == nil && time.Now().Before(deadline) {
		_, err = s.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return true
		}
		sleepCtx(ctx, 5*time.Millisecond)
	}
	return false
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
