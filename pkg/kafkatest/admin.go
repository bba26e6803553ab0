package kafkatest

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// admin sends one admin request to the cluster at addr and fails the test
// when Kafka answers with an error.
func admin(tb testing.TB, addr string, req kmsg.Request, opts ...kgo.Opt) kmsg.Response {
	tb.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cl.Request(ctx, req)
	if err != nil {
		tb.Fatalf("kafka admin request %T: %v", req, err)
	}
	return resp
}

// CreateTopic creates topic with partitions partitions, as an operator
// would with kafka-topics.sh.
func CreateTopic(tb testing.TB, addr, topic string, partitions int32, opts ...kgo.Opt) {
	tb.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	t := kmsg.NewCreateTopicsRequestTopic()
	t.Topic, t.NumPartitions, t.ReplicationFactor = topic, partitions, 1
	req.Topics = append(req.Topics, t)
	resp := admin(tb, addr, req, opts...).(*kmsg.CreateTopicsResponse)
	for _, rt := range resp.Topics {
		if err := kerr.ErrorForCode(rt.ErrorCode); err != nil {
			tb.Fatalf("create topic %s: %v", topic, err)
		}
	}
}

// SetSCRAMPassword sets user's SCRAM-SHA-256 password, as an operator
// rotating it would with kafka-configs.sh --alter --add-config
// 'SCRAM-SHA-256=[password=...]'.
func SetSCRAMPassword(tb testing.TB, addr, user, password string, opts ...kgo.Opt) {
	tb.Helper()
	salt := make([]byte, 32)
	_, _ = rand.Read(salt)
	const iterations = 4096
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		tb.Fatal(err)
	}
	req := kmsg.NewPtrAlterUserSCRAMCredentialsRequest()
	u := kmsg.NewAlterUserSCRAMCredentialsRequestUpsertion()
	u.Name, u.Mechanism, u.Iterations, u.Salt, u.SaltedPassword = user, 1, iterations, salt, salted // mechanism 1: SCRAM-SHA-256
	req.Upsertions = append(req.Upsertions, u)
	resp := admin(tb, addr, req, opts...).(*kmsg.AlterUserSCRAMCredentialsResponse)
	for _, r := range resp.Results {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			tb.Fatalf("set the SCRAM password of %s: %v", user, err)
		}
	}
}
