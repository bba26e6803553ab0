package producer

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// unitBatches keeps, as the broker receives them, the values of each
// record batch of topic, by partition.
type unitBatches struct {
	mu      sync.Mutex
	batches [][]string
	parts   []int32
}

func watchUnits(c *kfake.Cluster, topic string) *unitBatches {
	ub := &unitBatches{}
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, t := range req.(*kmsg.ProduceRequest).Topics {
			if t.Topic != topic {
				continue
			}
			for _, p := range t.Partitions {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(p.Records); err != nil {
					continue
				}
				recs, _ := kafkatest.Records(b)
				values := make([]string, len(recs))
				for i, r := range recs {
					values[i] = string(r.Value[:min(len(r.Value), 9)])
				}
				ub.mu.Lock()
				ub.batches = append(ub.batches, values)
				ub.parts = append(ub.parts, p.Partition)
				ub.mu.Unlock()
			}
		}
		return nil, nil, false
	})
	return ub
}

// TestCallsRecordsGoTogether: the records of one Start call to one
// partition (a unit) go to Kafka together: in one batch, consecutive and
// in call order, never cut by batch.num.messages (100 here, with calls of
// 1 to 60 records from 32 callers at once), so their offsets are
// consecutive, base+i. A unit over the batch's byte bound alone (a topic
// of max.message.bytes 10,000) is cut in as few batches as that bound
// allows, sent one after the other, its offsets still consecutive.
func TestCallsRecordsGoTogether(t *testing.T) {
	c, addr := kafkatest.NewCluster(t, kfake.SeedTopics(2, "units"))
	kafkatest.CreateTopicWithConfigs(t, addr, "big", 1, map[string]string{"max.message.bytes": "10000"})
	batches := watchUnits(c, "units")
	p := newProducer(t, addr, "SPILLWAY_KAFKA_BATCH_NUM_MESSAGES=100", "SPILLWAY_KAFKA_LINGER_MS=5")

	type unit struct {
		name    string
		part    int32
		values  []string
		offsets []int64
	}
	var (
		mu    sync.Mutex
		units = map[string]*unit{} // by call and partition
		wg    sync.WaitGroup
	)
	for g := range 32 {
		wg.Go(func() {
			for k := range 8 {
				n := 1 + rand.IntN(60)
				recs := make([]record.Record, n)
				for i := range recs {
					// Half the calls spread their records over both partitions.
					part := int32(0)
					if (g+k)%2 == 1 {
						part = int32(i % 2)
					}
					recs[i] = record.Record{ID: id(i), Topic: "units", Partition: part, Value: fmt.Appendf(nil, "%02d%01d-%03d%s", g, k, i, strings.Repeat("v", 40))}
				}
				res := p.Produce(t.Context(), recs)
				mu.Lock()
				for i, r := range res {
					if r.Outcome != record.Delivered {
						t.Errorf("call %d/%d record %d: %v", g, k, i, r.Err)
						continue
					}
					name := fmt.Sprintf("%02d%01d/%d", g, k, r.Partition)
					u := units[name]
					if u == nil {
						u = &unit{name: name, part: r.Partition}
						units[name] = u
					}
					u.values = append(u.values, string(recs[i].Value[:9]))
					u.offsets = append(u.offsets, r.Offset)
				}
				mu.Unlock()
			}
		})
	}
	// A unit over the byte bound alone, among the others.
	wg.Go(func() {
		recs := make([]record.Record, 30)
		for i := range recs {
			recs[i] = record.Record{ID: id(i), Topic: "big", Partition: 0, Value: fmt.Appendf(nil, "%03d%s", i, strings.Repeat("b", 997))}
		}
		res := p.Produce(t.Context(), recs)
		for i, r := range res {
			if assert.Equal(t, record.Delivered, r.Outcome, "big record %d: %v", i, r.Err) {
				assert.Equal(t, res[0].Offset+int64(i), r.Offset, "big record %d", i)
			}
		}
	})
	wg.Wait()

	// Where each unit's records are among the batches Kafka got.
	batches.mu.Lock()
	defer batches.mu.Unlock()
	type place struct{ batch, at int }
	where := map[string][]place{}
	shared := 0 // batches that hold more than one unit
	for b, values := range batches.batches {
		seen := map[string]bool{}
		for at, v := range values {
			name := fmt.Sprintf("%s/%d", v[:3], batches.parts[b])
			where[name] = append(where[name], place{b, at})
			seen[name] = true
		}
		if len(seen) > 1 {
			shared++
		}
	}
	t.Logf("%d units in %d batches, %d of them holding several units", len(units), len(batches.batches), shared)
	assert.Greater(t, shared, 0, "units share batches")
	for name, u := range units {
		ps := where[name]
		require.Len(t, ps, len(u.values), "unit %s: its records in Kafka's batches", name)
		for i, pl := range ps {
			assert.Equal(t, ps[0].batch, pl.batch, "unit %s: record %d is in another batch than its first", name, i)
			assert.Equal(t, ps[0].at+i, pl.at, "unit %s: record %d is not next to the one before", name, i)
			assert.Equal(t, u.values[i], batches.batches[pl.batch][pl.at], "unit %s: record %d out of call order", name, i)
			assert.Equal(t, u.offsets[0]+int64(i), u.offsets[i], "unit %s: record %d's offset", name, i)
		}
	}
}
