package producer

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
)

// TestWithdrawnRecordNotSent: a caller that stops waiting withdraws its
// call. A record still queued (behind a batch in flight, or behind the
// topic's first metadata) leaves unsent, answered with ErrWithdrawn, and
// its call is done at once; a record on the wire is reported as such
// (timeout, may still arrive), and its call is done with Kafka's answer.
func TestWithdrawnRecordNotSent(t *testing.T) {
	t.Run("behind a batch in flight", func(t *testing.T) {
		m := &movingCluster{hold: make(chan struct{}), produces: make(chan []string, 10)}
		m.leader.Store(1)
		p := movingProducer(t, m)
		_, err := p.topicLayout("t")
		require.NoError(t, err)
		one, two := make(chan []record.Result, 1), make(chan []record.Result, 1)
		withdrawOne := p.Start([]record.Record{{Topic: "t", Value: []byte("one"), Partition: 0}}, func(r []record.Result) { one <- r })
		assert.Equal(t, []string{"one"}, <-m.produces) // in flight, held
		withdrawTwo := p.Start([]record.Record{{Topic: "t", Value: []byte("two"), Partition: 0}}, func(r []record.Result) { two <- r })

		res := withdrawTwo()
		require.Len(t, res, 1)
		assert.ErrorIs(t, res[0].Err, record.ErrWithdrawn)
		assert.Equal(t, record.ReasonTimeout, record.ReasonOf(res[0].Err))
		assert.Equal(t, "t", res[0].Topic)
		assert.ErrorIs(t, answerOf(t, two).Err, record.ErrWithdrawn, "nothing of it on the wire: done at once")

		res = withdrawOne()
		require.Len(t, res, 1)
		assert.Equal(t, record.ReasonTimeout, record.ReasonOf(res[0].Err))
		assert.NotErrorIs(t, res[0].Err, record.ErrWithdrawn, "on the wire: it may still arrive")
		close(m.hold)
		assert.Equal(t, record.Delivered, answerOf(t, one).Outcome, "done has Kafka's answer")

		require.NoError(t, p.Close()) // sends whatever is still queued
		select {
		case values := <-m.produces:
			t.Fatalf("a withdrawn record was sent: %v", values)
		default:
		}
	})
	t.Run("behind the topic's first metadata", func(t *testing.T) {
		m := &movingCluster{metaGate: make(chan struct{}), produces: make(chan []string, 10)}
		m.leader.Store(1)
		p := movingProducer(t, m)
		answered := make(chan []record.Result, 1)
		withdraw := p.Start([]record.Record{{Topic: "t", Value: []byte("waiting"), Partition: 0}}, func(r []record.Result) { answered <- r })
		res := withdraw()
		require.Len(t, res, 1)
		assert.ErrorIs(t, res[0].Err, record.ErrWithdrawn)
		assert.ErrorIs(t, answerOf(t, answered).Err, record.ErrWithdrawn)
		close(m.metaGate)
		require.NoError(t, p.Close())
		select {
		case values := <-m.produces:
			t.Fatalf("a withdrawn record was sent: %v", values)
		default:
		}
	})
}
