package kafkaapi_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// kgoClient is a franz-go client of the listener, idempotent as kgo is
// by default.
func kgoClient(t *testing.T, addr string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr), kgo.RecordRetries(3),
		kgo.ProduceRequestTimeout(5 * time.Second), kgo.RecordDeliveryTimeout(15 * time.Second)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(cl.Close)
	return cl
}

func headers(r *kgo.Record) map[string]string {
	out := map[string]string{}
	for _, h := range r.Headers {
		out[h.Key] = string(h.Value)
	}
	return out
}

// TestKgoProducesThroughTheListener: franz-go's kgo, idempotent by
// default, produces records with keys, headers and values through the
// listener; each is in Kafka byte for byte, at the partition and offset
// the client was told, with Spillway's id header added.
func TestKgoProducesThroughTheListener(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 3)
	in := ingesttest.Start(t, addr)
	cl := kgoClient(t, in.Kafka)

	var sent []*kgo.Record
	for i := range 5 {
		sent = append(sent, &kgo.Record{Topic: "orders", Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, `{"n":%d}`, i),
			Headers: []kgo.RecordHeader{{Key: "h", Value: fmt.Appendf(nil, "v%d", i)}, {Key: "empty", Value: []byte{}}}})
	}
	require.NoError(t, cl.ProduceSync(t.Context(), sent...).FirstErr())

	got := kafkatest.Consume(t, addr, "orders", 5, 10*time.Second)
	byKey := map[string]*kgo.Record{}
	for _, r := range got {
		byKey[string(r.Key)] = r
	}
	for i, s := range sent {
		r := byKey[string(s.Key)]
		require.NotNil(t, r, "record %d not in Kafka", i)
		assert.Equal(t, string(s.Value), string(r.Value))
		h := headers(r)
		assert.Equal(t, fmt.Sprintf("v%d", i), h["h"])
		assert.Contains(t, h, "empty")
		assert.NotEmpty(t, h["spillway-id"])
		assert.Equal(t, s.Partition, r.Partition, "the partition kgo chose")
		assert.Equal(t, s.Offset, r.Offset, "the offset kgo was told")
	}
	assert.Equal(t, 5.0, ingesttest.Metric(t, in.Monitor, `spillway_records_received_total{api="kafka",topic="orders"}`))
}

// TestKafkaGoWriterEveryCodec: kafka-go's Writer (not idempotent) with
// each codec; the records are in Kafka exactly.
func TestKafkaGoWriterEveryCodec(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "codecs", 2)
	in := ingesttest.Start(t, addr)
	codecs := []compress.Compression{0, kafka.Gzip, kafka.Snappy, kafka.Lz4, kafka.Zstd}
	var want []string
	for _, codec := range codecs {
		w := &kafka.Writer{Addr: kafka.TCP(in.Kafka), Topic: "codecs", Compression: codec, BatchTimeout: 5 * time.Millisecond,
			RequiredAcks: kafka.RequireAll, Transport: &kafka.Transport{MetadataTTL: time.Second}, MaxAttempts: 3}
		var msgs []kafka.Message
		for i := range 3 {
			v := fmt.Sprintf("codec %d record %d %s", codec, i, string(make([]byte, 200)))
			want = append(want, v)
			msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprint(i)), Value: []byte(v), Headers: []kafka.Header{{Key: "codec", Value: []byte(fmt.Sprint(codec))}}})
		}
		require.NoError(t, w.WriteMessages(t.Context(), msgs...), "codec %d", codec)
		require.NoError(t, w.Close())
	}
	got := kafkatest.Consume(t, addr, "codecs", len(want), 10*time.Second)
	var values []string
	for _, r := range got {
		values = append(values, string(r.Value))
		assert.NotEmpty(t, headers(r)["codec"])
	}
	sort.Strings(want)
	sort.Strings(values)
	assert.Equal(t, want, values)
}

