package producer

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/securitytest"
)

// TestLeaderMovesCostNoSpill: with a partition moved to another broker
// every 2 s under load (64 callers, one record a call, behind the breaker
// with the default settings, as the ingest delivers), no record is
// buffered or failed, the breaker never opens, every acknowledged record
// is in Kafka once, and each key's records are in the order acknowledged.
func TestLeaderMovesCostNoSpill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 14 s")
	}
	const (
		topic      = "moving"
		partitions = 3
		callers    = 64
		load       = 14 * time.Second
		every      = 2 * time.Second
	)
	c, addr := kafkatest.NewCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(partitions, topic))
	cfg, err := config.Parse(nil, []string{"SPILLWAY_KAFKA_BROKERS=" + addr})
	require.NoError(t, err)
	p, err := New(cfg.Kafka, slog.New(slog.NewJSONHandler(securitytest.LogWriter(t, "producer"), &slog.HandlerOptions{Level: slog.LevelInfo})))
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	var opened atomic.Int32
	b := breaker.New(p, breaker.Options{Name: "kafka", Settings: cfg.Producer.CB, MaxWait: cfg.Producer.CB.MaxWait,
		OnStateChange: func(_, to breaker.State) {
			if to == breaker.Open {
				opened.Add(1)
			}
		}})

	stop := make(chan struct{})
	var movers sync.WaitGroup
	moves := 0
	movers.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			part := int32(moves % partitions)
			to := (c.LeaderFor(topic, part) + 1) % 3
			if err := c.MoveTopicPartition(topic, part, to); err != nil {
				t.Errorf("move partition %d to %d: %v", part, to, err)
			}
			moves++
		}
	})

	var (
		mu                 sync.Mutex
		acked              = map[string][]int{} // per key, the sequence numbers acknowledged, in order
		delivered          int
		buffered, failed   int
		refused            int // of buffered: the breaker was open, Kafka not tried
		firstBuf, firstErr error
	)
	var wg sync.WaitGroup
	for i := range callers {
		key := fmt.Sprintf("k%02d", i)
		wg.Go(func() {
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				res, err := b.Produce(t.Context(), []record.Record{{Topic: topic, Key: []byte(key),
					Value: fmt.Appendf(nil, "%s-%07d", key, seq), Partition: record.AnyPartition}})
				mu.Lock()
				switch {
				case res[0].Outcome == record.Delivered:
					acked[key] = append(acked[key], seq)
					delivered++
				case errors.Is(err, breaker.ErrStoppedWaiting) || errors.Is(err, breaker.ErrOpen):
					buffered++ // the ingest spills it
					if errors.Is(err, breaker.ErrOpen) {
						refused++
					}
					firstBuf = firstOf(firstBuf, res[0].Err)
				default:
					failed++
					firstErr = firstOf(firstErr, res[0].Err)
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(load) // the load's length, not a wait for a condition
	close(stop)
	wg.Wait()
	movers.Wait()

	t.Logf("%d moves; %d records delivered, %d buffered (%d of them refused by the open breaker; first: %v), %d failed (first: %v)",
		moves, delivered, buffered, refused, firstBuf, failed, firstErr)
	assert.GreaterOrEqual(t, moves, int(load/every)-1)
	assert.Zero(t, buffered, "records buffered")
	assert.Zero(t, failed, "records failed")
	assert.Zero(t, opened.Load(), "times the breaker opened")

	got := map[string][]int{}
	for _, r := range kafkatest.Consume(t, addr, topic, delivered, 30*time.Second) {
		var seq int
		_, err := fmt.Sscanf(string(r.Value[len(r.Key)+1:]), "%d", &seq)
		require.NoError(t, err)
		got[string(r.Key)] = append(got[string(r.Key)], seq)
	}
	for key, want := range acked {
		assert.Equal(t, want, got[key], "key %s: the records acknowledged, in Kafka in order", key)
	}
}

// firstOf keeps the first error seen.
func firstOf(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
