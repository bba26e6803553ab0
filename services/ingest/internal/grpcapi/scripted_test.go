package grpcapi

import (
	"context"
	"fmt"
	"sync"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/delivertest"
)

// The scripted Sender of the API tables (api_test.go). It is the one file
// that knows the Sender interface: when the interface changes, only this
// file follows. Its Deliver is delivertest.Deliver's, which
// answers a request as the delivery path does; the script answers the
// records sent.

// The answers of the API tables, delivertest's.
type answer = delivertest.Answer

var (
	scriptTime  = delivertest.ScriptTime
	delivered   = delivertest.Delivered
	buffered    = delivertest.Buffered
	failed      = delivertest.Failed
	failMessage = delivertest.FailMessage
)

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
	return delivertest.Deliver(ctx, req, s.send)
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
		out[i] = a.Result(r, id)
	}
	return out
}

func (s *scriptedSender) records() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record.Record(nil), s.sent...)
}
