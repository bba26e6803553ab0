package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
)

// kafkaTopics lists the topics broker holds, asking it to create none.
func kafkaTopics(t *testing.T, broker string) map[string]bool {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, tp := range resp.Topics {
		if tp.Topic != nil && tp.ErrorCode == 0 {
			out[*tp.Topic] = true
		}
	}
	return out
}

// TestKgoNotSignedInLearnsNoTopic: with security.require_credentials, a
// kgo client without SASL that allows auto-creation gets no topic names
// from the built ingest, its produce to a new topic fails, and no topic
// is created in Kafka (kfake, which allows auto-creation).
func TestKgoNotSignedInLearnsNoTopic(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	kafkatest.CreateTopic(t, k.addr, "orders", 1)
	key := securitytest.Secret(t, "kafka-e2e-signin-key-0123456789")
	sum := sha256.Sum256([]byte(key))
	cfg := filepath.Join(t.TempDir(), "spillway.yaml")
	if err := os.WriteFile(cfg, []byte("security:\n  require_credentials: true\n  api_keys:\n    - {principal: billing, sha256: "+hex.EncodeToString(sum[:])+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startIngest(t, k.addr, "-config="+cfg)

	anon, err := kgo.NewClient(kgo.SeedBrokers(in.kafkaAddr), kgo.AllowAutoTopicCreation(), kgo.RecordRetries(0), kgo.RequestRetries(0),
		kgo.RecordDeliveryTimeout(3*time.Second), kgo.DisableIdempotentWrite())
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	meta := kmsg.NewPtrMetadataRequest()
	meta.AllowAutoTopicCreation = true
	meta.Topics = []kmsg.MetadataRequestTopic{{Topic: kmsg.StringPtr("fresh")}}
	if resp, err := meta.RequestWith(ctx, anon); err == nil {
		t.Errorf("Metadata before signing in answered: %d topics", len(resp.Topics))
	}
	all := kmsg.NewPtrMetadataRequest()
	if resp, err := all.RequestWith(ctx, anon); err == nil {
		t.Errorf("Metadata for all topics before signing in answered: %d topics", len(resp.Topics))
	}
	if err := anon.ProduceSync(ctx, &kgo.Record{Topic: "fresh", Value: []byte("x")}).FirstErr(); err == nil {
		t.Error("a produce before signing in succeeded")
	}
	if topics := kafkaTopics(t, k.addr); topics["fresh"] || !topics["orders"] {
		t.Errorf("topics in Kafka: %v; want orders and no fresh", topics)
	}
	if n := metricValue(t, in.monitorAddr, `spillway_denied_total{principal="anonymous",reason="unauthenticated"}`); n < 1 {
		t.Errorf("spillway_denied_total for the anonymous client is %v", n)
	}
}
