package kafkaapi

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
)

// Deliver answers the refusals of a request as the delivery path does;
// a record to send is Send's, which panics.
func (s refuseSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	if req.Err != nil {
		return nil, req.Err
	}
	if len(req.Records) > 0 {
		s.Send(ctx, req.API, req.Records)
	}
	out := make([]record.Result, len(req.Refused))
	for _, r := range req.Refused {
		out[r.Index] = record.Fail(r.Topic, r.Err)
	}
	return out, nil
}
