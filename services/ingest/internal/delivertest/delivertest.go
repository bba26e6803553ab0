// Package delivertest answers a record.Request as delivery.Deliver does,
// over a send function a test scripts, so that an API's tests check its
// translation without Kafka or JetStream.
package delivertest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spillway/spillway/pkg/record"
)

// Send is what a test scripts: the results of the records one request
// sends, in order.
type Send func(ctx context.Context, api string, records []record.Record) []record.Result

// Deliver answers req as delivery.Deliver does: the whole request refused
// for its error (an unauthenticated one first) or its topic; else one
// result per record and refusal, in order, each refusal failed with its
// error in its place and the records sent, in one call to send, into the
// places left.
func Deliver(ctx context.Context, req record.Request, send Send) ([]record.Result, error) {
	if req.Err != nil && record.ReasonOf(req.Err) == record.ReasonUnauthenticated {
		return nil, req.Err
	}
	if req.Topic != "" || req.Err == nil && len(req.Records) == 0 && len(req.Refused) == 0 {
		if err := record.ValidateTopic(req.Topic); err != nil {
			return nil, err
		}
	}
	if req.Err != nil {
		return nil, req.Err
	}
	n := len(req.Records) + len(req.Refused)
	if n == 0 {
		return nil, nil
	}
	out := make([]record.Result, n)
	taken := make([]bool, n)
	for _, r := range req.Refused {
		out[r.Index], taken[r.Index] = record.Fail(r.Topic, r.Err), true
	}
	if len(req.Records) == 0 {
		return out, nil
	}
	sent := send(ctx, req.API, req.Records)
	for i, j := 0, 0; i < n; i++ {
		if !taken[i] {
			out[i] = sent[j]
			j++
		}
	}
	return out, nil
}

// ScriptTime is the timestamp a scripted delivery reports.
var ScriptTime = time.Date(2026, 12, 4, 10, 11, 12, 345000000, time.UTC)

// Answer is what a test scripts for one record sent.
type Answer struct {
	Outcome   record.Outcome
	Partition int32
	Offset    int64
	Reason    record.Reason // when failed
	// Dragged: failed for another record of its batch (the delivery
	// path's record.ErrBatchRefused), with that record's reason.
	Dragged bool
}

// Delivered is the answer of a record Kafka took at partition and offset.
func Delivered(partition int32, offset int64) Answer {
	return Answer{Outcome: record.Delivered, Partition: partition, Offset: offset}
}

// Buffered is the answer of a record JetStream took.
func Buffered() Answer { return Answer{Outcome: record.Buffered} }

// Failed is the answer of a record refused for reason.
func Failed(reason record.Reason) Answer { return Answer{Outcome: record.Failed, Reason: reason} }

// Dragged is the answer of a record refused for another record of its
// batch, refused for reason.
func Dragged(reason record.Reason) Answer {
	return Answer{Outcome: record.Failed, Reason: reason, Dragged: true}
}

// FailMessage is the message of a scripted failure, which the answers
// quote.
func FailMessage(reason record.Reason) string { return "scripted " + string(reason) }

// Result is the delivery result of r, with the id id, as a answers it.
func (a Answer) Result(r record.Record, id string) record.Result {
	switch a.Outcome {
	case record.Delivered:
		return record.Result{ID: id, Outcome: record.Delivered, Topic: r.Topic, Partition: a.Partition, Offset: a.Offset, Timestamp: ScriptTime}
	case record.Buffered:
		return record.Result{ID: id, Outcome: record.Buffered, Topic: r.Topic, Partition: record.AnyPartition, Offset: -1}
	}
	err := record.Errorf(a.Reason, "%s", FailMessage(a.Reason))
	if a.Dragged { // as the delivery path fails a batch's other records
		err = &record.Error{Reason: a.Reason, Message: "not stored", Err: record.ErrBatchRefused}
	}
	res := record.Fail(r.Topic, err)
	res.ID = id
	return res
}

// Sender is a delivery path that answers from a script: each record sent
// gets the Answer ByValue holds for its value (id "id-VALUE"), or, with
// no ByValue, the Answer of its place in its call in InTurn (id "id-N", N
// counting every record sent). It keeps the records it was handed, and
// counts the calls that sent any. A record the script has no answer for
// panics.
type Sender struct {
	ByValue map[string]Answer
	InTurn  []Answer

	mu    sync.Mutex
	sent  []record.Record
	calls int
}

// Deliver answers req as the delivery path does, the records sent from the
// script.
func (s *Sender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return Deliver(ctx, req, s.send)
}

func (s *Sender) send(_ context.Context, _ string, recs []record.Record) []record.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	out := make([]record.Result, len(recs))
	for i, r := range recs {
		var a Answer
		var id string
		if s.ByValue != nil {
			var ok bool
			if a, ok = s.ByValue[string(r.Value)]; !ok {
				panic(fmt.Sprintf("delivertest.Sender: no answer scripted for the value %q", r.Value))
			}
			id = "id-" + string(r.Value)
		} else {
			if i >= len(s.InTurn) {
				panic(fmt.Sprintf("delivertest.Sender: record %d sent, the script has %d answers", i, len(s.InTurn)))
			}
			a, id = s.InTurn[i], fmt.Sprintf("id-%d", len(s.sent))
		}
		s.sent = append(s.sent, r)
		out[i] = a.Result(r, id)
	}
	return out
}

// PossibleDuplicates is the Kafka listener's interface's; the script
// ignores it.
func (*Sender) PossibleDuplicates(string, int) {}

// Records are the records sent so far, in order.
func (s *Sender) Records() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record.Record(nil), s.sent...)
}

// Calls is how many calls sent records.
func (s *Sender) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}
