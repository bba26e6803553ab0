package kafkatest

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// FailProduce is kfake's answer to req that fails every partition it names
// with code.
func FailProduce(req *kmsg.ProduceRequest, code *kerr.Error) *kmsg.ProduceResponse {
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	resp.Version = req.Version
	for _, rt := range req.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = code.Code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// RefuseProduce makes c answer every produce with code while refusing is
// set; otherwise c takes the records as usual.
func RefuseProduce(c *kfake.Cluster, refusing *atomic.Bool, code *kerr.Error) {
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !refusing.Load() {
			return nil, nil, false
		}
		return FailProduce(req.(*kmsg.ProduceRequest), code), nil, true
	})
}

// HoldProduce makes c hold every produce that arrives while holding is
// set, with no answer (a hung Kafka), until holding is cleared, when c
// takes it as usual, or the test ends; c serves its other requests
// meanwhile. A produce that arrives while holding is not set is taken as
// usual.
func HoldProduce(tb testing.TB, c *kfake.Cluster, holding *atomic.Bool) {
	ended := make(chan struct{})
	tb.Cleanup(func() { close(ended) })
	c.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if holding.Load() {
			c.SleepControl(func() {
				for holding.Load() {
					select {
					case <-ended:
						return
					case <-time.After(5 * time.Millisecond):
					}
				}
			})
		}
		return nil, nil, false
	})
}
