package kafkaapi

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spillway/spillway/pkg/record"
)

// Idempotence as Kafka's broker keeps it (ProducerStateManager,
// ProducerAppendInfo.checkSequence, ProducerStateEntry.findDuplicateBatch):
// for each producer id, epoch and partition the last five batches' first
// and last sequence and their answer. A batch that repeats one of them is
// answered as it was and not sent again; one that does not follow the
// last is OUT_OF_ORDER_SEQUENCE_NUMBER; an older epoch is
// INVALID_PRODUCER_EPOCH. A producer id the listener does not know (it
// restarted, the client moved from another ingest, or the id was evicted)
// is taken with any sequence, as a broker takes one whose state retention
// removed: it is how Kafka answers since 2.5 (KIP-360), and clients go on
// without resetting anything.

// batchesRetained is Kafka's ProducerStateEntry.NUM_BATCHES_TO_RETAIN, the
// in-flight requests an idempotent client may have
// (max.in.flight.requests.per.connection 5).
const batchesRetained = 5

// newProducerID is a random id from 1 to 2^63-1, so that replicas of the
// ingest and its restarts hand out distinct ids without talking to each
// other: n ids collide with a chance of about n²/2^64, 5·10^-8 for a
// million producers. kgo, sarama, librdkafka and the Java client take any
// id from 0 to 2^63-1 (-1 means none).
func newProducerID() int64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		if id := int64(binary.BigEndian.Uint64(b[:]) & math.MaxInt64); id != 0 {
			return id
		}
	}
}

type topicPartition struct {
	topic     string
	partition int32
}

// sentBatch is a batch taken and the base offset it was answered with
// (-1: buffered).
type sentBatch struct {
	first, last int32
	base        int64
}

// partState is a producer's state on one partition.
type partState struct {
	epoch   int16
	batches []sentBatch // oldest first, at most batchesRetained
	// partial is the batch after the last one taken, of which only some
	// records were stored (the buffer failed midway); nil: none.
	partial *partialBatch
}

// partialBatch is a batch answered with an error while some of its
// records were stored: results holds each record's result, Failed for
// the ones not stored. Its retry sends only those, and is answered from
// the two together.
type partialBatch struct {
	first, last int32
	results     []record.Result
}

// producerState is what the listener knows of one producer id.
type producerState struct {
	// busy is closed when the request that claimed the producer ends;
	// nil: no request holds it.
	busy  chan struct{}
	parts map[topicPartition]*partState
}

// verdict is what the state says of a batch.
type verdict uint8

const (
	sendIt     verdict = iota // new: send it
	duplicate                 // one of the last five: answer it as then
	outOfOrder                // a gap, or a new epoch not starting at 0
	staleEpoch                // an epoch older than the partition's
	// repeatsAhead: the batch of an earlier request of the same pipelined
	// group (followsAhead), which has no answer yet.
	repeatsAhead
)

// idemBatch is one partition's batch of an idempotent producer.
type idemBatch struct {
	producerID  int64
	epoch       int16
	first, last int32
}

// lastSequence is Kafka's DefaultRecordBatch.incrementSequence: the
// sequence wraps from 2^31-1 to 0.
func lastSequence(first, delta int32) int32 {
	if first > math.MaxInt32-delta {
		return delta - (math.MaxInt32 - first) - 1
	}
	return first + delta
}

// inSequence is Kafka's ProducerAppendInfo.inSequence.
func inSequence(last, next int32) bool {
	return int64(next) == int64(last)+1 || (next == 0 && last == math.MaxInt32)
}

// check is ProducerAppendInfo.checkSequence with the duplicate lookup
// before it (UnifiedLog.analyzeAndValidateProducerState); ps is nil for a
// partition the producer is not known on. It returns the earlier answer's
// base offset for a duplicate.
func (ps *partState) check(b idemBatch) (verdict, int64) {
	if ps == nil {
		return sendIt, 0
	}
	if b.epoch == ps.epoch {
		for _, s := range ps.batches {
			if s.first == b.first && s.last == b.last {
				return duplicate, s.base
			}
		}
	}
	switch {
	case b.epoch < ps.epoch:
		return staleEpoch, 0
	case b.epoch > ps.epoch:
		if b.first != 0 {
			return outOfOrder, 0
		}
		return sendIt, 0
	}
	if len(ps.batches) > 0 && !inSequence(ps.batches[len(ps.batches)-1].last, b.first) {
		return outOfOrder, 0
	}
	return sendIt, 0
}

// producerPartition is a producer id's partition.
type producerPartition struct {
	producerID int64
	tp         topicPartition
}

// followsAhead is check for b when an earlier request of its pipelined
// group sent prev, the producer's batch on tp just before it: b is
// checked against prev alone, as a broker would check it once prev is
// appended. A batch that repeats prev is repeatsAhead: prev's answer is
// not known yet.
func followsAhead(prev, b idemBatch, tp topicPartition) (verdict, string) {
	ps := &partState{epoch: prev.epoch, batches: []sentBatch{{first: prev.first, last: prev.last}}}
	v, _ := ps.check(b)
	if v == duplicate {
		return repeatsAhead, fmt.Sprintf("producer %d's batch %d-%d on %s-%d repeats one of an earlier request still waiting for its answer; send it again", b.producerID, b.first, b.last, tp.topic, tp.partition)
	}
	return v, ps.refusal(v, b, tp)
}

// expected is the sequence ps waits for, for error messages.
func (ps *partState) expected() string {
	if ps == nil || len(ps.batches) == 0 {
		return "any"
	}
	last := ps.batches[len(ps.batches)-1].last
	if last == math.MaxInt32 {
		return "0"
	}
	return fmt.Sprint(last + 1)
}

