package producer

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	createtopicsapi "github.com/segmentio/kafka-go/protocol/createtopics"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/segmentio/kafka-go/protocol/rawproduce"

	"github.com/spillway/spillway/pkg/record"
)

// How records reach Kafka, shaped like franz-go's sink (kgo/sink.go).
// Each partition has a queue. Each broker has a sink (brokerSender) that
// owns the queues of the partitions it leads, as the topics' layouts say:
// the layouts are the one source of leaders, and each reading of one
// moves the queues whose leader changed to their new leader's sink, with
// their records in order (rehome). A sink keeps a list of its queues that
// have records, and runs a goroutine while that list is not empty: it
// takes every batch that is ready from those queues only, sends them in
// one produce request, and answers their records when Kafka has
// answered. A queue has
// at most one batch in flight, so records keep their order. Records that
// arrive while a request is in flight go out together in the next one, so
// batches grow with the load, and a request carries as many partitions as
// have records: a batch is ready once linger.ms has passed since its
// first record, or at once when it is full (batch.num.messages,
// batch.size or the topic's max.message.bytes, counted as Kafka counts
// it: encodedSize, batchBound) or the producer is closing. The producer
// writes each batch's bytes itself (encodeBatch), and kafka-go's
// transport carries them as they are.
//
// A batch is whole units (the records of one call to the partition, which
// a queue holds consecutively, since a call adds them at once): fit cuts
// between units, and inside one only when it alone is over the byte
// bound, or while a refused batch is halved to find its culprits.
//
// A batch mixes many callers' records, so when Kafka refuses it for some
// of its records (invalid, too large), only those fail: answer sends the
// others again (see there).
//
// When a partition's leader moves (Kafka answers NOT_LEADER_OR_FOLLOWER,
// LEADER_NOT_AVAILABLE or, for a topic it has, UNKNOWN_TOPIC_OR_PARTITION;
// or the connection breaks), its batch waits in the queue's retry list
// while the topic's leaders are read again at once (refreshLeaders, at
// most once per minLeaderRefresh a topic); that reading moves the queue
// to the new leader's sink, its retry list first, so its records keep
// their order. retries bounds the attempts at one leader: at a new leader they
// start again, so a batch follows its partition from leader to leader
// until its records' message timeout passes.
//
// What the producer keeps grows with the topics in use: once a minute
// (janitor), the topics no call used since the minute before, and the
// names of topics that do not exist, are forgotten with their empty
// queues, and so are the sinks that then own no queue (prune).

// topicPartition names one partition's queue.
type topicPartition struct {
	topic     string
	partition int
}

// queued is a record waiting in its partition's queue, and its place in
// the call that queued it.
type queued struct {
	key, value []byte
	headers    []record.Header // the record's own: its id follows them (spillway-id)
	id         string
	time       time.Time
	call       *call
	index      int // in the call's results
	size       int // encodedSize
	// failure is Kafka's answer to an earlier send of the record that
	// failed with an error that may pass (and Kafka may have stored it):
	// its answer if its call stops waiting before it is sent again.
	failure error
}

// partitionQueue holds one partition's records until they are sent.
type partitionQueue struct {
	tp topicPartition

	mu sync.Mutex
	// sink owns the queue: the sink of the broker that leads the
	// partition, as the topic's layout last said (rehome); listed says
	// the queue is in sink.active; dead says it was pruned, and add makes
	// another.
	sink     *brokerSender
	listed   bool
	dead     bool
	recs     []queued
	bytes    int       // the encodedSize of recs
	first    time.Time // when recs[0] was queued
	inFlight bool
	// nowUntil: recs[:nowUntil] holds a record of a StartNow call (0:
	// none), and the sink's next request goes without lingering.
	nowUntil int
	// retry holds records Kafka did not store, to go again before recs,
	// in order: a batch that failed with an error that may pass (not
	// before notBefore, attempts made), or what is left of a batch Kafka
	// refused for some of its records. While such a batch is split, at
	// most split records of retry go in one batch (0: no such bound).
	retry     []queued
	split     int
	attempts  int
	notBefore time.Time
	// awaitsLeaders: retry waits for the topic's leaders to be read again
	// (refreshLeaders), or for notBefore if that takes longer; its last
	// attempt was at sentTo.
	awaitsLeaders bool
	sentTo        int32
	// topicMax is the topic's max.message.bytes, as last read (0: not
	// known), and taught a bound that a MESSAGE_TOO_LARGE refusal of a
	// batch of several records taught (0: none): batchBound.
	topicMax, taught int
}

// batchBound is the most bytes, as Kafka counts them, of one of q's
// batches: batch.size, or the topic's max.message.bytes where it is
// smaller, or, while that is not known, half the size of the last batch
// Kafka refused as too large. q.mu is held.
func (q *partitionQueue) batchBound(batchBytes int) int {
	if q.topicMax > 0 {
		batchBytes = min(batchBytes, q.topicMax)
	}
	if q.taught > 0 {
		batchBytes = min(batchBytes, q.taught)
	}
	return batchBytes
}