// TestRefusalsReachTheClient: an ACL and a validation rule refuse
// records, and the Kafka client gets the error with the rule's message;
// an unknown topic is UNKNOWN_TOPIC_OR_PARTITION.
func TestRefusalsReachTheClient(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	for _, topic := range []string{"orders", "secret"} {
		kafkatest.CreateTopic(t, addr, topic, 1)
	}
	in := ingesttest.StartYAML(t, addr, `
security:
  deny_topics: ["secret"]
validation:
  rules:
    - topics: ["orders"]
      json: true
`)
	cl := kgoClient(t, in.Kafka, kgo.DisableIdempotentWrite())

	err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("not json")}).FirstErr()
	require.Error(t, err)
	var ke *kerr.Error
	require.True(t, errors.As(err, &ke), "%v", err)
	assert.Equal(t, kerr.InvalidRecord.Code, ke.Code)
	// kgo keeps only the code; a raw produce shows the partition's message.
	resp := rawProduce(t, in.Kafka, "orders", &kmsg.Record{Value: []byte("not json")})
	p := resp.Topics[0].Partitions[0]
	assert.Equal(t, kerr.InvalidRecord.Code, p.ErrorCode)
	require.NotNil(t, p.ErrorMessage)
	assert.Equal(t, "validation rule json (validation.rules[0]) failed: the value is not valid JSON", *p.ErrorMessage)
	assert.Equal(t, int64(-1), p.BaseOffset)

	err = cl.ProduceSync(t.Context(), &kgo.Record{Topic: "secret", Value: []byte(`{}`)}).FirstErr()
	require.ErrorIs(t, err, kerr.TopicAuthorizationFailed)

	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte(`{"ok":true}`)}).FirstErr())
	got := kafkatest.Consume(t, addr, "orders", 1, 10*time.Second)
	assert.Equal(t, `{"ok":true}`, string(got[0].Value))
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="rejected",topic="orders"}`), "kgo's record and the raw one")
}

// TestSASLPlainWithAnAPIKey: with credentials required, a client that
// signs in with SASL PLAIN and an API key as the password produces, its
// records counted under the key's principal and its library; a wrong key
// fails the sign-in.
func TestSASLPlainWithAnAPIKey(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	key := securitytest.Secret(t, "kafka-test-key-0123456789")
	sum := sha256.Sum256([]byte(key))
	in := ingesttest.StartYAML(t, addr, `
security:
  require_credentials: true
  api_keys:
    - principal: billing
      sha256: `+hex.EncodeToString(sum[:])+`
`)
	good := kgoClient(t, in.Kafka, kgo.SASL(plain.Auth{User: "billing", Pass: key}.AsMechanism()),
		kgo.SoftwareNameAndVersion("acme-producer", "1.2.3"))
	require.NoError(t, good.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("signed in")}).FirstErr())
	got := kafkatest.Consume(t, addr, "orders", 1, 10*time.Second)
	assert.Equal(t, "signed in", string(got[0].Value))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_client_requests_total{library="acme-producer",principal="billing",version="1.2.3"}`))

	bad := kgoClient(t, in.Kafka, kgo.SASL(plain.Auth{User: "billing", Pass: "wrong"}.AsMechanism()), kgo.RecordRetries(0))
	err := bad.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("x")}).FirstErr()
	require.ErrorIs(t, err, kerr.SaslAuthenticationFailed)

	anon := kgoClient(t, in.Kafka, kgo.RecordRetries(0), kgo.DisableIdempotentWrite())
	err = anon.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("x")}).FirstErr()
	require.Error(t, err)
}

// TestKafkaCutOffTheProduceIsBuffered: with Kafka cut off after the
// client learned the topics, its produce still succeeds: the records are
// buffered (offset -1) and counted so.
func TestKafkaCutOffTheProduceIsBuffered(t *testing.T) {
	k := kafkatest.NewCuttable(t)
	kafkatest.CreateTopic(t, k.Addr, "orders", 1)
	in := ingesttest.Start(t, k.Addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1")
	cl := kgoClient(t, in.Kafka)
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("before")}).FirstErr())

	k.Cut()
	r := &kgo.Record{Topic: "orders", Key: []byte("k"), Value: []byte("while cut")}
	require.NoError(t, cl.ProduceSync(t.Context(), r).FirstErr())
	assert.Equal(t, int64(-1), r.Offset, "a buffered record's offset")
	assert.Equal(t, 1.0, sumMetric(t, in.Monitor, "spillway_records_buffered_total", `topic="orders"`))
}

// rawProduce sends one uncompressed batch of recs to partition 0 of
// topic with kmsg, and returns the answer.
func rawProduce(t *testing.T, addr, topic string, recs ...*kmsg.Record) *kmsg.ProduceResponse {
	t.Helper()
	req := kafkatest.ProduceRequest(topic, kafkatest.RecordBatch(recs...))
	cl := kgoClient(t, addr)
	resp, err := req.RequestWith(t.Context(), cl)
	require.NoError(t, err)
	return resp
}

