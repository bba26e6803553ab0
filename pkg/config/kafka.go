package config

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/v2"
)

// DevBroker is the development broker that `make run` starts when no
// brokers are configured.
const DevBroker = "127.0.0.1:9092"

// Kafka is the Kafka client configuration: kafka.brokers plus the
// librdkafka properties (kafka.*) that have a kafka-go counterpart.
type Kafka struct {
	Brokers []string
	// UsingDevBroker is true when no brokers were configured and Brokers
	// holds DevBroker.
	UsingDevBroker bool

	ClientID          string
	Compression       Compression
	RequiredAcks      int // -1 (all), 0 or 1
	BatchSize         int
	BatchBytes        int64
	Linger            time.Duration
	MessageTimeout    time.Duration
	SocketTimeout     time.Duration
	MaxMessageBytes   int
	MaxAttempts       int
	RetryBackoff      time.Duration
	RetryBackoffMax   time.Duration
	AutoCreateTopics  bool
	MetadataRefresh   time.Duration
	Partitioner       Partitioner
	SecurityProtocol  string // plaintext, ssl, sasl_plaintext, sasl_ssl
	TLS               TLS
	SASL              SASL
	Properties        map[string]string // every kafka.* property given, as text
	IgnoredProperties []string          // given, but with no kafka-go counterpart
}

// TLS configures TLS to the brokers (security.protocol ssl or sasl_ssl).
type TLS struct {
	CAFile             string
	CertFile           string
	KeyFile            string
	InsecureSkipVerify bool
}

// SASL configures SASL to the brokers (security.protocol sasl_*).
type SASL struct {
	Mechanism string // PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
	Username  string
	Password  string
}

// UsesTLS says whether connections to the brokers use TLS.
func (k *Kafka) UsesTLS() bool {
	return k.SecurityProtocol == "ssl" || k.SecurityProtocol == "sasl_ssl"
}

// UsesSASL says whether connections to the brokers authenticate with SASL.
func (k *Kafka) UsesSASL() bool {
	return k.SecurityProtocol == "sasl_plaintext" || k.SecurityProtocol == "sasl_ssl"
}

// kafkaProperty is one librdkafka property we map. names lists the
// property and its librdkafka aliases; the first one given wins.
type kafkaProperty struct {
	names []string
	def   string
	doc   string
	set   func(k *Kafka, v string) error
}

// KafkaProperties documents the librdkafka properties Spillway maps:
// names, default and meaning.
func KafkaProperties() [][3]string {
	out := make([][3]string, 0, len(kafkaProperties))
	for _, p := range kafkaProperties {
		out = append(out, [3]string{strings.Join(p.names, " / "), p.def, p.doc})
	}
	return out
}

