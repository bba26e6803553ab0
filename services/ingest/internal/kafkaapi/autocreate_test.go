package kafkaapi_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// topicsInKafka lists the real cluster's topics with their partition
// counts, asked straight of the broker.
func topicsInKafka(t *testing.T, addr string) map[string]int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	require.NoError(t, err)
	defer cl.Close()
	details, err := kadm.NewClient(cl).ListTopics(t.Context())
	require.NoError(t, err)
	out := map[string]int{}
	for name, d := range details {
		out[name] = len(d.Partitions)
	}
	return out
}

// TestListenerCreatesTopicsAsKafkaAllows: a client producing through the
// listener to a topic Kafka does not have gets it created, as a produce
// straight to Kafka would when the broker allows auto-creation: the
// record is in Kafka, in a topic with the broker's default partition
// count.
func TestListenerCreatesTopicsAsKafkaAllows(t *testing.T) {
	_, addr := kafkatest.NewCluster(t) // auto-creation allowed, 3 partitions by default
	in := ingesttest.Start(t, addr)
	require.NotContains(t, topicsInKafka(t, addr), "fresh")

	cl := kgoClient(t, in.Kafka, kgo.AllowAutoTopicCreation())
	rec := &kgo.Record{Topic: "fresh", Key: []byte("k"), Value: []byte("first record of a new topic")}
	require.NoError(t, cl.ProduceSync(t.Context(), rec).FirstErr())

	assert.Equal(t, 3, topicsInKafka(t, addr)["fresh"], "the topic Kafka created, with its default partition count")
	got := kafkatest.Consume(t, addr, "fresh", 1, 10*time.Second)
	assert.Equal(t, "first record of a new topic", string(got[0].Value))
	assert.Equal(t, "k", string(got[0].Key))
	assert.Equal(t, rec.Partition, got[0].Partition, "the partition kgo chose")
}

// TestListenerCreatesNoTopicKafkaForbids: where auto-creation is not
// allowed, by the broker or by the ingest's allow.auto.create.topics, or
// the client may not write the topic, the client is told the topic is
// unknown (or forbidden), and no topic is created. A client that does not
// allow auto-creation (kgo without AllowAutoTopicCreation) creates none
// either.
func TestListenerCreatesNoTopicKafkaForbids(t *testing.T) {
	for _, tc := range []struct {
		name    string
		broker  []kfake.Opt
		env     []string
		topic   string
		wantErr error
		noAuto  bool // the client does not allow auto-creation
	}{
		{name: "broker forbids", topic: "fresh", wantErr: kerr.UnknownTopicOrPartition},
		{name: "ingest forbids", broker: []kfake.Opt{kfake.AllowAutoTopicCreation()}, env: []string{"SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false"}, topic: "fresh", wantErr: kerr.UnknownTopicOrPartition},
		{name: "client forbids", broker: []kfake.Opt{kfake.AllowAutoTopicCreation()}, topic: "fresh", wantErr: kerr.UnknownTopicOrPartition, noAuto: true},
		{name: "denied topic", broker: []kfake.Opt{kfake.AllowAutoTopicCreation()}, topic: "__hidden", wantErr: kerr.TopicAuthorizationFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.DefaultNumPartitions(3)}, tc.broker...)...)
			require.NoError(t, err)
			t.Cleanup(c.Close)
			addr := c.ListenAddrs()[0]
			in := ingesttest.Start(t, addr, tc.env...)

			opts := []kgo.Opt{kgo.UnknownTopicRetries(1), kgo.RecordDeliveryTimeout(5 * time.Second)}
			if !tc.noAuto {
				opts = append(opts, kgo.AllowAutoTopicCreation())
			}
			cl := kgoClient(t, in.Kafka, opts...)
			err = cl.ProduceSync(t.Context(), &kgo.Record{Topic: tc.topic, Value: []byte("v")}).FirstErr()
			require.Error(t, err)
			assert.True(t, errors.Is(err, tc.wantErr), "got %v, want %v", err, tc.wantErr)
			assert.NotContains(t, topicsInKafka(t, addr), tc.topic, "no topic created")
		})
	}
}
