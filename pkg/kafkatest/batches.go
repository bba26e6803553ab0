package kafkatest

import "github.com/twmb/franz-go/pkg/kmsg"

// EachBatch calls fn for each record batch of topic in req, as the broker
// receives them (for kfake's ControlKey hooks that count or read what a
// producer sent).
func EachBatch(req *kmsg.ProduceRequest, topic string, fn func(kmsg.RecordBatch)) {
	for _, t := range req.Topics {
		if t.Topic != topic {
			continue
		}
		for _, p := range t.Partitions {
			for raw := p.Records; len(raw) > 0; {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(raw); err != nil {
					break
				}
				fn(b)
				n := 12 + int(b.Length) // the batch's offset and length fields, then its length
				if n > len(raw) {
					break
				}
				raw = raw[n:]
			}
		}
	}
}
