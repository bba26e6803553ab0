package grpcapi

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/delivertest"
)

func (s topicSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return delivertest.Deliver(ctx, req, s.Send)
}
