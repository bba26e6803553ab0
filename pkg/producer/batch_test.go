package producer

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
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
		kafkatest.EachBatch(pr, topic, func(b kmsg.RecordBatch) {
			carried = true
			pc.batches++
			pc.records += int(b.NumRecords)
			pc.largest = max(pc.largest, int(b.NumRecords))
		})
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
