// Package kafkatest runs a Kafka-protocol broker (kfake) on loopback for
// tests, and reads back what landed with an independent client (franz-go),
// not the kafka-go client Spillway produces with.
package kafkatest

import (
	"context"
	"errors"
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

// Settle is how long Consume keeps reading once it has the records it
// wants, to see extra or duplicate ones: several fetch rounds of 100 ms.
const Settle = 300 * time.Millisecond

// Consume reads records from topic, from the start, until it has want of
// them or timeout passes, and returns what it read. It fails the test on a
// fetch error. Once it has want records it keeps reading for Settle, and
// fails the test (without stopping it) if the topic holds more than want:
// an extra or duplicate record is a finding, not something to overlook.
func Consume(tb testing.TB, addr, topic string, want int, timeout time.Duration) []*kgo.Record {
	tb.Helper()
	return ConsumeWith(tb, addr, topic, want, timeout)
}

// ConsumeWith is Consume with more client options, such as SASL.
func ConsumeWith(tb testing.TB, addr, topic string, want int, timeout time.Duration, opts ...kgo.Opt) []*kgo.Record {
	tb.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(addr),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		tb.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()

	var out []*kgo.Record
	highWater := map[int32]int64{} // per partition, the latest high-water mark a fetch reported
	next := map[int32]int64{}      // per partition, the offset after the last record read
	poll := func(ctx context.Context) {
		fs := cl.PollFetches(ctx)
		fs.EachError(func(t string, p int32, err error) {
			if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return // the end of the wait, not a fetch error
			}
			tb.Fatalf("fetch %s/%d: %v", t, p, err)
		})
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			highWater[p.Partition] = max(highWater[p.Partition], p.HighWatermark)
			for _, r := range p.Records {
				next[p.Partition] = max(next[p.Partition], r.Offset+1)
			}
		})
		out = append(out, fs.Records()...)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for len(out) < want && ctx.Err() == nil {
		poll(ctx)
	}
	if len(out) < want {
		return out // the caller's length check reports it
	}
	settle, cancelSettle := context.WithTimeout(context.Background(), Settle)
	defer cancelSettle()
	for settle.Err() == nil {
		poll(settle)
	}
	if len(out) > want {
		tb.Errorf("topic %s holds %d records, want %d: %d extra or duplicate", topic, len(out), want, len(out)-want)
	}
	for p, hw := range highWater {
		if next[p] < hw {
			tb.Errorf("topic %s partition %d has records up to offset %d, read up to %d: more than the %d wanted", topic, p, hw-1, next[p]-1, want)
		}
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