// brokerSender is the sink of one broker: it owns the queues of the
// partitions that broker leads, as the topics' layouts say (q.sink), and
// sends their batches. active lists those of its queues that have records
// or a batch in flight: the only ones take visits. A queue joins it when
// it gets records (activate) and leaves it when take finds it empty, or
// owned by another sink since its leader moved (rehome).
type brokerSender struct {
	leader int32
	wake   chan struct{} // a batch may be ready

	mu      sync.Mutex
	running bool              // its goroutine (send) runs
	active  []*partitionQueue // may hold a queue twice, or one owned by another sink now: take drops those
}

// queueOf is tp's queue, made (owned by the sink of leader) if there is
// none yet.
func (p *Producer) queueOf(tp topicPartition, leader int32) *partitionQueue {
	p.mu.Lock()
	defer p.mu.Unlock()
	qs := p.queues[tp.topic]
	if tp.partition < len(qs) && qs[tp.partition] != nil {
		return qs[tp.partition]
	}
	if tp.partition >= len(qs) {
		qs = append(qs, make([]*partitionQueue, tp.partition+1-len(qs))...)
		p.queues[tp.topic] = qs
	}
	q := &partitionQueue{tp: tp, sink: p.sinkOf(leader)}
	qs[tp.partition] = q
	p.queueCount++
	return q
}

// sinkOf is leader's sink, made if there is none. p.mu is held.
func (p *Producer) sinkOf(leader int32) *brokerSender {
	s, ok := p.senders[leader]
	if !ok {
		s = &brokerSender{leader: leader, wake: make(chan struct{}, 1)}
		p.senders[leader] = s
	}
	return s
}

// add queues recs (all of tp), which the caller no longer uses, and wakes
// the sink that owns tp's queue. leader is tp's leader as the caller's
// layout said: it only places a queue made now (later moves are the
// layouts' to make: rehome). topicMax is tp's topic's max.message.bytes as
// last read, or 0. The caller holds closeMu for reading, and the producer
// is not closing.
func (p *Producer) add(tp topicPartition, leader int32, topicMax int, recs []queued) {
	var q *partitionQueue
	for {
		q = p.queueOf(tp, leader)
		q.mu.Lock()
		if !q.dead {
			break
		}
		q.mu.Unlock() // pruned meanwhile: make another
	}
	if topicMax != q.topicMax {
		q.topicMax, q.taught = topicMax, 0 // what a refusal taught is for the limit before
	}
	q.push(recs)
	q.mu.Unlock()
	p.activate(q, true)
}

// push queues recs behind q's records: an empty queue takes recs as they
// are (the caller's, given up: no copy), and a queue with records copies
// them on, into twice the room the records need when it must grow (append
// grows a large slice by a quarter, so calls joining a busy queue would
// copy it again at almost every call). nowUntil then covers the last
// StartNow record. q.mu is held.
func (q *partitionQueue) push(recs []queued) {
	switch n := len(q.recs) + len(recs); {
	case len(q.recs) == 0:
		q.first = time.Now()
		q.recs = recs
	case n > cap(q.recs):
		grown := make([]queued, n, 2*n)
		copy(grown[copy(grown, q.recs):], recs)
		q.recs = grown
	default:
		q.recs = append(q.recs, recs...)
	}
	now := false
	for _, r := range recs {
		q.bytes += r.size
		now = now || r.call.now
	}
	if now {
		q.nowUntil = len(q.recs)
	}
}

