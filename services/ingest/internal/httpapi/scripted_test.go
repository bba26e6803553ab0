package httpapi

import "github.com/spillway/spillway/services/ingest/internal/delivertest"

// The API tables' (api_test.go) answers and scripted sender, delivertest's.
type answer = delivertest.Answer

var (
	delivered   = delivertest.Delivered
	buffered    = delivertest.Buffered
	failed      = delivertest.Failed
	failMessage = delivertest.FailMessage
)
