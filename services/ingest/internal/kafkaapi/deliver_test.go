package kafkaapi

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
)

// deliverVia answers a request as delivery.Deliver does, over send: the
// whole request refused for its error (an unauthenticated one first) or
// its topic; else one result per record and refusal, in order, each
// refusal failed with its error in its place and the records sent, in
// one call, into the places left.
func deliverVia(send func(context.Context, string, []record.Record) []record.Result, ctx context.Context, req record.Request) ([]record.Result, error) {
	if req.Err != nil && record.ReasonOf(req.Err) == record.ReasonUnauthenticated {
		return nil, req.Err
	}
	if req.Topic != "" || req.Err == nil && len(req.Records) == 0 && len(req.Refused) == 0 {
		if err := record.ValidateTopic(req.Topic); err != nil {
			return nil, err
		}
	}
	if req.Err != nil {
		return nil, req.Err
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
	if len(req.Records) == 0 {
		return out, nil
	}
	sent := send(ctx, req.API, req.Records)
	for i, j := 0, 0; i < n; i++ {
		if !taken[i] {
			out[i] = sent[j]
			j++
		}
	}
	return out, nil
}

// Deliver answers the refusals of a request; a record to send is Send's,
// which panics.
func (s refuseSender) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	return deliverVia(s.Send, ctx, req)
}