// activate lists q among its sink's active queues and wakes the sink:
// starts its goroutine, or tells the running one to look again. A sink
// not running is started only when mayStart: the caller is a goroutine
// Close waits for (a sender, refreshLeaders, lookUp), or holds closeMu for
// reading while the producer is not closing; otherwise q waits, listed,
// for the next wake.
func (p *Producer) activate(q *partitionQueue, mayStart bool) {
	for {
		q.mu.Lock()
		s := q.sink
		q.mu.Unlock()
		s.mu.Lock()
		q.mu.Lock()
		if q.sink != s { // moved meanwhile: to its new sink
			q.mu.Unlock()
			s.mu.Unlock()
			continue
		}
		if !q.listed {
			q.listed = true
			s.active = append(s.active, q)
		}
		q.mu.Unlock()
		start := !s.running && mayStart
		s.running = s.running || mayStart
		s.mu.Unlock()
		if start {
			p.running.Add(1)
			go p.send(s)
			return
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
		return
	}
}

// ready is one partition's batch, taken for a request.
type ready struct {
	q       *partitionQueue
	batch   []queued
	attempt int
	leader  int32 // the broker it is sent to: its sink's
}

// take takes the batches ready to go to s's broker. When none is, it
// returns how long until the first one will be, or 0 when none is queued:
// s is then marked stopped, and its goroutine ends. left are the records
// sent before that left a queue unsent again because their call stopped
// waiting, to be answered once the locks are released. It visits s's
// active queues only, and drops from them those found empty or moved to
// another sink.
func (p *Producer) take(s *brokerSender) (out []ready, left []queued, wait time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		waiting    bool
		now        = time.Now()
		closing    = p.closing.Load()
		send       = closing // a batch is full, a retry is due, or linger passed
		oldest     time.Time
		candidates []*partitionQueue
	)
	soonest := func(d time.Duration) {
		if !waiting || d < wait {
			wait, waiting = d, true
		}
	}
	// The queues of s's broker that have records and none in flight; the
	// request goes when one of them is full or due, or linger.ms after
	// the oldest record of them all, and then takes them all: the
	// partitions of a broker go together, not each at its own linger.
	p.visits.Add(int64(len(s.active)))
	kept := s.active[:0]
	for _, q := range s.active {
		q.mu.Lock()
		switch {
		case q.sink != s: // moved: listed at its new sink
		case !q.inFlight && len(q.recs) == 0 && len(q.retry) == 0:
			q.listed = false
		default:
			kept = append(kept, q)
		}
		switch {
		case q.sink != s || q.inFlight || (len(q.recs) == 0 && len(q.retry) == 0):
		case len(q.retry) > 0 && now.Before(q.notBefore) && !closing:
			soonest(q.notBefore.Sub(now))
		default:
			candidates = append(candidates, q)
			if q.nowUntil > 0 || len(q.retry) > 0 || len(q.recs) >= p.batchSize || batchOverhead+q.bytes >= q.batchBound(p.batchBytes) {
				send = true
			}
			if len(q.recs) > 0 && (oldest.IsZero() || q.first.Before(oldest)) {
				oldest = q.first
			}
		}
		q.mu.Unlock()
	}
	clear(s.active[len(kept):])
	s.active = kept
	if cap(s.active) > 64 && cap(s.active) > 4*len(s.active) { // once many partitions were active: give the array back
		s.active = slices.Clip(slices.Clone(s.active))
	}
	if len(candidates) > 0 && !send {
		if age := now.Sub(oldest); age < p.linger {
			soonest(p.linger - age)
		} else {
			send = true
		}
	}
	if send {
		for _, q := range candidates {
			q.mu.Lock()
			if len(q.retry) > 0 && !q.inFlight {
				batch, dropped := q.takeRetry(p.batchSize, q.batchBound(p.batchBytes))
				left = append(left, dropped...)
				if len(batch) > 0 {
					out = append(out, ready{q: q, batch: batch, attempt: q.attempts, leader: s.leader})
					q.inFlight = true
				}
			}
			for !q.inFlight && len(q.recs) > 0 {
				if batch := q.takeBatch(p.batchSize, q.batchBound(p.batchBytes)); len(batch) > 0 {
					out = append(out, ready{q: q, batch: batch, leader: s.leader})
					q.inFlight = true
				}
			}
			q.mu.Unlock()
		}
	}
	if len(out) == 0 && !waiting {
		s.running = false
		return nil, left, 0
	}
	return out, left, max(wait, time.Microsecond)
}

// takeBatch takes the first records of q, up to a batch's bounds, less
// those withdrawn or whose call has expired. q.recs holds no record sent
// before: none is left to answer.
func (q *partitionQueue) takeBatch(maxRecords, maxBytes int) []queued {
	batch, _ := toSend(q.takeRecords(maxRecords, maxBytes))
	return batch
}

func (q *partitionQueue) takeRecords(maxRecords, maxBytes int) []queued {
	n, size := fit(q.recs, maxRecords, maxBytes)
	var batch []queued
	if n == len(q.recs) { // all of them, as mostly: no copy
		batch, q.recs = q.recs, nil
	} else {
		batch = make([]queued, n)
		copy(batch, q.recs)
		rest := copy(q.recs, q.recs[n:])
		clear(q.recs[rest:])
		q.recs = q.recs[:rest]
	}
	q.bytes -= size
	q.nowUntil = max(0, q.nowUntil-n)
	q.first = time.Now()
	return batch
}

// takeRetry takes the first records of q.retry, up to a batch's bounds
// and the split's, less those whose call has expired: it returns those
// apart, to be answered (toSend).
func (q *partitionQueue) takeRetry(maxRecords, maxBytes int) (batch, left []queued) {
	q.retry, left = toSend(q.retry)
	var n int
	if q.split > 0 { // halving a refused batch to find its culprits: units are cut
		n, _ = fitRecords(q.retry, min(maxRecords, q.split), maxBytes)
	} else {
		n, _ = fit(q.retry, maxRecords, maxBytes)
	}
	batch = q.retry[:n:n]
	if q.retry = q.retry[n:]; len(q.retry) == 0 {
		q.retry = nil
	}
	return batch, left
}

