package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Verification compares what was acknowledged with what is in Kafka.
type Verification struct {
	Acknowledged int `json:"acknowledged"`
	Found        int `json:"found"`
	Missing      int `json:"missing"`
	Duplicates   int `json:"duplicates"`
}

// verify consumes the load's topics from the start until every
// acknowledged record is found, or nothing new came for 5 seconds.
func verify(ctx context.Context, o Options, runID string, acked map[int64]bool) (*Verification, error) {
	topics := []string{o.Topic}
	if o.Topics > 1 {
		topics = topics[:0]
		for i := range o.Topics {
			topics = append(topics, fmt.Sprintf("%s-%d", o.Topic, i))
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(o.Verify, ",")...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	seen := map[int64]int{}
	prefix := runID + "-"
	lastNew := time.Now()
	for time.Since(lastNew) < 5*time.Second && ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			v := strings.TrimPrefix(string(r.Value), `"`) // ndjson and v2 values are JSON strings
			if !strings.HasPrefix(v, prefix) {
				return
			}
			end := strings.IndexByte(v, ' ')
			if end < 0 {
				return
			}
			seq, err := strconv.ParseInt(v[len(prefix):end], 10, 64)
			if err != nil {
				return
			}
			seen[seq]++
			lastNew = time.Now()
		})
		found := 0
		for s := range acked {
			if seen[s] > 0 {
				found++
			}
		}
		if found == len(acked) {
			break
		}
	}
	v := &Verification{Acknowledged: len(acked)}
	for s := range acked {
		if seen[s] > 0 {
			v.Found++
		} else {
			v.Missing++
		}
	}
	for _, n := range seen {
		if n > 1 {
			v.Duplicates += n - 1
		}
	}
	return v, nil
}
