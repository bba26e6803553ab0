package kafkaapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// startRequiringCredentials starts an ingest with
// security.require_credentials and one API key, returned.
func startRequiringCredentials(t *testing.T, addr string) (*ingesttest.Ingest, string) {
	t.Helper()
	key := securitytest.Secret(t, "kafka-signin-key-0123456789")
	sum := sha256.Sum256([]byte(key))
	in := ingesttest.StartYAML(t, addr, `
security:
  require_credentials: true
  api_keys:
    - principal: billing
      sha256: `+hex.EncodeToString(sum[:])+`
`)
	return in, key
}

// closedWithoutAnswer says whether the peer closed c before it sent
// anything: a read ends at once with no byte, not at its deadline.
func closedWithoutAnswer(t *testing.T, c net.Conn) bool {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	n, err := c.Read(make([]byte, 1))
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestNothingBeforeSigningIn: with security.require_credentials, a
// client that has not signed in learns no topic name and makes Kafka
// create no topic, even when it allows auto-creation: only ApiVersions
// and SASL are answered, and any other request closes the connection, as
// Kafka's broker does on a SASL listener. A signed-in client on the same
// listener sees its topics.
func TestNothingBeforeSigningIn(t *testing.T) {
	_, addr := kafkatest.NewCluster(t) // auto-creation allowed
	kafkatest.CreateTopic(t, addr, "orders", 1)
	in, key := startRequiringCredentials(t, addr)

	anon := kgoClient(t, in.Kafka, kgo.AllowAutoTopicCreation(), kgo.RecordRetries(0), kgo.RequestRetries(0),
		kgo.RecordDeliveryTimeout(3*time.Second), kgo.DisableIdempotentWrite())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	listed, _ := kadm.NewClient(anon).ListTopics(ctx)
	assert.Empty(t, listed.Names(), "topic names told to a client that has not signed in")
	err := anon.ProduceSync(ctx, &kgo.Record{Topic: "fresh", Value: []byte("x")}).FirstErr()
	require.Error(t, err)
	assert.NotContains(t, topicsInKafka(t, addr), "fresh", "a topic created in Kafka for a client that has not signed in")

	// On the wire: ApiVersions is answered; Metadata closes the connection.
	c, err := net.DialTimeout("tcp", in.Kafka, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("raw"))
	api := kmsg.NewPtrApiVersionsRequest()
	_, err = c.Write(f.AppendRequest(nil, api, 1))
	require.NoError(t, err)
	size := make([]byte, 4)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(c, size)
	require.NoError(t, err, "ApiVersions is answered before signing in")
	_, err = io.ReadFull(c, make([]byte, binary.BigEndian.Uint32(size)))
	require.NoError(t, err)
	meta := kmsg.NewPtrMetadataRequest()
	meta.Version = 4
	meta.AllowAutoTopicCreation = true
	_, err = c.Write(f.AppendRequest(nil, meta, 2))
	require.NoError(t, err)
	assert.True(t, closedWithoutAnswer(t, c), "a Metadata request before signing in closes the connection")
	assert.GreaterOrEqual(t, ingesttest.Metric(t, in.Monitor, `spillway_denied_total{principal="anonymous",reason="unauthenticated"}`), 2.0,
		"each connection closed is counted: kgo's and the raw one")

	signed := kgoClient(t, in.Kafka, kgo.SASL(plain.Auth{User: "billing", Pass: key}.AsMechanism()))
	listed, err = kadm.NewClient(signed).ListTopics(t.Context())
	require.NoError(t, err)
	assert.Equal(t, []string{"orders"}, listed.Names())
}

// TestRequestBeforeSigningInBounded: with credentials required, a
// request before signing in is bounded to 512 KiB, as Kafka's broker
// bounds one during SASL (sasl.server.max.receive.size): a request of
// 512 KiB is answered, a size prefix one byte over closes the connection
// before its body is read. Once signed in, a produce request over 512 KiB
// is taken.
func TestRequestBeforeSigningInBounded(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "big", 1)
	in, key := startRequiringCredentials(t, addr)

	// An ApiVersions v0 request padded to 512 KiB: its body has no field,
	// so the padding is not read.
	header := kmsg.NewRequestFormatter(kmsg.FormatterClientID("raw")).AppendRequest(nil, kmsg.NewPtrApiVersionsRequest(), 7)[4:]
	padded := append(header, bytes.Repeat([]byte{0}, 512<<10-len(header))...)
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(padded)))
	c, err := net.DialTimeout("tcp", in.Kafka, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write(append(frame, padded...))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	size := make([]byte, 4)
	_, err = io.ReadFull(c, size)
	require.NoError(t, err, "a request of 512 KiB before signing in is answered")

	over, err := net.DialTimeout("tcp", in.Kafka, 5*time.Second)
	require.NoError(t, err)
	defer over.Close()
	_, err = over.Write(binary.BigEndian.AppendUint32(nil, 512<<10+1))
	require.NoError(t, err)
	assert.True(t, closedWithoutAnswer(t, over), "a size prefix over 512 KiB before signing in closes the connection")

	signed := kgoClient(t, in.Kafka, kgo.SASL(plain.Auth{User: "billing", Pass: key}.AsMechanism()))
	value := bytes.Repeat([]byte("v"), 600<<10)
	require.NoError(t, signed.ProduceSync(t.Context(), &kgo.Record{Topic: "big", Value: value}).FirstErr())
	got := kafkatest.Consume(t, addr, "big", 1, 10*time.Second)
	assert.Len(t, got[0].Value, len(value))
}