// fit is how many of recs, from the first, go in one batch, and their
// encodedSize: whole units (the records of one call, which are
// consecutive in a queue: see the package comment on units) while the
// batch stays within maxRecords records and maxBytes bytes as Kafka
// counts them. The first unit goes whole whatever its count, and alone
// when it is over maxRecords; a first unit over maxBytes goes in as many
// of its records as fit (one at least, however large), the rest of it
// first in the next batch.
func fit(recs []queued, maxRecords, maxBytes int) (n, size int) {
	for n < len(recs) {
		end, unit := n, 0
		for end < len(recs) && recs[end].call == recs[n].call {
			unit += recs[end].size
			end++
		}
		switch {
		case n > 0 && (end > maxRecords || batchOverhead+size+unit > maxBytes):
			return n, size
		case n == 0 && batchOverhead+unit > maxBytes:
			return fitRecords(recs[:end], end, maxBytes)
		}
		n, size = end, size+unit
	}
	return n, size
}

// fitRecords is fit without units: as many records as fit, from the
// first (one at least, however large).
func fitRecords(recs []queued, maxRecords, maxBytes int) (n, size int) {
	for n < len(recs) && n < maxRecords && (n == 0 || batchOverhead+size+recs[n].size <= maxBytes) {
		size += recs[n].size
		n++
	}
	return n, size
}

// batchOverhead is a record batch's header (magic 2), which Kafka counts
// against message.max.bytes with the records.
const batchOverhead = 61

// encodedSize is a record's size in a batch (magic 2), uncompressed, as
// Kafka counts it against message.max.bytes: its key, value and headers
// (Spillway's own too) with their lengths, its length and attributes, and
// its timestamp and offset deltas at their largest (a varlong and a
// varint), since they depend on the batch the record joins. It is at most
// about a dozen bytes over; compression only makes the batch smaller.
func encodedSize(key, value []byte, headers []record.Header, id string) int {
	n := 1 + binary.MaxVarintLen64 + binary.MaxVarintLen32 + fieldsSize(key, value, headers, id)
	return varlongSize(int64(n)) + n
}

// send is s's goroutine: it runs until none of its partitions has records.
func (p *Producer) send(s *brokerSender) {
	defer p.running.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batches, left, wait := p.take(s)
		for i := range left {
			left[i].leave()
		}
		if len(batches) > 0 {
			p.produce(batches)
			continue
		}
		if wait == 0 {
			return
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
		case <-p.closed:
			timer.Stop()
		}
	}
}

// produce sends batches, all of one sink, in one request, and answers
// each batch's records, or queues them again (answer).
func (p *Producer) produce(batches []ready) {
	p.produceTo(batches)
}

// produceTo sends batches, all led by one broker, in one request. A
// batch that cannot be encoded (its codec failed) fails its records.
func (p *Producer) produceTo(batches []ready) {
	req := &rawproduce.Request{
		Acks:    int16(p.acks),
		Timeout: int32(p.writeTimeout.Milliseconds()),
	}
	topicIndex := map[string]int{}
	now := time.Now()
	codec := p.compression.Codec()
	compression := int16(p.compression) & 0x7
	sent := batches[:0:0]
	for _, b := range batches {
		encoded, err := encodeBatch(b.batch, compression, codec, now)
		if err != nil {
			p.answer(b, nil, fmt.Errorf("compressing a batch with %s: %w", codec.Name(), err))
			continue
		}
		sent = append(sent, b)
		i, ok := topicIndex[b.q.tp.topic]
		if !ok {
			i = len(req.Topics)
			topicIndex[b.q.tp.topic] = i
			req.Topics = append(req.Topics, rawproduce.RequestTopic{Topic: b.q.tp.topic})
		}
		req.Topics[i].Partitions = append(req.Topics[i].Partitions, rawproduce.RequestPartition{
			Partition: int32(b.q.tp.partition),
			RecordSet: protocol.RawRecordSet{Reader: bytes.NewReader(encoded)},
		})
	}
	if batches = sent; len(batches) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.writeTimeout)
	resp, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, req)
	cancel()
	var unrouted *rawproduce.Error
	if errors.As(err, &unrouted) {
		// The transport routes a produce by its own copy of the cluster's
		// metadata, which our layouts are read from but may be newer than
		// them: it routes none of it as the layouts grouped it (a topic or
		// partition gone, a leader moved or missing), and nothing was
		// sent. Our layouts are read again, and each batch goes alone, so
		// that one partition's trouble is not its neighbours'.
		for _, b := range batches {
			p.forgetLayout(b.q.tp.topic)
		}
		if len(batches) > 1 {
			for _, b := range batches {
				p.produceTo([]ready{b})
			}
			return
		}
	}

	answers := map[topicPartition]*produceapi.ResponsePartition{}
	if r, ok := resp.(*produceapi.Response); ok && err == nil {
		for i := range r.Topics {
			for j := range r.Topics[i].Partitions {
				rp := &r.Topics[i].Partitions[j]
				answers[topicPartition{r.Topics[i].Topic, int(rp.Partition)}] = rp
			}
		}
	}
	for _, b := range batches {
		p.answer(b, answers[b.q.tp], err)
	}
}