// producers is the idempotence state of every producer id the listener
// saw, least recently used evicted first beyond its size
// (server.kafka.idempotent_producers).
type producers struct {
	mu      sync.Mutex
	lru     *simplelru.LRU[int64, *producerState]
	entries prometheus.Gauge
	evicted prometheus.Counter
	dups    prometheus.Counter
}

func newProducers(size int, reg prometheus.Registerer) *producers {
	f := promauto.With(reg)
	p := &producers{
		entries: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_kafka_idempotent_producers",
			Help: "Producer ids whose last batches the Kafka listener keeps to answer their retries (at most server.kafka.idempotent_producers).",
		}),
		evicted: f.NewCounter(prometheus.CounterOpts{
			Name: "spillway_kafka_idempotent_producers_evicted_total",
			Help: "Producer ids the Kafka listener forgot, least recently used first, to stay within server.kafka.idempotent_producers: a retry of theirs is taken as new.",
		}),
		dups: f.NewCounter(prometheus.CounterOpts{
			Name: "spillway_kafka_duplicate_batches_total",
			Help: "Record batches of idempotent producers that repeated one already taken: answered as it was, not sent again.",
		}),
	}
	p.lru, _ = simplelru.NewLRU(size, func(int64, *producerState) { p.evicted.Inc() }) // size > 0: never fails
	return p
}

// claim waits until no other request holds any of ids, then holds them
// all, and returns their states and the function that lets them go. It
// gives up at ctx's end. A producer's requests are so taken one at a
// time, as a broker appends to a partition under its log's lock: a retry
// that arrives on a new connection while the first try is still on its
// way to Kafka waits for its answer, and is then a duplicate.
func (p *producers) claim(ctx context.Context, ids []int64) (map[int64]*producerState, func(), error) {
	slices.Sort(ids)
	ids = slices.Compact(ids)
	for {
		p.mu.Lock()
		var wait chan struct{}
		for _, id := range ids {
			if st, ok := p.lru.Peek(id); ok && st.busy != nil {
				wait = st.busy
				break
			}
		}
		if wait == nil {
			states := make(map[int64]*producerState, len(ids))
			done := make(chan struct{})
			for _, id := range ids {
				st, ok := p.lru.Get(id)
				if !ok {
					st = &producerState{parts: map[topicPartition]*partState{}}
					p.lru.Add(id, st)
				}
				st.busy = done
				states[id] = st
			}
			p.entries.Set(float64(p.lru.Len()))
			p.mu.Unlock()
			return states, func() {
				p.mu.Lock()
				for _, st := range states {
					st.busy = nil
				}
				p.mu.Unlock()
				close(done)
			}, nil
		}
		p.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// check says what to do with b, whose producer the caller claimed.
func (p *producers) check(st *producerState, tp topicPartition, b idemBatch) (verdict, int64, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := st.parts[tp]
	v, base := ps.check(b)
	if v == duplicate {
		p.dups.Inc()
	}
	return v, base, ps.refusal(v, b, tp)
}

// refusal is the message of verdict v of ps.check for b on tp; "" for a
// batch that is not refused.
func (ps *partState) refusal(v verdict, b idemBatch, tp topicPartition) string {
	switch v {
	case staleEpoch:
		return fmt.Sprintf("producer %d's epoch %d on %s-%d is older than its epoch %d", b.producerID, b.epoch, tp.topic, tp.partition, ps.epoch)
	case outOfOrder:
		if b.epoch != ps.epoch {
			return fmt.Sprintf("producer %d's new epoch %d on %s-%d starts at sequence %d, not 0", b.producerID, b.epoch, tp.topic, tp.partition, b.first)
		}
		return fmt.Sprintf("producer %d on %s-%d sent sequence %d, expected %s", b.producerID, tp.topic, tp.partition, b.first, ps.expected())
	}
	return ""
}

// stored is what was stored of b, of n records, when an earlier try of
// it was stored in part: each record's result, Failed for the ones still
// to send; nil when no part of it is stored.
func (p *producers) stored(st *producerState, tp topicPartition, b idemBatch, n int) []record.Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := st.parts[tp]
	if ps == nil || ps.partial == nil || ps.epoch != b.epoch || ps.partial.first != b.first || ps.partial.last != b.last || len(ps.partial.results) != n {
		return nil
	}
	return slices.Clone(ps.partial.results)
}

// partly records that of b only some records are stored, with results.
func (p *producers) partly(st *producerState, tp topicPartition, b idemBatch, results []record.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.part(st, tp, b)
	ps.partial = &partialBatch{first: b.first, last: b.last, results: slices.Clone(results)}
}

// part is the producer's state on tp for b's epoch, new when b starts one.
// The caller holds p.mu.
func (p *producers) part(st *producerState, tp topicPartition, b idemBatch) *partState {
	ps := st.parts[tp]
	if ps == nil || ps.epoch != b.epoch {
		ps = &partState{epoch: b.epoch}
		st.parts[tp] = ps
	}
	return ps
}

// taken records b, answered with base, as the producer's last batch on tp.
func (p *producers) taken(st *producerState, tp topicPartition, b idemBatch, base int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.part(st, tp, b)
	ps.partial = nil
	if len(ps.batches) == batchesRetained {
		ps.batches = slices.Delete(ps.batches, 0, 1)
	}
	ps.batches = append(ps.batches, sentBatch{first: b.first, last: b.last, base: base})
}

// claimWait bounds how long a produce waits for an earlier request of
// the same producer: its own timeout, within these bounds.
func claimWait(timeoutMillis int32) time.Duration {
	return min(max(time.Duration(timeoutMillis)*time.Millisecond, time.Second), 2*time.Minute)
}