var kafkaProperties = []kafkaProperty{
	{[]string{"client.id"}, "spillway", "client id sent to the brokers", func(k *Kafka, v string) error {
		k.ClientID = v
		return nil
	}},
	{[]string{"compression.codec", "compression.type"}, "snappy", "none, gzip, snappy, lz4 or zstd: how produce batches are compressed", func(k *Kafka, v string) (err error) {
		k.Compression, err = checkName(Compression(strings.ToLower(v)), Compressions())
		return err
	}},
	{[]string{"acks", "request.required.acks"}, "all", "all (or -1), 1 or 0: the acknowledgement Kafka gives before a record counts as delivered", func(k *Kafka, v string) error {
		switch strings.ToLower(v) {
		case "all", "-1":
			k.RequiredAcks = -1
		case "1":
			k.RequiredAcks = 1
		case "0":
			k.RequiredAcks = 0
		default:
			return fmt.Errorf("%q is not allowed; want all, -1, 1 or 0", v)
		}
		return nil
	}},
	{[]string{"batch.num.messages"}, "1000", "most records in one produce batch per partition", intSetter(1, func(k *Kafka, n int) { k.BatchSize = n })},
	{[]string{"batch.size"}, "1000000", "most bytes in one produce batch per partition", intSetter(1, func(k *Kafka, n int) { k.BatchBytes = int64(n) })},
	{[]string{"linger.ms", "queue.buffering.max.ms"}, "1", "how long a batch waits for more records before it is sent; it keeps filling while its partition's previous batch is in flight", msSetter(false, func(k *Kafka, d time.Duration) { k.Linger = d })},
	{[]string{"message.timeout.ms"}, "30000", "how long a record may wait for Kafka's acknowledgement before the client gets a timeout", msSetter(true, func(k *Kafka, d time.Duration) { k.MessageTimeout = d })},
	{[]string{"socket.timeout.ms"}, "10000", "network timeout of one request to a broker", msSetter(true, func(k *Kafka, d time.Duration) { k.SocketTimeout = d })},
	{[]string{"message.max.bytes"}, "1000000", "largest record accepted (key, value and headers); larger ones are refused with 413", intSetter(1, func(k *Kafka, n int) { k.MaxMessageBytes = n })},
	{[]string{"retries", "message.send.max.retries"}, "2", "retries of a failed produce request before the record fails (kafka-go attempts = retries + 1)", intSetter(0, func(k *Kafka, n int) { k.MaxAttempts = n + 1 })},
	{[]string{"retry.backoff.ms"}, "100", "first wait before a retry", msSetter(true, func(k *Kafka, d time.Duration) { k.RetryBackoff = d })},
	{[]string{"retry.backoff.max.ms"}, "1000", "longest wait before a retry", msSetter(true, func(k *Kafka, d time.Duration) { k.RetryBackoffMax = d })},
	{[]string{"allow.auto.create.topics"}, "true", "let the broker create a topic on first produce (if the broker allows it too); false: unknown topics answer 404", func(k *Kafka, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not allowed; want true or false", v)
		}
		k.AutoCreateTopics = b
		return nil
	}},
	{[]string{"topic.metadata.refresh.interval.ms"}, "1000", "how long topic metadata is cached; short, so that a returning broker is found fast", msSetter(true, func(k *Kafka, d time.Duration) { k.MetadataRefresh = d })},
	{[]string{"partitioner"}, "murmur2_random", "murmur2_random (Java client's: murmur2 of the key, random without key), murmur2, consistent_random, consistent, random", func(k *Kafka, v string) (err error) {
		k.Partitioner, err = checkName(Partitioner(v), Partitioners())
		return err
	}},
	{[]string{"security.protocol"}, "plaintext", "plaintext, ssl, sasl_plaintext or sasl_ssl", func(k *Kafka, v string) error {
		v = strings.ToLower(v)
		if !slices.Contains([]string{"plaintext", "ssl", "sasl_plaintext", "sasl_ssl"}, v) {
			return fmt.Errorf("%q is not allowed; want one of plaintext, ssl, sasl_plaintext, sasl_ssl", v)
		}
		k.SecurityProtocol = v
		return nil
	}},
	{[]string{"ssl.ca.location"}, "", "PEM file of the CAs that sign the brokers' certificates (default: the system's)", func(k *Kafka, v string) error {
		k.TLS.CAFile = v
		return nil
	}},
	{[]string{"ssl.certificate.location"}, "", "PEM client certificate, for brokers that require one", func(k *Kafka, v string) error {
		k.TLS.CertFile = v
		return nil
	}},
	{[]string{"ssl.key.location"}, "", "PEM key of the client certificate", func(k *Kafka, v string) error {
		k.TLS.KeyFile = v
		return nil
	}},
	{[]string{"enable.ssl.certificate.verification"}, "true", "false skips verifying the brokers' certificates (testing only)", func(k *Kafka, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not allowed; want true or false", v)
		}
		k.TLS.InsecureSkipVerify = !b
		return nil
	}},
	{[]string{"sasl.mechanism", "sasl.mechanisms"}, "PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", func(k *Kafka, v string) error {
		v = strings.ToUpper(v)
		if !slices.Contains([]string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}, v) {
			return fmt.Errorf("%q is not allowed; want one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", v)
		}
		k.SASL.Mechanism = v
		return nil
	}},
	{[]string{"sasl.username"}, "", "SASL user name", func(k *Kafka, v string) error {
		k.SASL.Username = v
		return nil
	}},
	{[]string{"sasl.password"}, "", "SASL password (prefer SPILLWAY_KAFKA_SASL_PASSWORD to the file)", func(k *Kafka, v string) error {
		k.SASL.Password = v
		return nil
	}},
}

