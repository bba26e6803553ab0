package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// deadLetters runs "spillway-resender dead-letters ARGS" against the
// JetStream at natsAddr and returns its output; it fails the test unless
// the command exits 0.
func deadLetters(t *testing.T, natsAddr string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "spillway-resender"), append([]string{"dead-letters"}, args...)...)
	cmd.Env = append(os.Environ(), "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("spillway-resender dead-letters %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// TestDeadLetterMovedBackAndDelivered: a record buffered while Kafka was
// down is refused by Kafka as too large for its topic when the resender
// sends it, and becomes a dead letter. The dead-letters command lists it
// by topic and reason and shows its id, key and value; the gauge says 1.
// Once the topic's max.message.bytes is raised, "move -topic" puts it back
// into the buffer, the resender delivers it, and Kafka holds it once with
// its key, value and spillway-id; the gauge says 0.
func TestDeadLetterMovedBackAndDelivered(t *testing.T) {
	parallel(t, waits)
	kafkaPort := reservedPort(t) // nothing listens there yet: Kafka is down, and comes up on this port
	broker := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	in := startIngest(t, broker, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1")
	natsAddr := in.natsAddr

	const topic, key = "dl", "k-big"
	// 2000 bytes over the topic's limit below, compressed too: Kafka
	// bounds a batch as sent, and the resender compresses with snappy,
	// which would take a repeated text under the limit.
	value := incompressible(2000)
	l := newLoad()
	status, body := l.post(http.DefaultClient, in.httpAddr, topic, key, value)
	if status != http.StatusAccepted || !strings.Contains(body, `"outcome":"buffered"`) {
		t.Fatalf("post while Kafka is down: %d %s; want 202 buffered", status, body)
	}
	id := l.records[value].id
	if id == "" {
		t.Fatalf("no id in %s", body)
	}

	// Kafka comes up refusing records over 1000 bytes.
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(kafkaPort), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(1), kfake.BrokerConfigs(map[string]string{"message.max.bytes": "1000"}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	monitor := startResender(t, broker, natsAddr)
	gauge := `spillway_dead_letters{mirror="",topic="` + topic + `"}`
	eventually(t, 30*time.Second, "the record to be dead-lettered (the gauge at 1)", func() bool { return metricValue(t, monitor, gauge) == 1 })

	// list: by topic and reason, as a table and as JSON.
	list := deadLetters(t, natsAddr, "list")
	if !regexp.MustCompile(`(?m)^dl\s+-\s+too_large\s+1$`).MatchString(list) || !strings.HasSuffix(list, "1 dead letters\n") {
		t.Errorf("dead-letters list:\n%s\nwant a row dl - too_large 1, and 1 dead letters", list)
	}
	var counts []struct {
		Topic, Mirror, Reason string
		Count                 int
	}
	if err := json.Unmarshal([]byte(deadLetters(t, natsAddr, "list", "-json")), &counts); err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[0].Topic != topic || counts[0].Mirror != "" || counts[0].Reason != "too_large" || counts[0].Count != 1 {
		t.Errorf("dead-letters list -json: %+v; want one group: dl, too_large, 1", counts)
	}

	// show: id, topic, reason, key, a value preview, time.
	var shown []struct {
		ID, Topic, Reason, Detail string
		Key                       *string
		Value                     string `json:"value_preview"`
		ValueBytes                int    `json:"value_bytes"`
		Time                      time.Time
	}
	if err := json.Unmarshal([]byte(deadLetters(t, natsAddr, "show", "-json", "-topic", topic)), &shown); err != nil {
		t.Fatal(err)
	}
	if len(shown) != 1 {
		t.Fatalf("dead-letters show: %d dead letters, want 1", len(shown))
	}
	s := shown[0]
	if s.ID != id || s.Topic != topic || s.Reason != "too_large" || !strings.HasPrefix(s.Detail, "too_large: ") ||
		s.Key == nil || *s.Key != key || s.Value != value[:40]+"…" || s.ValueBytes != len(value) || time.Since(s.Time) > 5*time.Minute {
		t.Errorf("dead-letters show: %+v; want id %s, topic %s, reason too_large, key %s, the value's first 40 bytes and 2000 bytes, a recent time", s, id, topic, key)
	}
	text := deadLetters(t, natsAddr, "show", "-topic", topic)
	for _, want := range []string{"topic dl  reason too_large", "id:     " + id, `key:    "k-big"`, `value:  "` + value[:40] + `…" (2000 bytes)`} {
		if !strings.Contains(text, want) {
			t.Errorf("dead-letters show does not say %q:\n%s", want, text)
		}
	}
	if recs := kcatConsumeMaybe(broker, topic); len(recs) != 0 {
		t.Fatalf("Kafka holds %d records of %s before the move; want none", len(recs), topic)
	}

	// The cause is fixed: the topic takes records up to 1 MiB.
	kc := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	resp, err := kc.IncrementalAlterConfigs(t.Context(), &kafka.IncrementalAlterConfigsRequest{Resources: []kafka.IncrementalAlterConfigsRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic,
		Configs: []kafka.IncrementalAlterConfigsRequestConfig{{Name: "max.message.bytes", Value: "1048576", ConfigOperation: kafka.ConfigOperationSet}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Resources {
		if r.Error != nil {
			t.Fatalf("alter %s: %v", r.ResourceName, r.Error)
		}
	}

	if out := deadLetters(t, natsAddr, "move", "-topic", topic); out != "1 dead letters moved back into the buffer; the resender delivers them\n" {
		t.Errorf("dead-letters move: %q", out)
	}
	var got []kcatRecord
	eventually(t, 30*time.Second, "the moved record in Kafka", func() bool {
		got = kcatConsumeMaybe(broker, topic)
		return len(got) > 0
	})
	eventually(t, 30*time.Second, "the gauge at 0", func() bool { return metricValue(t, monitor, gauge) == 0 })
	got = kcatConsume(t, broker, topic) // after the gauge: a second copy would have had time to arrive
	if len(got) != 1 {
		t.Fatalf("Kafka holds %d records of %s; want the moved one once", len(got), topic)
	}
	r := got[0]
	if deref(r.Key) != key || deref(r.Payload) != value || header(r, "spillway-id") != id {
		t.Errorf("in Kafka: key %q, %d bytes of value, spillway-id %q; want key %q, the value sent, spillway-id %s",
			deref(r.Key), len(deref(r.Payload)), header(r, "spillway-id"), key, id)
	}
	if list := deadLetters(t, natsAddr, "list"); !strings.HasSuffix(list, "0 dead letters\n") {
		t.Errorf("dead-letters list after the move:\n%s", list)
	}
}

// incompressible is n letters and digits drawn at random from a fixed
// seed: text that snappy cannot shorten.
func incompressible(n int) string {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	r := rand.New(rand.NewPCG(29, 2000))
	b := make([]byte, n)
	for i := range b {
		b[i] = chars[r.IntN(len(chars))]
	}
	return string(b)
}
