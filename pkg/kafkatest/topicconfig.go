package kafkatest

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// CreateTopicWithConfigs creates topic with partitions partitions and the
// topic configs given (max.message.bytes, cleanup.policy...), as an
// operator would with kafka-topics.sh --config.
func CreateTopicWithConfigs(tb testing.TB, addr, topic string, partitions int32, configs map[string]string, opts ...kgo.Opt) {
	tb.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	t := kmsg.NewCreateTopicsRequestTopic()
	t.Topic, t.NumPartitions, t.ReplicationFactor = topic, partitions, 1
	for k, v := range configs {
		c := kmsg.NewCreateTopicsRequestTopicConfig()
		c.Name, c.Value = k, kmsg.StringPtr(v)
		t.Configs = append(t.Configs, c)
	}
	req.Topics = append(req.Topics, t)
	resp := admin(tb, addr, req, opts...).(*kmsg.CreateTopicsResponse)
	for _, rt := range resp.Topics {
		if err := kerr.ErrorForCode(rt.ErrorCode); err != nil {
			tb.Fatalf("create topic %s: %v", topic, err)
		}
	}
}
