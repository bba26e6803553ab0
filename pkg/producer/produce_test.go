package producer

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
)

// The services produce through Start, behind the breaker; the tests wait
// for each call.

// Produce sends recs to Kafka and returns one result per record, in order,
// once Kafka acknowledged or failed each of them, or when ctx ends or the
// message timeout (message.timeout.ms) passes: records still unanswered
// then fail with record.ReasonTimeout. They may still reach Kafka later.
func (p *Producer) Produce(ctx context.Context, recs []record.Record) []record.Result {
	answered := make(chan []record.Result, 1)
	p.Start(recs, func(res []record.Result) { answered <- res })
	select {
	case res := <-answered:
		return res
	case <-ctx.Done():
	}
	select {
	case res := <-answered:
		return res
	default:
	}
	out := make([]record.Result, len(recs))
	for i := range recs {
		out[i] = record.Fail(recs[i].Topic, &record.Error{
			Reason:  record.ReasonTimeout,
			Message: "Kafka did not acknowledge the record in time; it may still arrive",
			Err:     ctx.Err(),
		})
	}
	return out
}
