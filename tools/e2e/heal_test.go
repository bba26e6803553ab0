package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// Conditions in Kafka that heal (credentials refused, a missing topic)
// never dead-letter a buffered record: it stays buffered, the forwarder
// shows the topic as blocked and tries again with backoff, and once the
// condition is fixed every acknowledged record reaches Kafka once.

// healRecords is how many records each test writes ahead.
const healRecords = 300

// blockedTopic reads the forwarder's spillway_drain_topic_blocked series
// of topic: the reasons it is blocked for (value 1) and whether any series
// of the topic exists.
func blockedTopic(t *testing.T, monitor, topic string) (reasons []string) {
	t.Helper()
	page := scrapePage(t, monitor)
	sc := bufio.NewScanner(strings.NewReader(page))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "spillway_drain_topic_blocked{") || !strings.Contains(line, `topic="`+topic+`"`) {
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil && v == 1 {
			_, rest, _ := strings.Cut(line, `reason="`)
			reason, _, _ := strings.Cut(rest, `"`)
			reasons = append(reasons, reason)
		}
	}
	return reasons
}

// scrapePage is a service's /metrics page; empty when it cannot be read.
func scrapePage(t *testing.T, monitor string) string {
	t.Helper()
	status, body := get("http://" + monitor + "/metrics")
	if status != 200 {
		return ""
	}
	return body
}

// requireNoDeadLetters fails the test if the buffer holds a dead letter or
// the forwarder counted one.
func requireNoDeadLetters(t *testing.T, natsAddr, monitor string) {
	t.Helper()
	for subject, n := range streamSubjects(t, natsAddr) {
		if strings.HasPrefix(subject, "spillway.dlq.") {
			t.Errorf("%d dead letters on %s", n, subject)
		}
	}
	for _, reason := range []string{"invalid", "too_large"} {
		requireMetric(t, monitor, `spillway_records_dead_lettered_total{consumer="forwarder",reason="`+reason+`"}`, 0)
	}
}

// deadLettersHeld is how many dead letters the buffer holds.
func deadLettersHeld(t *testing.T, natsAddr string) uint64 {
	t.Helper()
	var n uint64
	for subject, k := range streamSubjects(t, natsAddr) {
		if strings.HasPrefix(subject, "spillway.dlq.") {
			n += k
		}
	}
	return n
}

// redelivered is how many of the forwarder's unacknowledged messages
// JetStream has given it more than once; -1 when it cannot say.
func redelivered(t *testing.T, natsAddr string) int {
	t.Helper()
	nc, err := natsConnect(natsAddr)
	if err != nil {
		return -1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1
	}
	c, err := js.Consumer(t.Context(), "SPILLWAY", "forwarder")
	if err != nil {
		return -1
	}
	info, err := c.Info(t.Context())
	if err != nil {
		return -1
	}
	return info.NumRedelivered
}

// writeAhead posts healRecords records for topic in batches and returns
// each value by the id the ingest acknowledged it with (202 buffered).
func writeAhead(t *testing.T, httpAddr, topic string) map[string]string {
	t.Helper()
	byID := map[string]string{}
	for batch := range 3 {
		values := make([]string, healRecords/3)
		for i := range values {
			values[i] = fmt.Sprintf(`"%s value %d"`, topic, batch*len(values)+i) // NDJSON: a JSON string each
		}
		for id, v := range postValuesAhead(t, httpAddr, topic, values) {
			byID[id] = v
		}
	}
	if len(byID) != healRecords {
		t.Fatalf("%d distinct ids acknowledged; want %d", len(byID), healRecords)
	}
	return byID
}

// requireEachOnce checks that Kafka holds every acknowledged record once,
// with its value, and nothing else.
func requireEachOnce(t *testing.T, recs []*kgo.Record, byID map[string]string) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range recs {
		id, _ := kafkatest.HeaderValue(r, "spillway-id")
		seen[id]++
		if want, ok := byID[id]; !ok || string(r.Value) != want {
			t.Errorf("record %q in Kafka with value %q; want %q", id, r.Value, want)
		}
	}
	missing, dups := countMissingAndDuplicates(byID, seen)
	t.Logf("acknowledged %d, in Kafka %d, missing %d, duplicates %d", len(byID), len(recs), missing, dups)
	if missing != 0 || dups != 0 || len(recs) != len(byID) {
		t.Errorf("missing %d, duplicates %d, %d records in Kafka; want each of the %d once", missing, dups, len(recs), len(byID))
	}
}

