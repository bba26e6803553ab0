package httpapi

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
	delivered   = delivertest.Delivered
	buffered    = delivertest.Buffered
	failed      = delivertest.Failed
	failMessage = delivertest.FailMessage
)

// scriptedSender answers the records of each delivery call with its script, the
// i-th record with the i-th answer, and keeps the records it was handed.
// A record gets the id "id-N", N counting every record sent.
type scriptedSender struct {
	script []answer

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
		if i >= len(s.script) {
			panic(fmt.Sprintf("scriptedSender: record %d sent, the script has %d answers", i, len(s.script)))
		}
		a := s.script[i]
		id := fmt.Sprintf("id-%d", len(s.sent))
		s.sent = append(s.sent, r)
		out[i] = a.Result(r, id)
	}
	return out
}

func (s *scriptedSender) records() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record.Record(nil), s.sent...)
}
