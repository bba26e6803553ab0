package producer

import (
	"context"

	"github.com/spillway/spillway/pkg/record"
)

// The services produce through Start, behind the breaker; the tests wait
// for each call.

// Produce sends recs to Kafka and returns one result per record, in order,
// once Kafka acknowledged or failed each of them, or when ctx ends or the
// message timeout (message.timeout.ms) passes. When ctx ends first, the
// records not yet sent are withdrawn (record.ErrWithdrawn), and those sent
// fail with record.ReasonTimeout: they may still reach Kafka later.
func (p *Producer) Produce(ctx context.Context, recs []record.Record) []record.Result {
	answered := make(chan []record.Result, 1)
	withdraw := p.Start(recs, func(res []record.Result) { answered <- res })
	select {
	case res := <-answered:
		return res
	case <-ctx.Done():
	}
	if res := withdraw(); res != nil {
		return res
	}
	return <-answered
}
