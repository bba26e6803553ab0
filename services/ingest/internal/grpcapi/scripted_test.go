package grpcapi

import "github.com/spillway/spillway/services/ingest/internal/delivertest"

// The API tables' (api_test.go) answers and scripted sender, delivertest's.
type answer = delivertest.Answer

var (
	scriptTime  = delivertest.ScriptTime
	delivered   = delivertest.Delivered
	buffered    = delivertest.Buffered
	failed      = delivertest.Failed
	failMessage = delivertest.FailMessage
)
