package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// kcatProduce produces value with kcat (librdkafka) through broker, with
// extra kcat arguments; it returns kcat's output and whether it succeeded.
func kcatProduce(t *testing.T, broker, topic, value string, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command("kcat", append([]string{"-b", broker, "-P", "-t", topic,
		"-X", "message.timeout.ms=20000", "-X", "enable.idempotence=true"}, args...)...)
	cmd.Stdin = strings.NewReader(value)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil && !strings.Contains(string(out), "Delivery failed")
}

// TestKafkaListenerKcat points kcat (librdkafka, idempotent) at the
// built ingest's Kafka listener: records with keys, headers, lz4 and
// zstd are in Kafka exactly; the per-client metrics name librdkafka with
// its version; a validation rule refuses a record and kcat reports the
// error; with Kafka cut off the produce of kcat, kgo and kafka-go's
// Writer still succeeds (kgo is told offset -1), and every record
// arrives once Kafka is back, through the resender, once.
func TestKafkaListenerKcat(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	kafkatest.CreateTopic(t, k.addr, "kl", 3)
	kafkatest.CreateTopic(t, k.addr, "strict", 1)
	cfg := filepath.Join(t.TempDir(), "spillway.yaml")
	if err := os.WriteFile(cfg, []byte("validation:\n  rules:\n    - topics: [strict]\n      json: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startIngest(t, k.addr, "-config="+cfg, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=1000", "SPILLWAY_PRODUCER_CB_FAILS=1", "SPILLWAY_PRODUCER_CB_TIMEOUT=1m")
	natsAddr, listen := in.natsAddr, in.kafkaAddr

	want := map[string]string{} // key -> value
	for _, codec := range []string{"lz4", "zstd"} {
		key, value := "key-"+codec, "value through the listener, "+codec
		if out, ok := kcatProduce(t, listen, "kl", value, "-k", key, "-H", "codec="+codec, "-z", codec); !ok {
			t.Fatalf("kcat -z %s: %s", codec, out)
		}
		want[key] = value
	}
	recs := kcatConsume(t, k.addr, "kl")
	if len(recs) != len(want) {
		t.Fatalf("kcat found %d records in Kafka, want %d: %+v", len(recs), len(want), recs)
	}
	for _, r := range recs {
		if r.Key == nil || r.Payload == nil || want[*r.Key] != *r.Payload || header(r, "codec") != strings.TrimPrefix(*r.Key, "key-") || header(r, "spillway-id") == "" {
			t.Errorf("record in Kafka: %+v", r)
		}
	}

	version := regexp.MustCompile(`librdkafka ([0-9.]+)`).FindStringSubmatch(kcatVersion(t))
	if version == nil {
		t.Fatalf("no librdkafka version in kcat -V: %s", kcatVersion(t))
	}
	series := fmt.Sprintf(`spillway_client_requests_total{library="librdkafka",principal="rdkafka",version="%s"}`, version[1])
	requireMetric(t, in.monitorAddr, series, 2)

	out, ok := kcatProduce(t, listen, "strict", "not json")
	if ok || !strings.Contains(out, "Broker failed to validate record") {
		t.Errorf("a record against a validation rule: kcat said %q, want librdkafka's INVALID_RECORD failure", out)
	}

	// Kafka cut off: produce still succeeds (buffered, offset -1).
	k.cut()
	for i := range 3 {
		key, value := fmt.Sprintf("cut-%d", i), fmt.Sprintf("produced while Kafka was cut off, %d", i)
		if out, ok := kcatProduce(t, listen, "kl", value, "-k", key, "-z", "lz4"); !ok {
			t.Fatalf("kcat with Kafka cut off: %s", out)
		}
		want[key] = value
	}
	// franz-go's kgo (idempotent) and kafka-go's Writer too.
	cl, err := kgo.NewClient(kgo.SeedBrokers(listen), kgo.RecordDeliveryTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	kgoRec := &kgo.Record{Topic: "kl", Key: []byte("cut-kgo"), Value: []byte("kgo while Kafka was cut off"), Headers: []kgo.RecordHeader{{Key: "via", Value: []byte("kgo")}}}
	if err := cl.ProduceSync(t.Context(), kgoRec).FirstErr(); err != nil {
		t.Fatalf("kgo with Kafka cut off: %v", err)
	}
	if kgoRec.Offset != -1 {
		t.Errorf("kgo was told offset %d for a buffered record, want -1", kgoRec.Offset)
	}
	want["cut-kgo"] = "kgo while Kafka was cut off"
	w := &kafka.Writer{Addr: kafka.TCP(listen), Topic: "kl", BatchTimeout: 5 * time.Millisecond, RequiredAcks: kafka.RequireAll,
		Transport: &kafka.Transport{MetadataTTL: time.Second}, Compression: kafka.Snappy}
	if err := w.WriteMessages(t.Context(), kafka.Message{Key: []byte("cut-kafka-go"), Value: []byte("kafka-go while Kafka was cut off")}); err != nil {
		t.Fatalf("kafka-go with Kafka cut off: %v", err)
	}
	_ = w.Close()
	want["cut-kafka-go"] = "kafka-go while Kafka was cut off"

	k.restore()
	startResender(t, k.addr, natsAddr)
	eventually(t, 60*time.Second, "every acknowledged record in Kafka", func() bool {
		return len(kcatConsumeMaybe(k.addr, "kl")) >= len(want)
	})
	got := settledRead(t, k.addr, "kl")
	seen := map[string]int{}
	for _, r := range got {
		if r.Key == nil || r.Payload == nil || want[*r.Key] != *r.Payload {
			t.Errorf("unexpected record in Kafka: %+v", r)
			continue
		}
		seen[*r.Key]++
	}
	for key := range want {
		if seen[key] != 1 {
			t.Errorf("record %s is in Kafka %d times, want once", key, seen[key])
		}
	}
}

func kcatVersion(t *testing.T) string {
	t.Helper()
	out, _ := exec.Command("kcat", "-V").CombinedOutput()
	return string(out)
}
