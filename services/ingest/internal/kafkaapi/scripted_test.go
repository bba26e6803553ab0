package kafkaapi

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
type scripted = delivertest.Answer

var (
	delivered   = delivertest.Delivered
	buffered    = delivertest.Buffered
	failed      = delivertest.Failed
	dragged     = delivertest.Dragged
	failMessage = delivertest.FailMessage
)

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
	return delivertest.Deliver(ctx, req, s.send)
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
		out[i] = a.Result(r, id)
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