// sumMetric sums the series of name whose labels contain label.
func sumMetric(t *testing.T, monitor, name, label string) float64 {
	t.Helper()
	resp, err := http.Get(monitor + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			var v float64
			_, err := fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
			require.NoError(t, err)
			sum += v
		}
	}
	return sum
}

// roundTrip sends req on a new connection to addr, framed by kmsg, and
// reads the answer into resp (header v0, or v1 for a flexible answer
// other than ApiVersions').
func roundTrip(t *testing.T, addr string, req kmsg.Request, resp kmsg.Response) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Write(kmsg.NewRequestFormatter(kmsg.FormatterClientID("raw")).AppendRequest(nil, req, 42))
	require.NoError(t, err)
	corr, body := readAnswer(t, c)
	assert.Equal(t, int32(42), corr, "correlation id")
	if resp.IsFlexible() && resp.Key() != 18 {
		body = body[1:] // empty header tags
	}
	require.NoError(t, resp.ReadFrom(body))
}

// readAnswer reads one answer framed as a broker frames it: its
// correlation id, and its body after it.
func readAnswer(t *testing.T, c net.Conn) (int32, []byte) {
	t.Helper()
	size := make([]byte, 4)
	_, err := io.ReadFull(c, size)
	require.NoError(t, err)
	body := make([]byte, binary.BigEndian.Uint32(size))
	_, err = io.ReadFull(c, body)
	require.NoError(t, err)
	return int32(binary.BigEndian.Uint32(body)), body[4:]
}

// TestProtocolVersions: ApiVersions of a version newer than Spillway's
// is answered error 35 with Spillway's ranges in a v0 body, as brokers
// do; an API it does not serve is answered UNSUPPORTED_VERSION.
func TestProtocolVersions(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	api := kmsg.NewPtrApiVersionsRequest()
	api.Version = 4
	api.ClientSoftwareName, api.ClientSoftwareVersion = "raw", "1.0"
	v0 := &kmsg.ApiVersionsResponse{Version: 0}
	roundTrip(t, in.Kafka, api, v0)
	assert.Equal(t, kerr.UnsupportedVersion.Code, v0.ErrorCode)
	ranges := map[int16][2]int16{}
	for _, k := range v0.ApiKeys {
		ranges[k.ApiKey] = [2]int16{k.MinVersion, k.MaxVersion}
	}
	assert.Equal(t, [2]int16{0, 3}, ranges[18], "ApiVersions")
	assert.Equal(t, [2]int16{3, 8}, ranges[0], "Produce")
	assert.Equal(t, [2]int16{0, 8}, ranges[3], "Metadata")
	assert.Equal(t, [2]int16{0, 1}, ranges[22], "InitProducerId")

	api.Version = 3
	v3 := &kmsg.ApiVersionsResponse{Version: 3}
	roundTrip(t, in.Kafka, api, v3)
	assert.Equal(t, int16(0), v3.ErrorCode)

	groups := kmsg.NewPtrListGroupsRequest()
	groups.Version = 3
	lg := &kmsg.ListGroupsResponse{Version: 3}
	roundTrip(t, in.Kafka, groups, lg)
	assert.Equal(t, kerr.UnsupportedVersion.Code, lg.ErrorCode)

	ipi := kmsg.NewPtrInitProducerIDRequest()
	ipi.Version = 1
	a, b := &kmsg.InitProducerIDResponse{Version: 1}, &kmsg.InitProducerIDResponse{Version: 1}
	roundTrip(t, in.Kafka, ipi, a)
	roundTrip(t, in.Kafka, ipi, b)
	assert.Equal(t, int16(0), a.ErrorCode)
	assert.NotEqual(t, a.ProducerID, b.ProducerID, "each producer its own id")
}

// TestAcksZero: kafka-go's Writer with acks 0 gets no answer and its
// records are in Kafka.
func TestAcksZero(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "fire", 1)
	in := ingesttest.Start(t, addr)
	w := &kafka.Writer{Addr: kafka.TCP(in.Kafka), Topic: "fire", BatchTimeout: 5 * time.Millisecond,
		RequiredAcks: kafka.RequireNone, Transport: &kafka.Transport{MetadataTTL: time.Second}}
	require.NoError(t, w.WriteMessages(t.Context(), kafka.Message{Key: []byte("a"), Value: []byte("one")}, kafka.Message{Key: []byte("b"), Value: []byte("two")}))
	require.NoError(t, w.Close())
	got := kafkatest.Consume(t, addr, "fire", 2, 10*time.Second)
	values := []string{string(got[0].Value), string(got[1].Value)}
	sort.Strings(values)
	assert.Equal(t, []string{"one", "two"}, values)
}

