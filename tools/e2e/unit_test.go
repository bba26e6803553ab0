package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// batchOf is one uncompressed, non-idempotent record batch of values.
func batchOf(values []string) []byte {
	recs := make([]*kmsg.Record, len(values))
	for i, v := range values {
		recs[i] = &kmsg.Record{Value: []byte(v)}
	}
	return kafkatest.RecordBatch(recs...)
}

// TestKgoBatchRefusedWhole: a kgo batch of 10 records to a topic whose
// rule wants JSON, record 5 of which is not JSON, is refused whole: kgo
// gets INVALID_RECORD, the answer (Produce v8) names record 5 with the
// rule's message, and Kafka holds none of the 10. A batch of 10 valid
// records after it is taken whole.
func TestKgoBatchRefusedWhole(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	kafkatest.CreateTopic(t, k.addr, "strict", 1)
	cfg := filepath.Join(t.TempDir(), "spillway.yaml")
	if err := os.WriteFile(cfg, []byte("validation:\n  rules:\n    - topics: [strict]\n      json: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startIngest(t, k.addr, "-config="+cfg)
	values := func(tag string, bad int) []string {
		var out []string
		for i := range 10 {
			v := fmt.Sprintf(`{"batch":%q,"i":%d}`, tag, i)
			if i == bad {
				v = "not json"
			}
			out = append(out, v)
		}
		return out
	}

	// kgo, its 10 records in one batch (flushed together).
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.kafkaAddr), kgo.ManualFlushing(), kgo.RecordRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, v := range values("kgo", 5) {
		wg.Add(1)
		cl.Produce(t.Context(), &kgo.Record{Topic: "strict", Value: []byte(v)}, func(_ *kgo.Record, err error) {
			defer wg.Done()
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	if err := cl.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, kerr.InvalidRecord) {
			t.Errorf("kgo record %d: %v, want INVALID_RECORD for every record of the batch", i, err)
		}
	}

	// The same batch on the wire: the answer names record 5.
	req := kafkatest.ProduceRequest("strict", batchOf(values("raw", 5)))
	req.Version = 8
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	p := resp.Topics[0].Partitions[0]
	if p.ErrorCode != kerr.InvalidRecord.Code || p.BaseOffset != -1 {
		t.Errorf("answer: error %v, base offset %d; want INVALID_RECORD, -1", kerr.ErrorForCode(p.ErrorCode), p.BaseOffset)
	}
	if len(p.ErrorRecords) != 1 || p.ErrorRecords[0].RelativeOffset != 5 || p.ErrorRecords[0].ErrorMessage == nil ||
		!strings.Contains(*p.ErrorRecords[0].ErrorMessage, "validation rule json") {
		t.Errorf("record errors %+v, want record 5 with the json rule's message", p.ErrorRecords)
	}
	if p.ErrorMessage == nil || !strings.Contains(*p.ErrorMessage, "record 5 of this batch of 10") {
		t.Errorf("error message %v, want it to name record 5 of 10", deref(p.ErrorMessage))
	}

	// A good batch after: taken whole; then Kafka holds only it.
	good := values("good", -1)
	req.Topics[0].Partitions[0].Records = batchOf(good)
	if resp, err = req.RequestWith(ctx, cl); err != nil || resp.Topics[0].Partitions[0].ErrorCode != 0 {
		t.Fatalf("a valid batch: %v %+v", err, resp)
	}
	if base := resp.Topics[0].Partitions[0].BaseOffset; base != 0 {
		t.Errorf("the valid batch is at offset %d, want 0: records of the refused batches were stored", base)
	}
	onceEach(t, k.addr, "strict", good)
	if n := metricValue(t, in.monitorAddr, `spillway_validation_failures_total{rule="json",topic="strict"}`); n != 2 {
		t.Errorf("spillway_validation_failures_total{rule=json} is %v, want 2 (record 5 of each refused batch)", n)
	}
}

// TestKgoBatchOffsetsContiguous: while another client writes the same
// partition record by record, a kgo batch of 100 is stored contiguously:
// the record i kgo sent is read back at the batch's base offset + i, for
// every i.
func TestKgoBatchOffsetsContiguous(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	kafkatest.CreateTopic(t, k.addr, "shared", 1)
	in := startIngest(t, k.addr)

	other, err := kgo.NewClient(kgo.SeedBrokers(in.kafkaAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.kafkaAddr), kgo.ManualFlushing())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for round := range 3 {
		// The other client writes record after record, four at a time,
		// until the batch is answered.
		stop := make(chan struct{})
		var wrote atomic.Int64
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if other.ProduceSync(t.Context(), &kgo.Record{Topic: "shared", Value: fmt.Appendf(nil, "other %d.%d.%d", round, w, i)}).FirstErr() == nil {
						wrote.Add(1)
					}
				}
			}()
		}
		eventually(t, 10*time.Second, "the other client writing", func() bool { return wrote.Load() >= 20 })

		recs := make([]*kgo.Record, 100)
		var sent sync.WaitGroup
		for i := range recs {
			recs[i] = &kgo.Record{Topic: "shared", Value: fmt.Appendf(nil, "batch %d record %d", round, i)}
			sent.Add(1)
			cl.Produce(t.Context(), recs[i], func(_ *kgo.Record, err error) {
				defer sent.Done()
				if err != nil {
					t.Errorf("record: %v", err)
				}
			})
		}
		if err := cl.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		sent.Wait()
		during := wrote.Load()
		close(stop)
		wg.Wait()
		byOffset := map[int64]string{}
		for _, r := range settledRead(t, k.addr, "shared") {
			byOffset[r.Offset] = deref(r.Payload)
		}
		base := recs[0].Offset
		for i, r := range recs {
			if r.Offset != base+int64(i) {
				t.Errorf("round %d: kgo was told offset %d for record %d, want base %d + %d", round, r.Offset, i, base, i)
			}
			if byOffset[base+int64(i)] != string(r.Value) {
				t.Errorf("round %d: offset %d (base + %d) holds %q, want %q", round, base+int64(i), i, byOffset[base+int64(i)], r.Value)
			}
		}
		t.Logf("round %d: base %d; the other client wrote %d records before the batch was answered, %d in all", round, base, during, wrote.Load())
	}
}
