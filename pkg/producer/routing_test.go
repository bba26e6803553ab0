package producer

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	describeconfigsapi "github.com/segmentio/kafka-go/protocol/describeconfigs"
	metadataapi "github.com/segmentio/kafka-go/protocol/metadata"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/segmentio/kafka-go/protocol/rawproduce"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
)

// movingCluster is a transport for the producer's scheduling tests: one
// topic "t" of one partition, whose leader the test moves, whose first
// metadata reading and first produce the test may hold. A real broker
// cannot move a leader, or hold a request, at a chosen moment; the tests
// that need Kafka itself use kfake.
type movingCluster struct {
	leader   atomic.Int32
	metaGate chan struct{} // the first metadata reading waits for it
	metaOnce sync.Once
	hold     chan struct{} // the first produce waits for it
	holdOnce sync.Once
	produces chan []string // the values of each produce request
}

func (m *movingCluster) RoundTrip(_ context.Context, _ net.Addr, req kafka.Request) (kafka.Response, error) {
	switch r := req.(type) {
	case *metadataapi.Request:
		m.metaOnce.Do(func() {
			if m.metaGate != nil {
				<-m.metaGate
			}
		})
		return &metadataapi.Response{Topics: []metadataapi.ResponseTopic{{Name: "t",
			Partitions: []metadataapi.ResponsePartition{{PartitionIndex: 0, LeaderID: m.leader.Load()}}}}}, nil
	case *rawproduce.Request:
		var values []string
		resp := &produceapi.Response{}
		for _, t := range r.Topics {
			rt := produceapi.ResponseTopic{Topic: t.Topic}
			for _, p := range t.Partitions {
				var rs protocol.RecordSet
				if _, err := rs.ReadFrom(p.RecordSet.Reader); err != nil {
					panic(err)
				}
				for {
					rec, err := rs.Records.ReadRecord()
					if err != nil {
						break
					}
					b := make([]byte, 64)
					n, _ := rec.Value.Read(b)
					values = append(values, string(b[:n]))
				}
				rt.Partitions = append(rt.Partitions, produceapi.ResponsePartition{Partition: p.Partition})
			}
			resp.Topics = append(resp.Topics, rt)
		}
		m.produces <- values
		m.holdOnce.Do(func() {
			if m.hold != nil {
				<-m.hold
			}
		})
		return resp, nil
	}
	if _, ok := req.(*describeconfigsapi.Request); ok {
		return nil, errors.New("the topic's configs are not told here")
	}
	panic("unexpected request")
}