// TestShutdownAnswersInFlightProduce stops the ingest while a produce
// waits for a slow Kafka: the produce is still answered (delivered), and
// the listener is closed after.
func TestShutdownAnswersInFlightProduce(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "slow", 1)
	in := ingesttest.Start(t, addr)
	cl := kgoClient(t, in.Kafka, kgo.RecordRetries(0))
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "slow", Value: []byte("warm-up")}).FirstErr())

	// Kafka holds its answer to the next produce until shutdown has begun.
	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release)
	var hold sync.Once
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		hold.Do(func() { <-gate })
		return nil, nil, false
	})
	answered := make(chan error, 1)
	go func() {
		answered <- cl.ProduceSync(context.Background(), &kgo.Record{Topic: "slow", Value: []byte("in flight")}).FirstErr()
	}()
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight") == 1
	}, 5*time.Second, 10*time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- in.Stop() }()
	require.Eventually(t, func() bool {
		resp, err := http.Get(in.Monitor + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}, 10*time.Second, 10*time.Millisecond, "shutdown did not begin")
	release()
	require.NoError(t, <-stopped)
	select {
	case err := <-answered:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight produce was not answered")
	}
	_, err := net.DialTimeout("tcp", in.Kafka, time.Second)
	assert.Error(t, err, "the Kafka listener is closed after shutdown")
	got := kafkatest.Consume(t, addr, "slow", 2, 10*time.Second)
	assert.Equal(t, "in flight", string(got[1].Value))
}

// TestTopicMappingAndRateLimit: a topic that topic_mapping maps to one
// of the cluster's is produced to under its own name, and the record is
// in the mapped topic; past the rate limit a produce is answered
// NOT_ENOUGH_REPLICAS, which every client retries, with the limit's
// message.
func TestTopicMappingAndRateLimit(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 2)
	in := ingesttest.StartYAML(t, addr, `
topic_mapping:
  - {exact: legacy-orders, to: orders}
security:
  rate_limit:
    records_per_second: 0.01
`)
	cl := kgoClient(t, in.Kafka)
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "legacy-orders", Key: []byte("k"), Value: []byte("mapped")}).FirstErr())
	got := kafkatest.Consume(t, addr, "orders", 1, 10*time.Second)
	assert.Equal(t, "mapped", string(got[0].Value))

	resp := rawProduce(t, in.Kafka, "orders", &kmsg.Record{Value: []byte("over the limit")})
	p := resp.Topics[0].Partitions[0]
	assert.Equal(t, kerr.NotEnoughReplicas.Code, p.ErrorCode)
	require.NotNil(t, p.ErrorMessage)
	assert.Contains(t, *p.ErrorMessage, "rate limit")
}

// TestTopicMappingPerTopicOfOneProduce: in one produce request of three
// topics, each topic's records are mapped as their own topic's mapping
// says, and only the topic whose mapping makes an invalid name (a prefix
// rewrite past Kafka's 249 characters) is refused, with the reason.
func TestTopicMappingPerTopicOfOneProduce(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	kafkatest.CreateTopic(t, addr, "free", 1)
	long := strings.Repeat("x", 245) + "."
	in := ingesttest.StartYAML(t, addr, `
topic_mapping:
  - {exact: legacy-orders, to: orders}
  - {prefix: "long.", to: "`+long+`"}
`)
	req := kafkatest.ProduceRequest("legacy-orders", kafkatest.RecordBatch(&kmsg.Record{Key: []byte("k"), Value: []byte("mapped")}))
	for _, topic := range []string{"long.abcdef", "free"} {
		other := kafkatest.ProduceRequest(topic, kafkatest.RecordBatch(&kmsg.Record{Key: []byte("k"), Value: []byte(topic)}))
		req.Topics = append(req.Topics, other.Topics...)
	}
	resp, err := req.RequestWith(t.Context(), kgoClient(t, in.Kafka))
	require.NoError(t, err)
	require.Len(t, resp.Topics, 3)
	for _, rt := range resp.Topics {
		p := rt.Partitions[0]
		if rt.Topic == "long.abcdef" {
			assert.NotZero(t, p.ErrorCode, "a topic mapped to %d characters", len(long)+len("abcdef"))
			if assert.NotNil(t, p.ErrorMessage) {
				assert.Contains(t, *p.ErrorMessage, `topic "long.abcdef" is mapped to an invalid topic (topic_mapping)`)
			}
			continue
		}
		assert.Zero(t, p.ErrorCode, "%s: %v", rt.Topic, p.ErrorMessage)
	}
	assert.Equal(t, "mapped", string(kafkatest.Consume(t, addr, "orders", 1, 10*time.Second)[0].Value))
	assert.Equal(t, "free", string(kafkatest.Consume(t, addr, "free", 1, 10*time.Second)[0].Value))
}

