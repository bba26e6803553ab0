package kafkatest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/segmentio/kafka-go/compress"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// CompactedMessage is what Kafka says of a record without a key sent to
// partition of a compacted topic.
func CompactedMessage(topic string, partition int32) string {
	return fmt.Sprintf("Compacted topic cannot accept message without key in topic partition %s-%d.", topic, partition)
}

// KeylessRefusals are the batches RefuseKeyless made the broker refuse.
type KeylessRefusals struct {
	mu      sync.Mutex
	batches []int // how many records each had
}

// Sizes is how many records each refused batch had, in order.
func (kr *KeylessRefusals) Sizes() []int {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	return append([]int(nil), kr.batches...)
}

// RefuseKeyless makes c refuse, as Kafka refuses them for a compacted
// topic, the batches of topic that hold a record without a key:
// INVALID_RECORD, naming those records (RecordErrors, KIP-467) when named
// is set, as Kafka 2.4 and later do, or naming none, as older brokers do.
// Other batches are stored as usual. It reads uncompressed batches only.
func RefuseKeyless(tb testing.TB, c *kfake.Cluster, topic string, named bool) *KeylessRefusals {
	tb.Helper()
	kr := &KeylessRefusals{}
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		pr := req.(*kmsg.ProduceRequest)
		var keyless []int32
		records := 0
		EachBatch(pr, topic, func(b kmsg.RecordBatch) {
			recs, err := Records(b)
			if err != nil {
				tb.Errorf("RefuseKeyless: %v", err)
			}
			for i, r := range recs {
				if r.Key == nil {
					keyless = append(keyless, int32(i))
				}
			}
			records += int(b.NumRecords)
		})
		if len(keyless) == 0 {
			return nil, nil, false
		}
		kr.mu.Lock()
		kr.batches = append(kr.batches, records)
		kr.mu.Unlock()
		resp := FailProduce(pr, kerr.InvalidRecord)
		if named {
			for ti := range resp.Topics {
				if resp.Topics[ti].Topic != topic {
					continue
				}
				for pi := range resp.Topics[ti].Partitions {
					sp := &resp.Topics[ti].Partitions[pi]
					msg := CompactedMessage(topic, sp.Partition)
					summary := fmt.Sprintf("One or more records have been rejected due to %d record errors in total, and only showing the first three errors at most: [RecordError(batchIndex=%d, message='%s')]",
						len(keyless), keyless[0], msg)
					sp.ErrorMessage = &summary
					for _, i := range keyless {
						e := kmsg.NewProduceResponseTopicPartitionErrorRecord()
						e.RelativeOffset, e.ErrorMessage = i, kmsg.StringPtr(msg)
						sp.ErrorRecords = append(sp.ErrorRecords, e)
					}
				}
			}
		}
		return resp, nil, true
	})
	return kr
}

// Records decodes a batch's records, decompressed with kafka-go's codec
// of its attributes.
func Records(b kmsg.RecordBatch) ([]kmsg.Record, error) {
	raw := b.Records
	if id := compress.Compression(b.Attributes & 0x7); id != compress.None {
		codec := id.Codec()
		if codec == nil {
			return nil, fmt.Errorf("a batch compressed with unknown codec %d", id)
		}
		r := codec.NewReader(bytes.NewReader(raw))
		var err error
		raw, err = io.ReadAll(r)
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("decompress a %s batch: %w", codec.Name(), err)
		}
	}
	var out []kmsg.Record
	for len(raw) > 0 {
		length, n := binary.Varint(raw)
		if n <= 0 || n+int(length) > len(raw) {
			return out, fmt.Errorf("a record's length is cut short")
		}
		var r kmsg.Record
		if err := r.ReadFrom(raw[:n+int(length)]); err != nil {
			return out, fmt.Errorf("read a record: %w", err)
		}
		out = append(out, r)
		raw = raw[n+int(length):]
	}
	return out, nil
}