// answer completes b from Kafka's answer: rp, its partition's part of the
// response, or err when the request failed as a whole (rp is nil with
// acks 0). It is the one place that decides each record's outcome:
//
//   - Kafka stored the batch: its records are delivered.
//   - Kafka refused the batch for some of its records (inRecord: invalid,
//     too large), and a batch mixes many callers' records, so only those
//     fail. When Kafka names them (RecordErrors, KIP-467, produce v8 and
//     later) they fail with its message, and the others go again in a new
//     batch. When it names none (older brokers, or a batch over
//     message.max.bytes), the batch goes again in halves, halved again
//     while refused, until a record refused alone fails. Kafka stores
//     nothing of a batch it refuses, so nothing is sent twice; these sends
//     do not count as retries, since each one answers records or halves
//     the batch.
//   - A leader that moved (movedLeader) sends the batch again once the
//     topic's leaders were read again (planLeaderRefresh), while attempts
//     are left at the leader it was sent to, or the partition has another
//     leader now, where its attempts start again (refreshLeaders), and the
//     producer is not closing. So it follows the partition from leader to
//     leader until its records' message timeout passes (toSend drops them
//     then), and their callers see nothing of it.
//   - Another error that may pass sends the batch again after a backoff,
//     while attempts are left (retries) and the producer is not closing.
//   - Otherwise every record of the batch fails.
//
// What goes again goes first, before the records queued after it, so a
// partition's records keep their order.
func (p *Producer) answer(b ready, rp *produceapi.ResponsePartition, err error) {
	q, offset := b.q, int64(-1)
	if err == nil && p.acks != kafka.RequireNone {
		switch {
		case rp == nil:
			err = errors.New("kafka's answer did not name the partition")
		case rp.ErrorCode != 0:
			err = kafka.Error(rp.ErrorCode)
		default:
			offset = rp.BaseOffset
		}
	}
	var message string // Kafka's, for the batch
	if rp != nil {
		message = rp.ErrorMessage
	}
	var (
		again    []queued // to send again, first
		split    int      // then at most this many records a batch
		taught   int      // a bound on q's batches that a refusal as too large taught
		attempts = b.attempt
		delay    time.Duration
		moved    bool // the batch waits for its leader to be read again
	)
	switch named := culprits(rp, len(b.batch)); {
	case err == nil:
		for i := range b.batch {
			r := record.Result{Outcome: record.Delivered, Topic: q.tp.topic, Partition: int32(q.tp.partition), Offset: -1, Timestamp: b.batch[i].time}
			if offset >= 0 {
				r.Offset = offset + int64(i)
			}
			b.batch[i].answer(r)
		}
		attempts = 0
	case inRecord(err) && len(named) > 0:
		again = make([]queued, 0, len(b.batch)-len(named))
		for i := range b.batch {
			if m, ok := named[i]; ok {
				b.batch[i].answer(record.Fail(q.tp.topic, refusal(err, m)))
			} else {
				again = append(again, b.batch[i])
			}
		}
	case inRecord(err) && len(b.batch) > 1:
		again, split = b.batch, (len(b.batch)+1)/2
		if tooLarge(err) {
			size := batchOverhead
			for i := range b.batch {
				size += b.batch[i].size
			}
			taught = max(size/2, batchOverhead+1)
		}
		p.logger.Debug("kafka refused a batch for some of its records; splitting it", "topic", q.tp.topic, "partition", q.tp.partition,
			"records", len(b.batch), "error", err)
	case p.movedLeader(q.tp.topic, err) && !p.closing.Load() && (b.attempt+1 < p.maxAttempts || p.leaderOf(q.tp) != b.leader):
		p.logger.Debug("kafka produce found the partition's leader moved; retrying at the new leader", "topic", q.tp.topic, "partition", q.tp.partition,
			"records", len(b.batch), "attempt", b.attempt+1, "error", err)
		again, attempts, moved = b.batch, b.attempt+1, true
		if p.leaderOf(q.tp) != b.leader { // read again since it was sent: a new leader, new attempts
			attempts = 0
		}
		failure := refusal(err, message)
		for i := range again {
			again[i].failure = failure
		}
	case retriable(err) && b.attempt+1 < p.maxAttempts && !p.closing.Load():
		p.logger.Debug("kafka produce failed; retrying", "topic", q.tp.topic, "partition", q.tp.partition,
			"records", len(b.batch), "attempt", b.attempt+1, "error", err)
		again, attempts, delay = b.batch, b.attempt+1, backoff(b.attempt+1, p.backoffMin, p.backoffMax)
		failure := refusal(err, message)
		for i := range again {
			again[i].failure = failure
		}
	default:
		failure := refusal(err, message)
		for i := range b.batch {
			b.batch[i].answer(record.Fail(q.tp.topic, failure))
		}
		attempts = 0
	}

	again, left := toSend(again)
	for i := range left {
		left[i].leave()
	}
	q.mu.Lock()
	var refresh bool
	if moved { // under q.mu, so that the reading's move finds the retry
		refresh, delay = p.planLeaderRefresh(q.tp.topic)
	}
	switch {
	case len(again) > 0:
		q.retry = slices.Concat(again, q.retry)
		q.notBefore = time.Now().Add(delay)
		q.awaitsLeaders, q.sentTo = moved, b.leader
		if split > 0 {
			q.split = split
		}
		if taught > 0 {
			q.taught = min(taught, cmp.Or(q.taught, taught))
		}
	case q.split > 0: // a part of a split batch went: try twice as many
		q.split *= 2
	}
	q.attempts = attempts
	if len(q.retry) == 0 {
		q.retry, q.split, q.attempts, q.awaitsLeaders = nil, 0, 0, false
	}
	q.inFlight = false
	q.mu.Unlock()
	if refresh {
		p.running.Add(1) // this sender is running: Close waits for both
		go p.refreshLeaders(q.tp.topic)
	}
	p.wakeIfPending(q)
}