func intSetter(min int, set func(*Kafka, int)) func(*Kafka, string) error {
	return func(k *Kafka, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < min {
			return fmt.Errorf("%q is not allowed; want a whole number of %d or more", v, min)
		}
		set(k, n)
		return nil
	}
}

func msSetter(positive bool, set func(*Kafka, time.Duration)) func(*Kafka, string) error {
	return func(k *Kafka, v string) error {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || n < 0 || (positive && n == 0) {
			want := "0 or more"
			if positive {
				want = "more than 0"
			}
			return fmt.Errorf("%q is not allowed; want milliseconds, %s", v, want)
		}
		set(k, time.Duration(n*float64(time.Millisecond)))
		return nil
	}
}

// parseKafka reads kafka.brokers and the kafka.* properties.
func parseKafka(k *koanf.Koanf, g *getter) Kafka {
	props := map[string]string{}
	for _, key := range k.Keys() {
		name, ok := strings.CutPrefix(key, "kafka.")
		if !ok || name == "brokers" {
			continue
		}
		switch v := k.Get(key).(type) {
		case []any, []string, map[string]any:
			g.fail(key, fmt.Errorf("want a single value, got a %T", v))
		default:
			props[name] = strings.TrimSpace(fmt.Sprint(v))
		}
	}

	kc := Kafka{Properties: props}
	known := map[string]bool{"bootstrap.servers": true, "metadata.broker.list": true}
	for _, p := range kafkaProperties {
		v := p.def
		for _, n := range p.names {
			known[n] = true
		}
		for _, n := range p.names {
			if given, ok := props[n]; ok {
				v = given
				break
			}
		}
		if err := p.set(&kc, v); err != nil {
			g.fail("kafka."+p.names[0], err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(props)) {
		if !known[name] {
			kc.IgnoredProperties = append(kc.IgnoredProperties, name)
		}
	}

	kc.Brokers = g.strings("kafka.brokers")
	if len(kc.Brokers) == 0 {
		for _, n := range []string{"bootstrap.servers", "metadata.broker.list"} {
			if v := props[n]; v != "" {
				kc.Brokers = splitList(v)
				break
			}
		}
	}
	if len(kc.Brokers) == 0 {
		kc.Brokers = []string{DevBroker}
		kc.UsingDevBroker = true
	}
	if kc.BatchBytes < int64(kc.MaxMessageBytes) {
		kc.BatchBytes = int64(kc.MaxMessageBytes)
	}
	if kc.RetryBackoffMax < kc.RetryBackoff {
		g.fail("kafka.retry.backoff.max.ms", fmt.Errorf("%v is less than kafka.retry.backoff.ms (%v)", kc.RetryBackoffMax, kc.RetryBackoff))
	}
	if kc.UsesSASL() && kc.SASL.Username == "" {
		g.fail("kafka.sasl.username", fmt.Errorf("is empty, but security.protocol %s needs it", kc.SecurityProtocol))
	}
	if (kc.TLS.CertFile == "") != (kc.TLS.KeyFile == "") {
		g.fail("kafka.ssl.certificate.location", fmt.Errorf("ssl.certificate.location and ssl.key.location go together; set both or neither"))
	}
	return kc
}