// requireLoggedPerChange checks that the forwarder logged the blocked
// topic, and once per change rather than once per record or retry.
func requireLoggedPerChange(t *testing.T, out string) {
	t.Helper()
	blocked := strings.Count(out, "Kafka does not take the topic's buffered records")
	again := strings.Count(out, "Kafka takes the topic's buffered records again")
	t.Logf("log lines: %d blocked, %d taken again", blocked, again)
	if blocked < 1 || blocked > 3 || again != 1 {
		t.Errorf("logged %d times blocked and %d times taken again; want once per change (1 to 3 reasons, then 1)", blocked, again)
	}
}

// TestSASLPasswordRotatedWhileBuffered: records are written ahead while
// Kafka's SASL password for Spillway's user is changed (rotated in Kafka,
// the services still have the old one). The forwarder's logins fail: no
// record is dead-lettered, the topic shows as blocked, and the ingest
// still answers 202. Once Kafka takes the password the forwarder has
// again, without a restart, every acknowledged record reaches Kafka once.
func TestSASLPasswordRotatedWhileBuffered(t *testing.T) {
	parallel(t, waits)
	password := randomSecret(t, "sasl-password-")
	rotated := randomSecret(t, "sasl-rotated-")
	adminPassword := randomSecret(t, "sasl-admin-")
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "admin", adminPassword), kfake.Superuser("SCRAM-SHA-256", "spillway", password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	broker := c.ListenAddrs()[0]
	admin := kgo.SASL(scram.Auth{User: "admin", Pass: adminPassword}.AsSha256Mechanism())
	sasl := []string{
		"SPILLWAY_KAFKA_SECURITY_PROTOCOL=sasl_plaintext", "SPILLWAY_KAFKA_SASL_MECHANISM=SCRAM-SHA-256",
		"SPILLWAY_KAFKA_SASL_USERNAME=spillway", "SPILLWAY_KAFKA_SASL_PASSWORD=" + password,
	}
	in := startIngest(t, broker, append(sasl, "SPILLWAY_PRODUCER_WAL_MODE=always")...)
	natsAddr := in.natsAddr

	// kfake drops the connection of a failed login; Kafka answers
	// SASL_AUTHENTICATION_FAILED first. While Kafka has the rotated
	// password, Spillway's logins are answered as Kafka would.
	var refusing atomic.Bool
	c.ControlKey(kmsg.SASLAuthenticate.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.SASLAuthenticateRequest)
		if !refusing.Load() || !bytes.Contains(r.SASLAuthBytes, []byte("n=spillway,")) {
			return nil, nil, false
		}
		resp := r.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.Version = r.Version
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		msg := "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256"
		resp.ErrorMessage = &msg
		return resp, nil, true
	})
	kafkatest.SetSCRAMPassword(t, broker, "spillway", rotated, admin)
	refusing.Store(true)
	const topic = "rotated"
	byID := writeAhead(t, in.httpAddr, topic)
	start := time.Now()
	fwd, monitor := startForwarder(t, broker, natsAddr, append(sasl,
		"SPILLWAY_PRODUCER_CB_TIMEOUT=2s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=3000")...)

	var reasons []string
	eventually(t, 30*time.Second, "the forwarder shows the topic as blocked", func() bool {
		if n := deadLettersHeld(t, natsAddr); n > 0 {
			t.Fatalf("%d records dead-lettered for a condition that heals", n)
		}
		reasons = blockedTopic(t, monitor, topic)
		return len(reasons) == 1
	})
	if reasons[0] != "not_authorized" {
		t.Errorf("blocked for %s; want not_authorized", reasons[0])
	}
	// Tried again: given back to JetStream and redelivered (producer.order
	// none), or kept in its lane and retried in place (partition).
	eventually(t, 30*time.Second, "every record tried again", func() bool {
		return redelivered(t, natsAddr) == healRecords ||
			metricValue(t, monitor, `spillway_records_retried_total{consumer="forwarder",reason="not_authorized"}`) >= healRecords
	})
	if v := metricValue(t, monitor, `spillway_records_retried_total{consumer="forwarder",reason="not_authorized"}`); v < 1 {
		t.Errorf("retried as not_authorized: %v; want some", v)
	}
	t.Logf("blocked and tried again after %v", time.Since(start).Round(time.Millisecond))
	requireNoDeadLetters(t, natsAddr, monitor)
	if n := streamMessages(t, natsAddr); n != healRecords {
		t.Errorf("the buffer holds %d records; want all %d", n, healRecords)
	}
	// The ingest still takes records, written ahead.
	for id, v := range postValuesAhead(t, in.httpAddr, topic, []string{`"while blocked 1"`, `"while blocked 2"`}) {
		byID[id] = v
	}

	kafkatest.SetSCRAMPassword(t, broker, "spillway", password, admin) // fixed
	refusing.Store(false)
	fixed := time.Now()
	recs := kafkatest.ConsumeWith(t, broker, topic, len(byID), 45*time.Second, admin)
	t.Logf("all in Kafka %v after the fix", time.Since(fixed).Round(time.Millisecond))
	requireEachOnce(t, recs, byID)
	eventually(t, 15*time.Second, "the topic is no longer blocked", func() bool {
		return len(blockedTopic(t, monitor, topic)) == 0 && streamMessages(t, natsAddr) == 0
	})
	requireMetric(t, monitor, `spillway_drain_topic_blocked{consumer="forwarder",reason="`+reasons[0]+`",topic="`+topic+`"}`, 0)
	requireNoDeadLetters(t, natsAddr, monitor)
	requireLoggedPerChange(t, fwd.out.String())
	for _, s := range []string{password, rotated, adminPassword} {
		if strings.Contains(fwd.out.String(), s) || strings.Contains(in.out.String(), s) {
			t.Error("a password is in the services' logs")
		}
	}
}