// movedLeader says whether err says that the partition's leader moved, or
// may have: Kafka's NOT_LEADER_OR_FOLLOWER or LEADER_NOT_AVAILABLE, its
// UNKNOWN_TOPIC_OR_PARTITION for a topic the producer has a layout of
// (the leader it asked is not one of the partition's replicas any more),
// no leader in the transport's metadata, or a connection that broke.
func (p *Producer) movedLeader(topic string, err error) bool {
	switch {
	case errors.Is(err, kafka.NotLeaderForPartition), errors.Is(err, kafka.LeaderNotAvailable),
		errors.Is(err, protocol.ErrNoLeader),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	case errors.Is(err, kafka.UnknownTopicOrPartition):
		l, ok := p.cachedLayout(topic)
		return ok && l.err == nil
	}
	return false
}

// leaderOf is tp's leader as the producer's layout of its topic says, or
// -1.
func (p *Producer) leaderOf(tp topicPartition) int32 {
	l, _ := p.cachedLayout(tp.topic)
	if tp.partition < len(l.layout.leaders) {
		return l.layout.leaders[tp.partition]
	}
	return -1
}

// leaderRefresh is when a topic's leaders were last read again because a
// produce found one moved, and whether that reading still runs.
type leaderRefresh struct {
	at      time.Time
	running bool
}

// minLeaderRefresh spaces the readings of a topic's leaders after a move:
// a move fails every batch in flight to the partition, and each would ask.
const minLeaderRefresh = 100 * time.Millisecond

// planLeaderRefresh is for a batch of topic's that goes again because its
// leader moved: it says whether to read the topic's leaders again now (no
// reading runs, and none began in the last minLeaderRefresh), and how long
// the batch waits. It waits for the reading, or the one running, to move
// it (refreshLeaders), or longer if that reading takes longer than
// retry.backoff.max.ms; after a reading that ended in the last
// minLeaderRefresh, it waits until minLeaderRefresh after that reading
// began, when it may ask for another. q.mu is held.
func (p *Producer) planLeaderRefresh(topic string) (refresh bool, wait time.Duration) {
	readingWait := max(p.backoffMax, minLeaderRefresh)
	p.layoutMu.Lock()
	defer p.layoutMu.Unlock()
	r := p.moved[topic]
	switch since := time.Since(r.at); {
	case r.running:
		return false, readingWait
	case since < minLeaderRefresh:
		return false, minLeaderRefresh - since
	}
	p.moved[topic] = leaderRefresh{at: time.Now(), running: true}
	return true, readingWait
}

