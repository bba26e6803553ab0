package grpcapi

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
)

// Deliver answers a request as the delivery path does, over Send: the
// whole request refused for its error or its topic, the records it could
// not parse in their places, the others sent.
func (s topicSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	if req.Err != nil {
		return nil, req.Err
	}
	if req.Topic != "" || len(req.Records) == 0 && len(req.Refused) == 0 {
		if err := record.ValidateTopic(req.Topic); err != nil {
			return nil, err
		}
	}
	n := len(req.Records) + len(req.Refused)
	if n == 0 {
		return nil, nil
	}
	out := make([]record.Result, n)
	taken := make([]bool, n)
	for _, r := range req.Refused {
		out[r.Index], taken[r.Index] = record.Fail(r.Topic, r.Err), true
	}
	sent := s.Send(ctx, req.API, req.Records)
	for i, j := 0, 0; i < n; i++ {
		if !taken[i] {
			out[i] = sent[j]
			j++
		}
	}
	return out, nil
}