// TestMissingTopicCreatedWhileBuffered: with auto-creation off, records
// for a topic that does not exist yet are written ahead. The forwarder
// dead-letters none of them: the topic shows as blocked (unknown_topic)
// until an operator creates it, and then every acknowledged record
// reaches Kafka once.
func TestMissingTopicCreatedWhileBuffered(t *testing.T) {
	parallel(t, waits)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	broker := c.ListenAddrs()[0]
	noAuto := "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false"
	in := startIngest(t, broker, noAuto, "SPILLWAY_PRODUCER_WAL_MODE=always")
	natsAddr := in.natsAddr
	const topic = "created-later"
	byID := writeAhead(t, in.httpAddr, topic)
	fwd, monitor := startForwarder(t, broker, natsAddr, noAuto)

	eventually(t, 30*time.Second, "the forwarder shows the topic as blocked: unknown_topic", func() bool {
		if n := deadLettersHeld(t, natsAddr); n > 0 {
			t.Fatalf("%d records dead-lettered for a missing topic", n)
		}
		r := blockedTopic(t, monitor, topic)
		return len(r) == 1 && r[0] == "unknown_topic"
	})
	eventually(t, 30*time.Second, "every record tried again", func() bool {
		return redelivered(t, natsAddr) == healRecords ||
			metricValue(t, monitor, `spillway_records_retried_total{consumer="forwarder",reason="unknown_topic"}`) >= healRecords
	})
	if v := metricValue(t, monitor, `spillway_records_retried_total{consumer="forwarder",reason="unknown_topic"}`); v < healRecords {
		t.Errorf("retried as unknown_topic: %v; want at least %d", v, healRecords)
	}
	requireNoDeadLetters(t, natsAddr, monitor)
	if n := streamMessages(t, natsAddr); n != healRecords {
		t.Errorf("the buffer holds %d records; want all %d", n, healRecords)
	}

	kafkatest.CreateTopic(t, broker, topic, 3)
	recs := kafkatest.Consume(t, broker, topic, len(byID), 45*time.Second)
	requireEachOnce(t, recs, byID)
	eventually(t, 15*time.Second, "the topic is no longer blocked", func() bool {
		return len(blockedTopic(t, monitor, topic)) == 0 && streamMessages(t, natsAddr) == 0
	})
	requireMetric(t, monitor, `spillway_drain_topic_blocked{consumer="forwarder",reason="unknown_topic",topic="`+topic+`"}`, 0)
	requireNoDeadLetters(t, natsAddr, monitor)
	requireLoggedPerChange(t, fwd.out.String())
}
