package kafkaapi

import (
	"encoding/binary"
	"hash/crc32"
	"math"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kmsg"
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