// TestTLSAndClientCertificate: with server.tls set the listener speaks
// TLS; a client certificate from the client CA names the principal of
// the records; a client that does not trust the server cannot produce.
func TestTLSAndClientCertificate(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "secure", 1)
	ca := securitytest.NewCA(t, "spillway test CA")
	server := ca.Issue(t, "spillway-ingest", securitytest.LeafOptions{})
	device := ca.Issue(t, "device-42", securitytest.LeafOptions{})
	in := ingesttest.StartYAML(t, addr, `
server:
  tls:
    cert: `+server.CertFile+`
    key: `+server.KeyFile+`
    client_ca: `+ca.CertFile+`
    client_auth: optional
`)
	withCert := &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{device.TLS}, MinVersion: tls.VersionTLS12}
	cl := kgoClient(t, in.Kafka, kgo.DialTLSConfig(withCert))
	require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "secure", Value: []byte("over tls")}).FirstErr())
	got := kafkatest.Consume(t, addr, "secure", 1, 10*time.Second)
	assert.Equal(t, "over tls", string(got[0].Value))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_client_records_total{outcome="delivered",principal="device-42",topic="secure"}`))

	untrusting := kgoClient(t, in.Kafka, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}), kgo.RecordDeliveryTimeout(2*time.Second))
	require.Error(t, untrusting.ProduceSync(t.Context(), &kgo.Record{Topic: "secure", Value: []byte("x")}).FirstErr())
}

// TestAdvertisedAddress: Metadata names Spillway at the address the
// client reached, or at server.kafka.advertised when set, leading every
// partition of the cluster's topics.
func TestAdvertisedAddress(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 3)
	for _, c := range []struct{ env, host, port string }{
		{"", "127.0.0.1", ""},
		{"SPILLWAY_SERVER_KAFKA_ADVERTISED=spillway.example:9093", "spillway.example", "9093"},
	} {
		var env []string
		if c.env != "" {
			env = append(env, c.env)
		}
		in := ingesttest.Start(t, addr, env...)
		_, listenPort, _ := net.SplitHostPort(in.Kafka)
		want := c.port
		if want == "" {
			want = listenPort
		}
		req := kmsg.NewPtrMetadataRequest()
		req.Version = 1
		topic := kmsg.NewMetadataRequestTopic()
		topic.Topic = kmsg.StringPtr("orders")
		req.Topics = append(req.Topics, topic)
		resp := &kmsg.MetadataResponse{Version: 1}
		roundTrip(t, in.Kafka, req, resp)
		require.Len(t, resp.Brokers, 1)
		assert.Equal(t, c.host, resp.Brokers[0].Host)
		assert.Equal(t, want, fmt.Sprint(resp.Brokers[0].Port))
		require.Len(t, resp.Topics, 1)
		assert.Len(t, resp.Topics[0].Partitions, 3)
		for _, p := range resp.Topics[0].Partitions {
			assert.Equal(t, resp.Brokers[0].NodeID, p.Leader)
		}
	}
}

// TestListenerDoesNotLingerAgain: a client's produce request is a batch
// it lingered for, and it waits for the answer: the listener sends it to
// Kafka at once, however long the producer's linger.ms (here a minute).
func TestListenerDoesNotLingerAgain(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "eager", 2)
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_LINGER_MS=60000")
	cl := kgoClient(t, in.Kafka)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for round := range 3 { // and again once its partitions' queues emptied
		var sent []*kgo.Record
		for i := range 4 {
			sent = append(sent, &kgo.Record{Topic: "eager", Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "r%d-%d", round, i)})
		}
		require.NoError(t, cl.ProduceSync(ctx, sent...).FirstErr(), "round %d: answered within 10 s, not after linger.ms", round)
	}
	// Lingering past producer.cb.max_wait (4 s) would have spilled them:
	// answered too, but buffered in JetStream, not in Kafka.
	assert.Equal(t, 12.0, ingesttest.Metric(t, in.Monitor, `spillway_records_delivered_total{topic="eager"}`), "delivered to Kafka, none buffered")
	assert.Len(t, kafkatest.Consume(t, addr, "eager", 12, 10*time.Second), 12)
}
