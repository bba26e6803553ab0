package kafkaapi

import "github.com/spillway/spillway/services/ingest/internal/delivertest"

// The API tables' (api_test.go) answers and scripted sender, delivertest's.
type scripted = delivertest.Answer

var (
	delivered   = delivertest.Delivered
	buffered    = delivertest.Buffered
	failed      = delivertest.Failed
	dragged     = delivertest.Dragged
	failMessage = delivertest.FailMessage
)
