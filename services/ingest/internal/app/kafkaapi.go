package app

import (
	"context"

	"github.com/spillway/spillway/pkg/producer"
	"github.com/spillway/spillway/services/ingest/internal/kafkaapi"
)

// kafkaPartitions is the producer as the Kafka listener's Partitions.
type kafkaPartitions struct{ p *producer.Producer }

func (k kafkaPartitions) Partitions(ctx context.Context) (map[string]int, error) {
	return k.p.Partitions(ctx)
}

func (k kafkaPartitions) CreateTopics(ctx context.Context, topics []string) (map[string]kafkaapi.TopicState, error) {
	states, err := k.p.CreateTopics(ctx, topics)
	out := make(map[string]kafkaapi.TopicState, len(states))
	for t, s := range states {
		out[t] = kafkaapi.TopicState{Partitions: s.Partitions, ErrorCode: s.ErrorCode}
	}
	return out, err
}