func movingProducer(t *testing.T, m *movingCluster, env ...string) *Producer {
	t.Helper()
	c, err := config.Parse(nil, append([]string{"SPILLWAY_KAFKA_BROKERS=127.0.0.1:1"}, env...))
	require.NoError(t, err)
	p, err := New(c.Kafka, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	p.client.Transport = m
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func startOne(p *Producer, value string) chan []record.Result {
	ch := make(chan []record.Result, 1)
	p.Start([]record.Record{{Topic: "t", Value: []byte(value), Partition: 0}}, func(r []record.Result) { ch <- r })
	return ch
}

func answerOf(t *testing.T, ch chan []record.Result) record.Result {
	t.Helper()
	select {
	case res := <-ch:
		return res[0]
	case <-time.After(10 * time.Second):
		t.Fatal("no answer")
		return record.Result{}
	}
}

// leaderMovesInFlight queues "one" at leader 1, holds its request, moves
// the partition to leader 2, and queues "two" there: leader 2's sender
// finds the partition in flight and stops.
func leaderMovesInFlight(t *testing.T, m *movingCluster, p *Producer) (one, two chan []record.Result) {
	t.Helper()
	m.leader.Store(1)
	_, err := p.topicLayout("t")
	require.NoError(t, err)
	one = startOne(p, "one")
	require.Equal(t, []string{"one"}, <-m.produces)
	m.leader.Store(2)
	_, err = p.readLayout(t.Context(), "t")
	require.NoError(t, err)
	two = startOne(p, "two")
	require.Eventually(t, func() bool {
		p.mu.Lock()
		s := p.senders[2]
		p.mu.Unlock()
		if s == nil {
			return false
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return !s.running
	}, 5*time.Second, time.Millisecond)
	return one, two
}

// TestLeaderMovedWhileInFlight: records queued for a partition whose
// leader moved while its batch was in flight are sent once that batch is
// answered, not left until another record comes.
func TestLeaderMovedWhileInFlight(t *testing.T) {
	m := &movingCluster{hold: make(chan struct{}), produces: make(chan []string, 10)}
	p := movingProducer(t, m)
	one, two := leaderMovesInFlight(t, m, p)
	close(m.hold)
	assert.Equal(t, record.Delivered, answerOf(t, one).Outcome)
	res := answerOf(t, two)
	assert.Equal(t, record.Delivered, res.Outcome, res.Err)
	assert.Equal(t, []string{"two"}, <-m.produces)
}

// TestCloseAfterLeaderMoved: Close sends such records too before it
// returns.
func TestCloseAfterLeaderMoved(t *testing.T) {
	m := &movingCluster{hold: make(chan struct{}), produces: make(chan []string, 10)}
	p := movingProducer(t, m)
	one, two := leaderMovesInFlight(t, m, p)
	close(m.hold)
	answerOf(t, one)
	require.NoError(t, p.Close())
	select {
	case values := <-m.produces:
		assert.Equal(t, []string{"two"}, values)
	default:
		t.Fatal("Close returned without sending record two")
	}
	assert.Equal(t, record.Delivered, answerOf(t, two).Outcome)
}

// TestExpiredRecordNotSent: a record still queued when its call's message
// timeout answered it (the caller then spills it) is dropped, not sent
// as well.
func TestExpiredRecordNotSent(t *testing.T) {
	m := &movingCluster{hold: make(chan struct{}), produces: make(chan []string, 10)}
	m.leader.Store(1)
	p := movingProducer(t, m, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=300")
	_, err := p.topicLayout("t")
	require.NoError(t, err)
	startOne(p, "one")
	<-m.produces // in flight, held
	res := answerOf(t, startOne(p, "two"))
	require.Equal(t, record.ReasonTimeout, record.ReasonOf(res.Err))
	close(m.hold)
	select {
	case values := <-m.produces:
		t.Fatalf("an expired record was sent anyway: %v", values)
	case <-time.After(time.Second): // a request would come at once
	}
}

// TestCallsKeepTheirOrderWhileTheirTopicIsLookedUp: a call for a topic
// not seen yet waits for its metadata apart from the caller, and the calls
// to that topic made after it wait behind it: both reach Kafka in the
// order made. (Calls to other topics do not wait:
// TestSlowLookupHoldsOnlyItsTopic.)
func TestCallsKeepTheirOrderWhileTheirTopicIsLookedUp(t *testing.T) {
	m := &movingCluster{metaGate: make(chan struct{}), produces: make(chan []string, 10)}
	m.leader.Store(1)
	p := movingProducer(t, m, "SPILLWAY_KAFKA_LINGER_MS=200")
	first := []record.Record{{Topic: "t", Value: []byte("first"), Partition: 0}}
	p.Start(first, func([]record.Result) {}) // its lookup waits for the gate
	p.Start([]record.Record{{Topic: "t", Value: []byte("second"), Partition: 0}}, func([]record.Result) {})
	close(m.metaGate)
	assert.Equal(t, []string{"first", "second"}, <-m.produces)
	assert.True(t, first[0].Timestamp.IsZero(), "the caller's records are not written to")
}

// TestDeletedTopicFailsOnlyItsRecords: a topic deleted while the
// producer's layout still lists it fails its own records as unknown, and
// the other topics' records in the same request are delivered.
func TestDeletedTopicFailsOnlyItsRecords(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "a", "b"))
	p := newProducer(t, addr, "SPILLWAY_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS=200", "SPILLWAY_KAFKA_LINGER_MS=20",
		"SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false") // so that reading b does not create it again
	_, err := p.topicLayout("a")
	require.NoError(t, err)
	stale, err := p.topicLayout("b")
	require.NoError(t, err)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	require.NoError(t, err)
	defer cl.Close()
	del := kmsg.NewPtrDeleteTopicsRequest()
	del.Topics = []kmsg.DeleteTopicsRequestTopic{{Topic: kmsg.StringPtr("b")}}
	_, err = del.RequestWith(t.Context(), cl)
	require.NoError(t, err)
	require.Eventually(t, func() bool { // the transport's metadata drops b
		_, err := p.layout(t.Context(), "b")
		return err != nil
	}, 10*time.Second, 50*time.Millisecond)
	// The producer's own layout still lists b, as it may for up to
	// topic.metadata.refresh.interval.ms after the transport refreshed.
	p.layoutMu.Lock()
	p.layouts["b"] = cachedLayout{layout: stale, at: time.Now()}
	p.layoutMu.Unlock()
	res := p.Produce(t.Context(), []record.Record{
		{Topic: "a", Value: []byte("x"), Partition: 0},
		{Topic: "b", Value: []byte("y"), Partition: 0},
	})
	assert.Equal(t, record.Delivered, res[0].Outcome, "topic a's record: %v", res[0].Err)
	assert.Equal(t, record.ReasonUnknownTopic, record.ReasonOf(res[1].Err), "topic b's record: %v", res[1].Err)
}
