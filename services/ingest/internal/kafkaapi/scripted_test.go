package kafkaapi

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

// scripted is what the scripted Sender makes of one record.
type scripted struct {
	outcome   record.Outcome
	partition int32
	offset    int64
	reason    record.Reason // when failed
	// dragged: failed for another record of its batch (the delivery
	// path's record.ErrBatchRefused), with that record's reason.
	dragged bool
}

func delivered(partition int32, offset int64) scripted {
	return scripted{outcome: record.Delivered, partition: partition, offset: offset}
}

func buffered() scripted { return scripted{outcome: record.Buffered} }

func failed(reason record.Reason) scripted { return scripted{outcome: record.Failed, reason: reason} }

func dragged(reason record.Reason) scripted {
	return scripted{outcome: record.Failed, reason: reason, dragged: true}
}

// failMessage is the message of a scripted failure, which the answers
// quote.
func failMessage(reason record.Reason) string { return "scripted " + string(reason) }

// scriptedSender answers each record with what its script holds for the
// record's value (one delivery call holds the records of every partition
// of a produce request). A record gets the id "id-VALUE". It keeps the
// records it was handed, and counts the calls that sent any.
type scriptedSender struct {
	script map[string]scripted

	mu    sync.Mutex
	sent  []record.Record
	calls int
}

func (s *scriptedSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return deliverVia(s.send, ctx, req)
}

// send answers recs with the script.
func (s *scriptedSender) send(_ context.Context, _ string, recs []record.Record) []record.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
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
		case record.Failed:
			err := record.Errorf(a.reason, "%s", failMessage(a.reason))
			if a.dragged { // as the delivery path fails a batch's other records
				err = &record.Error{Reason: a.reason, Message: "not stored", Err: record.ErrBatchRefused}
			}
			out[i] = record.Fail(r.Topic, err)
			out[i].ID = id
		}
	}
	return out
}

// PossibleDuplicates is the interface's; the tables do not look at it.
func (*scriptedSender) PossibleDuplicates(string, int) {}

func (s *scriptedSender) records() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record.Record(nil), s.sent...)
}
