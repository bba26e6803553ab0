package httpapi

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
)

// deliverVia answers a request as the delivery path does, over send: the
// whole request refused for its error or its topic, else its records sent.
func deliverVia(send func(context.Context, string, []record.Record) []record.Result, ctx context.Context, req record.Request) ([]record.Result, error) {
	if req.Err != nil {
		return nil, req.Err
	}
	if req.Topic != "" {
		if err := record.ValidateTopic(req.Topic); err != nil {
			return nil, err
		}
	}
	if len(req.Records) == 0 {
		return nil, nil
	}
	return send(ctx, req.API, req.Records), nil
}

func (s *lastSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return deliverVia(s.Send, ctx, req)
}

func (s failSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return deliverVia(s.Send, ctx, req)
}
