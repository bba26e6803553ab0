package producer

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// produceCounter counts, as the broker sees them, the produce requests
// and record batches that carry records of one topic, and the records in
// them. It only observes: kfake handles each request as usual.
type produceCounter struct {
	mu       sync.Mutex
	requests int
	batches  int
	records  int
	largest  int // records in the largest batch
}

func countProduces(c *kfake.Cluster, topic string) *produceCounter {
	pc := &produceCounter{}
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		pr, ok := req.(*kmsg.ProduceRequest)
		if !ok {
			return nil, nil, false
		}
		pc.mu.Lock()
		defer pc.mu.Unlock()
		carried := false
		for _, t := range pr.Topics {
			if t.Topic != topic {
				continue
			}
			for _, p := range t.Partitions {
				for raw := p.Records; len(raw) > 0; {
					var b kmsg.RecordBatch
					if err := b.ReadFrom(raw); err != nil {
						break
					}
					carried = true
					pc.batches++
					pc.records += int(b.NumRecords)
					pc.largest = max(pc.largest, int(b.NumRecords))
					n := 12 + int(b.Length) // the batch's offset and length fields, then its length
					if n > len(raw) {
						break
					}
					raw = raw[n:]
				}
			}
		}
		if carried {
			pc.requests++
		}
		return nil, nil, false
	})
	return pc
}

func (pc *produceCounter) snapshot() (requests, batches, records, largest int) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.requests, pc.batches, pc.records, pc.largest
}