// refreshLeaders reads topic's leaders again after a produce found one
// moved, which moves the topic's queues to the sinks of their partitions'
// new leaders (readLayout, rehome), and sends at once the batches that
// waited for it.
func (p *Producer) refreshLeaders(topic string) {
	defer p.running.Done()
	ctx, cancel := context.WithTimeout(context.Background(), p.writeTimeout)
	defer cancel()
	// The transport routes a produce by its own copy of the cluster's
	// metadata, read every topic.metadata.refresh.interval.ms, and at once
	// after it has an answer to a CreateTopics request (kafka-go's
	// connPool.roundTrip): one that creates no topic has it read the
	// metadata now, and returns once it has.
	if _, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, &createtopicsapi.Request{}); err != nil {
		p.logger.Debug("kafka metadata could not be read again after a leader moved", "topic", topic, "error", err)
	}
	l, err := p.readLayout(ctx, topic)
	p.layoutMu.Lock()
	r := p.moved[topic]
	r.running = false
	p.moved[topic] = r
	p.layoutMu.Unlock()

	_, _ = l, err // readLayout moved the queues (rehome)
	p.mu.Lock()
	queues := slices.Clone(p.queues[topic])
	p.mu.Unlock()
	for _, q := range queues {
		if q == nil {
			continue
		}
		q.mu.Lock()
		if q.awaitsLeaders {
			q.notBefore, q.awaitsLeaders = time.Time{}, false
			if q.sink.leader != q.sentTo {
				q.attempts = 0 // the attempts at the leader that moved do not count at the new one
			}
		}
		q.mu.Unlock()
		p.wakeIfPending(q)
	}
}

// culprits are the records of a batch of n that Kafka named as those it
// refused the batch for (RecordErrors), each with Kafka's message; none
// when it named none that the batch has.
func culprits(rp *produceapi.ResponsePartition, n int) map[int]string {
	if rp == nil {
		return nil
	}
	var out map[int]string
	for _, e := range rp.RecordErrors {
		if i := int(e.BatchIndex); i >= 0 && i < n {
			if out == nil {
				out = make(map[int]string, len(rp.RecordErrors))
			}
			out[i] = cmp.Or(e.BatchIndexErrorMessage, rp.ErrorMessage)
		}
	}
	return out
}

// inRecord says whether Kafka refused a batch for what some of its
// records are rather than for the state of the partition or the cluster:
// a batch without those records would be stored.
func inRecord(err error) bool {
	var code kafka.Error
	if !errors.As(err, &code) {
		return false
	}
	switch code {
	case kafka.InvalidRecord, kafka.InvalidTimestamp, kafka.InvalidMessage, kafka.InvalidMessageSize,
		kafka.MessageSizeTooLarge, kafka.RecordListTooLarge:
		return true
	}
	return false
}

// tooLarge says whether Kafka refused a batch for its size.
func tooLarge(err error) bool {
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge)
}

// answer sets the record's result, and answers its call when it was the
// call's last record.
func (r *queued) answer(res record.Result) {
	c := r.call
	c.mu.Lock()
	c.results[r.index] = res
	c.remaining--
	c.answerIfDone()
}

// wakeIfPending wakes q's sink when q has records: its leader may have
// changed while its batch was in flight, and the sink of the new one may
// have found it busy and stopped. The caller is a goroutine Close waits
// for.
func (p *Producer) wakeIfPending(q *partitionQueue) {
	q.mu.Lock()
	pending := len(q.recs) > 0 || len(q.retry) > 0
	q.mu.Unlock()
	if pending {
		p.activate(q, true)
	}
}

// rehome moves topic's queues to the sinks of their partitions' leaders
// in l, the topic's layout just read: the layouts are the one source of
// leaders. A queue moves with its records, in order, and its batch in
// flight (answered as usual); the sink it leaves drops it on its next
// pass. A queue with records wakes its new sink.
func (p *Producer) rehome(topic string, l layout) {
	var moved []*partitionQueue
	p.mu.Lock()
	for i, q := range p.queues[topic] {
		if q == nil || i >= len(l.leaders) {
			continue
		}
		q.mu.Lock()
		if q.sink.leader != l.leaders[i] {
			q.sink, q.listed = p.sinkOf(l.leaders[i]), false
			if q.inFlight || len(q.recs) > 0 || len(q.retry) > 0 {
				moved = append(moved, q)
			}
		}
		q.mu.Unlock()
	}
	p.mu.Unlock()
	if len(moved) == 0 {
		return
	}
	p.closeMu.RLock()
	mayStart := !p.closing.Load()
	for _, q := range moved {
		p.activate(q, mayStart)
	}
	p.closeMu.RUnlock()
}

// pruneEvery is how often the producer forgets the topics no call used
// since the last time (prune): a topic unused for one to two of these is
// read again at its next use, as a new one.
const pruneEvery = time.Minute

// janitor prunes every pruneEvery until the producer closes.
func (p *Producer) janitor() {
	defer p.running.Done()
	tick := time.NewTicker(pruneEvery)
	defer tick.Stop()
	for {
		select {
		case <-p.closed:
			return
		case <-tick.C:
			p.prune()
		}
	}
}

