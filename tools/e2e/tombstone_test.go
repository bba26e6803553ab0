package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// createCompacted creates topic with one partition and
// cleanup.policy=compact, as an operator would for a changelog.
func createCompacted(t *testing.T, broker, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, 1, 1
	c := kmsg.NewCreateTopicsRequestTopicConfig()
	c.Name, c.Value = "cleanup.policy", kmsg.StringPtr("compact")
	rt.Configs = append(rt.Configs, c)
	req.Topics = append(req.Topics, rt)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	if err := kerr.ErrorForCode(resp.Topics[0].ErrorCode); err != nil {
		t.Fatalf("create %s: %v", topic, err)
	}
}

// TestKgoTombstoneThroughTheListener: a kgo record with a nil value (a
// tombstone) to a compacted topic is read back by kcat with a null value,
// and one with an empty value with an empty one: through the built
// ingest with Kafka up, and with Kafka cut (buffered, offset -1, then
// delivered by the resender).
func TestKgoTombstoneThroughTheListener(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	createCompacted(t, k.addr, "changelog")
	in := startIngest(t, k.addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.kafkaAddr), kgo.RecordDeliveryTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	records := func(tag string) []*kgo.Record {
		return []*kgo.Record{
			{Topic: "changelog", Key: []byte(tag + "-tombstone"), Value: nil},
			{Topic: "changelog", Key: []byte(tag + "-empty"), Value: []byte{}},
		}
	}
	if err := cl.ProduceSync(t.Context(), records("up")...).FirstErr(); err != nil {
		t.Fatalf("Kafka up: %v", err)
	}
	k.cut()
	cut := records("cut")
	if err := cl.ProduceSync(t.Context(), cut...).FirstErr(); err != nil {
		t.Fatalf("Kafka cut: %v", err)
	}
	for _, r := range cut {
		if r.Offset != -1 {
			t.Errorf("record %s: offset %d while Kafka was cut, want -1 (buffered)", r.Key, r.Offset)
		}
	}
	k.restore()
	startResender(t, k.addr, in.natsAddr)
	eventually(t, 60*time.Second, "the four records in Kafka", func() bool {
		return len(kcatConsumeMaybe(k.addr, "changelog")) >= 4
	})
	byKey := map[string]kcatRecord{}
	for _, r := range settledRead(t, k.addr, "changelog") {
		byKey[deref(r.Key)] = r
	}
	if len(byKey) != 4 {
		t.Errorf("Kafka holds %d keys, want 4: %+v", len(byKey), byKey)
	}
	// kgo reads them too: a null value is nil, an empty one is not.
	for _, r := range kafkatest.Consume(t, k.addr, "changelog", 4, 20*time.Second) {
		if tomb := strings.HasSuffix(string(r.Key), "-tombstone"); tomb != (r.Value == nil) {
			t.Errorf("kgo reads %s with value %#v", r.Key, r.Value)
		}
	}
	for _, tag := range []string{"up", "cut"} {
		if r, ok := byKey[tag+"-tombstone"]; !ok || r.Payload != nil {
			t.Errorf("%s: the tombstone in Kafka is %+v, want a null value", tag, r)
		}
		if r, ok := byKey[tag+"-empty"]; !ok || r.Payload == nil || *r.Payload != "" {
			t.Errorf("%s: the empty value in Kafka is %+v, want an empty, not null, value", tag, r)
		}
	}
}
