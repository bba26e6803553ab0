package grpcapi

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spillway/spillway/pkg/record"
)

// The scripted Sender of the API tables (api_test.go). It is the one file
// that knows the Sender interface: when the interface changes, only this
// file follows. Its Deliver is deliverVia's (deliver_test.go), which
// answers a request as the delivery path does; the script answers the
// records sent.

// scriptTime is the timestamp a scripted delivery reports.
var scriptTime = time.Date(2026, 12, 4, 10, 11, 12, 345000000, time.UTC)

// answer is what the scripted Sender makes of one record.
type answer struct {
	outcome   record.Outcome
	partition int32
	offset    int64
	reason    record.Reason // when failed
}

func delivered(partition int32, offset int64) answer {
	return answer{outcome: record.Delivered, partition: partition, offset: offset}
}

func buffered() answer { return answer{outcome: record.Buffered} }

func failed(reason record.Reason) answer { return answer{outcome: record.Failed, reason: reason} }

// failMessage is the message of a scripted failure, which the answers
// quote.
func failMessage(reason record.Reason) string { return "scripted " + string(reason) }

// scriptedSender answers each record with the answer its script holds for
// the record's value (a kafka-ambassador stream sends its records in
// batches whose cut depends on timing: the value, not the position, picks
// the answer). A record gets the id "id-VALUE". It keeps the records it
// was handed.
type scriptedSender struct {
	script map[string]answer

	mu   sync.Mutex
	sent []record.Record
}

func (s *scriptedSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return deliverVia(s.send, ctx, req)
}

// send answers recs with the script.
func (s *scriptedSender) send(_ context.Context, _ string, recs []record.Record) []record.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]record.Result, len(recs))
	for i, r := range recs {
		a, ok := s.script[string(r.Value)]
		if !ok {
			panic(fmt.Sprintf("scriptedSender: no answer scripted for the value %q", r.Value))
		}
		s.sent = append(s.sent, r)
		id := "id-" + string(r.Value)
		switch a.outcome {
		case record.Delivered:
			out[i] = record.Result{ID: id, Outcome: record.Delivered, Topic: r.Topic, Partition: a.partition, Offset: a.offset, Timestamp: scriptTime}
		case record.Buffered:
			out[i] = record.Result{ID: id, Outcome: record.Buffered, Topic: r.Topic, Partition: record.AnyPartition, Offset: -1}
		default:
			out[i] = record.Fail(r.Topic, record.Errorf(a.reason, "%s", failMessage(a.reason)))
			out[i].ID = id
		}
	}
	return out
}

func (s *scriptedSender) records() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record.Record(nil), s.sent...)
}