// prune forgets the topics that no call used since the last prune, and
// have nothing queued: their layouts (those of topics that do not exist
// too: any name a client tried), their queues, and the sinks that then
// own no queue and do not run. So what the producer keeps grows with the
// topics in use, not with every topic and partition it ever saw; a topic
// deleted in Kafka is forgotten once its clients stop naming it.
func (p *Producer) prune() {
	var idle []string
	p.layoutMu.RLock()
	for t, l := range p.layouts {
		if l.used == nil || !l.used.Swap(false) {
			idle = append(idle, t)
		}
	}
	p.layoutMu.RUnlock()

	var gone []string
	p.mu.Lock()
	for _, t := range idle {
		qs, left := p.queues[t], 0
		for i, q := range qs {
			if q == nil {
				continue
			}
			q.mu.Lock() // an idle queue is marked dead under its lock, so add never queues into it
			if q.inFlight || len(q.recs) > 0 || len(q.retry) > 0 {
				left++
			} else {
				q.dead, qs[i] = true, nil
				p.queueCount--
			}
			q.mu.Unlock()
		}
		if left == 0 {
			delete(p.queues, t)
			gone = append(gone, t)
		}
	}
	owners := map[*brokerSender]bool{}
	for _, qs := range p.queues {
		for _, q := range qs {
			if q != nil {
				q.mu.Lock()
				owners[q.sink] = true
				q.mu.Unlock()
			}
		}
	}
	for leader, s := range p.senders {
		s.mu.Lock()
		if !owners[s] && !s.running && len(s.active) == 0 {
			delete(p.senders, leader)
		}
		s.mu.Unlock()
	}
	p.mu.Unlock()

	p.layoutMu.Lock()
	for _, t := range gone {
		if l, ok := p.layouts[t]; ok && (l.used == nil || !l.used.Load()) {
			delete(p.layouts, t)
			delete(p.refreshing, t)
			delete(p.moved, t)
		}
	}
	p.layoutMu.Unlock()
}

// toSend splits batch, records about to be sent (again), into those to
// send and those whose call no longer waits for them: withdrawn, or
// expired. Those are not sent, since the caller spilled or failed them and
// sending them too would deliver them twice. A record not sent before is
// marked sent here, unless it was withdrawn first (the two are decided by
// one compare-and-swap, so a withdrawn record is never sent and a record
// sent is never reported withdrawn); a withdrawn one is answered already.
// left are those sent before, to be answered (leave) once no lock is held.
//
// The records of one call that are consecutive in batch (a unit) are
// decided under the call's lock, which withdraw holds while it withdraws:
// a unit goes whole or not at all. q.mu may be held: it is taken before a
// call's mu, never after.
func toSend(batch []queued) (kept, left []queued) {
	var locked *call
	all := true // every record so far is kept: kept is batch[:i], not yet copied
	drop := func(i int) {
		if all {
			kept, all = append(batch[:0:0], batch[:i]...), false
		}
	}
	for i := range batch {
		r := &batch[i]
		if r.call != locked {
			if locked != nil {
				locked.mu.Unlock()
			}
			locked = r.call
			locked.mu.Lock()
		}
		state := &r.call.state[r.index]
		switch {
		case state.Load() == sent && r.call.expired.Load():
			drop(i)
			left = append(left, *r)
		case state.Load() == sent || state.CompareAndSwap(pending, sent):
			if !all {
				kept = append(kept, *r)
			}
		default:
			drop(i)
		}
	}
	if locked != nil {
		locked.mu.Unlock()
	}
	if all {
		return batch, nil
	}
	return kept, left
}

// leave answers a record sent before that is not sent again because its
// call stopped waiting: with Kafka's answer to its last send when that may
// pass (Kafka may have stored it), or as withdrawn when Kafka stored
// nothing of its batch (refused for another record).
func (r *queued) leave() {
	err := r.failure
	if err == nil {
		err = &record.Error{Reason: record.ReasonTimeout, Message: "the record was withdrawn before it was sent again; Kafka stored none of its earlier batch", Err: record.ErrWithdrawn}
	}
	c := r.call
	c.mu.Lock()
	c.results[r.index] = record.Fail(c.results[r.index].Topic, err)
	c.remaining--
	c.answerIfDone()
}

// retriable is kafka-go's Writer's rule: Kafka errors it calls temporary,
// and connections that broke; and a partition without a leader.
func retriable(err error) bool {
	var temporary interface{ Temporary() bool }
	if errors.As(err, &temporary) && temporary.Temporary() {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, protocol.ErrNoLeader) // the transport knows no leader yet
}

// backoff doubles from min up to max, with jitter, as kafka-go's Writer.
func backoff(attempt int, minDelay, maxDelay time.Duration) time.Duration {
	d := minDelay << (attempt - 1)
	if d <= 0 || d > maxDelay {
		d = maxDelay
	}
	return d/2 + rand.N(d/2+1)
}
