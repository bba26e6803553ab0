package kafkaapi

import (
	"encoding/binary"
	"hash/crc32"
	"math"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/record"
)

// idempotentBatch is batch's records as producer pid's batch at epoch
// and first sequence seq.
func idempotentBatch(tb testing.TB, pid int64, epoch int16, seq int32, recs ...kmsg.Record) []byte {
	tb.Helper()
	raw := batch(tb, 0, recs...)
	var b kmsg.RecordBatch
	if err := b.ReadFrom(raw); err != nil {
		tb.Fatal(err)
	}
	b.ProducerID, b.ProducerEpoch, b.FirstSequence = pid, epoch, seq
	raw = b.AppendTo(nil)
	binary.BigEndian.PutUint32(raw[8:12], uint32(len(raw)-12))
	binary.BigEndian.PutUint32(raw[17:21], crc32.Checksum(raw[21:], castagnoli))
	return raw
}

// TestSequenceWraps: a batch's last sequence and the next one wrap from
// 2^31-1 to 0, as Kafka's DefaultRecordBatch.incrementSequence and
// ProducerAppendInfo.inSequence have them.
func TestSequenceWraps(t *testing.T) {
	for _, c := range []struct{ first, delta, last int32 }{
		{0, 0, 0}, {5, 4, 9}, {math.MaxInt32, 0, math.MaxInt32}, {math.MaxInt32, 1, 0}, {math.MaxInt32 - 1, 4, 2},
	} {
		if got := lastSequence(c.first, c.delta); got != c.last {
			t.Errorf("lastSequence(%d, %d) = %d, want %d", c.first, c.delta, got, c.last)
		}
	}
	if !inSequence(math.MaxInt32, 0) || !inSequence(4, 5) || inSequence(4, 6) || inSequence(math.MaxInt32, 1) {
		t.Error("inSequence")
	}
	ps := &partState{epoch: 1, batches: []sentBatch{{first: math.MaxInt32 - 2, last: math.MaxInt32, base: 7}}}
	if v, _ := ps.check(idemBatch{epoch: 1, first: 0, last: 3}); v != sendIt {
		t.Errorf("the batch after a wrap: %d, want sendIt", v)
	}
}

// TestParseRecordsIdempotent: an idempotent batch's producer fields come
// back with its records; two batches of a producer in one partition are
// refused, as Kafka refuses more than one batch from Produce v3.
func TestParseRecordsIdempotent(t *testing.T) {
	raw := idempotentBatch(t, 42, 3, math.MaxInt32-1, kmsg.Record{Value: []byte("a")}, kmsg.Record{Value: []byte("b")}, kmsg.Record{Value: []byte("c")})
	left, room := 10, 1<<20
	recs, idem, perr := parseRecords(raw, "orders", 0, &left, &room, 10, 1<<20)
	if perr != nil || len(recs) != 3 || idem == nil || *idem != (idemBatch{producerID: 42, epoch: 3, first: math.MaxInt32 - 1, last: 0}) {
		t.Fatalf("%d records, %+v, %v", len(recs), idem, perr)
	}
	left, room = 10, 1<<20
	if _, _, perr := parseRecords(append(raw, raw...), "orders", 0, &left, &room, 10, 1<<20); perr == nil {
		t.Error("two idempotent batches in one partition were taken")
	}
}

// TestIdempotenceStateSize measures what the state costs per producer id
// writing one partition: the figure docs/configuration.md gives for
// server.kafka.idempotent_producers.
func TestIdempotenceStateSize(t *testing.T) {
	const n = 20_000
	p := newProducers(n, prometheus.NewRegistry())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for id := int64(1); id <= n; id++ {
		states, release, err := p.claim(t.Context(), []int64{id})
		if err != nil {
			t.Fatal(err)
		}
		tp := topicPartition{"orders", 0}
		for seq := int32(0); seq < 5*10; seq += 10 {
			p.taken(states[id], tp, idemBatch{producerID: id, first: seq, last: seq + 9}, int64(seq))
		}
		release()
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes a producer id with 5 batches on one partition", per)
	if per > 2048 {
		t.Errorf("%.0f bytes a producer id: docs/configuration.md's figure is wrong", per)
	}
	runtime.KeepAlive(p)
}

// TestPartlyStoredBatch: a batch stored in part is remembered with its
// records' results for its retry only (same epoch, sequences and record
// count), and forgotten once a batch of the partition is taken; the
// answer gives a base offset only when every record is at base + i.
func TestPartlyStoredBatch(t *testing.T) {
	p := newProducers(10, prometheus.NewRegistry())
	states, release, err := p.claim(t.Context(), []int64{7})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	st, tp := states[7], topicPartition{"t", 0}
	b := idemBatch{producerID: 7, epoch: 1, first: 10, last: 12}
	part := []record.Result{{Outcome: record.Buffered, Offset: -1}, {Outcome: record.Failed}, {Outcome: record.Failed}}
	p.partly(st, tp, b, part)
	if got := p.stored(st, tp, b, 3); len(got) != 3 || got[0].Outcome != record.Buffered || got[1].Outcome != record.Failed {
		t.Fatalf("the retry's stored part: %+v", got)
	}
	for name, other := range map[string]idemBatch{
		"another epoch": {producerID: 7, epoch: 2, first: 10, last: 12},
		"another first": {producerID: 7, epoch: 1, first: 11, last: 12},
		"another last":  {producerID: 7, epoch: 1, first: 10, last: 13},
	} {
		if got := p.stored(st, tp, other, 3); got != nil {
			t.Errorf("%s: %+v, want nothing stored", name, got)
		}
	}
	if got := p.stored(st, tp, b, 4); got != nil {
		t.Errorf("another record count: %+v, want nothing stored", got)
	}
	if v, _, _ := p.check(st, tp, b); v != sendIt {
		t.Errorf("the retry of a batch stored in part: verdict %d, want sendIt", v)
	}
	p.taken(st, tp, b, -1)
	if got := p.stored(st, tp, b, 3); got != nil {
		t.Errorf("after the batch was taken: %+v, want nothing", got)
	}

	for _, c := range []struct {
		offsets []int64
		base    int64
	}{{[]int64{5, 6, 7}, 5}, {[]int64{5, 6, 9}, -1}, {[]int64{5, 2, 3}, -1}} {
		results := make([]record.Result, len(c.offsets))
		for i, o := range c.offsets {
			results[i] = record.Result{Outcome: record.Delivered, Offset: o}
		}
		var rp kmsg.ProduceResponseTopicPartition
		answer(&rp, results)
		if rp.ErrorCode != 0 || rp.BaseOffset != c.base {
			t.Errorf("offsets %v: base %d, error %d; want base %d", c.offsets, rp.BaseOffset, rp.ErrorCode, c.base)
		}
	}
}
