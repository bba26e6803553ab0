// Package kafkatest runs a Kafka-protocol broker (kfake) on loopback for
// tests, and reads back what landed with an independent client (franz-go),
// not the kafka-go client Spillway produces with.
package kafkatest

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// NewCluster starts a one-broker kfake cluster on 127.0.0.1 with topic
// auto-creation on (unless opts say otherwise) and returns its address.
// It stops when the test ends.
func NewCluster(tb testing.TB, opts ...kfake.Opt) (*kfake.Cluster, string) {
	tb.Helper()
	all := append([]kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3)}, opts...)
	c, err := kfake.NewCluster(all...)
	if err != nil {
		tb.Fatalf("start kfake: %v", err)
	}
	tb.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

// Consume reads records from topic, from the start, until it has want of
// them or timeout passes, and returns what it read. It fails the test on a
// fetch error.
func Consume(tb testing.TB, addr, topic string, want int, timeout time.Duration) []*kgo.Record {
	tb.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		tb.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*kgo.Record
	for len(out) < want && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachError(func(t string, p int32, err error) {
			if ctx.Err() == nil {
				tb.Logf("fetch %s/%d: %v", t, p, err)
			}
		})
		out = append(out, fs.Records()...)
	}
	return out
}

// HeaderValue returns the value of the first header named key, and whether
// there was one.
func HeaderValue(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}
