package kafkaapi

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/delivertest"
)

// Deliver answers the refusals of a request; a record to send is Send's,
// which panics.
func (s refuseSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return delivertest.Deliver(ctx, req, s.Send)
}
