package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// startForwarder runs the built forwarder against the JetStream at
// natsAddr until the test ends, and returns it once it is ready, with its
// monitoring address.
func startForwarder(t *testing.T, broker, natsAddr string, env ...string) (*proc, string) {
	t.Helper()
	p := spawn(t, "spillway-forwarder", append([]string{
		"SPILLWAY_KAFKA_BROKERS=" + broker,
		"SPILLWAY_PRODUCER_WAL_LISTEN=" + natsAddr,
		"SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:0",
	}, env...)...)
	monitor := p.loggedAddr(t, "forwarder started", "monitoring")
	waitOK(t, "http://"+monitor+"/readyz", "the forwarder to be ready")
	return p, monitor
}

// writtenAhead is one record the ingest answered 202 buffered.
type writtenAhead struct {
	ID      string `json:"id"`
	Outcome string `json:"outcome"`
	Topic   string `json:"topic"`
}

// postAhead posts req and checks the answer: 202 with every record
// buffered (written ahead) to topic, and nothing else in the answer.
func postAhead(t *testing.T, req *http.Request, topic string, n int) []writtenAhead {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("answered %d %s; want 202", resp.StatusCode, body)
	}
	var results []writtenAhead
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if n == 1 {
		var r writtenAhead
		err = dec.Decode(&r)
		results = []writtenAhead{r}
	} else {
		var batch struct{ Results []writtenAhead }
		err = dec.Decode(&batch)
		results = batch.Results
	}
	if err != nil || len(results) != n {
		t.Fatalf("answer %s: %v; want %d results and nothing else", body, err, n)
	}
	for i, r := range results {
		if r.ID == "" || r.Outcome != "buffered" || r.Topic != topic {
			t.Fatalf("result %d of %s; want an id, outcome buffered, topic %s", i, body, topic)
		}
	}
	return results
}

// postValuesAhead posts values as one NDJSON request and returns each
// value by the id the ingest gave its record.
func postValuesAhead(t *testing.T, httpAddr, topic string, values []string) map[string]string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/topics/"+topic+"/messages", strings.NewReader(strings.Join(values, "\n")))
	req.Header.Set("Content-Type", "application/x-ndjson")
	byID := map[string]string{}
	for i, r := range postAhead(t, req, topic, len(values)) {
		byID[r.ID] = values[i]
	}
	return byID
}

// headerList is a record's headers as "key=value" strings.
func headerList(r *kgo.Record) []string {
	var out []string
	for _, h := range r.Headers {
		out = append(out, h.Key+"="+string(h.Value))
	}
	return out
}

// TestForwarderDeliversExactly writes records ahead (producer.wal.mode
// always) and checks that the forwarder binary, not the ingest, puts them
// in Kafka with the value, key, headers, partition and timestamp the
// client gave, byte for byte.
func TestForwarderDeliversExactly(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t)
	in := startIngest(t, broker, "SPILLWAY_PRODUCER_WAL_MODE=always")
	natsAddr := in.natsAddr
	const topic = "wal-exact"
	url := "http://" + in.httpAddr + "/topics/" + topic + "/messages"

	// A binary value (every byte, and bytes that are not UTF-8), a binary
	// key, a header given twice, a partition and a timestamp.
	binValue := make([]byte, 0, 260)
	for b := range 256 {
		binValue = append(binValue, byte(b))
	}
	binValue = append(binValue, 0xff, 0xfe, 0x00, 0xc3)
	binKey := []byte{0x00, 0xff, 0x80, 'k', '\n'}
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(binValue))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Kafka-Key-Base64", base64.StdEncoding.EncodeToString(binKey))
	req.Header.Set("X-Kafka-Partition", "2")
	req.Header.Set("X-Kafka-Timestamp", "1700000000123")
	req.Header.Set("X-Kafka-Header-Trace-Tag", "abc 123")
	req.Header.Add("X-Kafka-Header-Multi", "one")
	req.Header.Add("X-Kafka-Header-Multi", "two")
	binID := postAhead(t, req, topic, 1)[0].ID

	// A text value with a text key and a header.
	textValue := "héllo\twörld\r\n"
	req, _ = http.NewRequest(http.MethodPost, url, strings.NewReader(textValue))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("X-Kafka-Key", "k-text")
	req.Header.Set("X-Kafka-Header-Origin", "forward-test")
	textID := postAhead(t, req, topic, 1)[0].ID

	if recs := kcatConsumeMaybe(broker, topic); len(recs) != 0 {
		t.Fatalf("%d records in Kafka before the forwarder ran; in mode always the ingest must not write to Kafka itself", len(recs))
	}
	_, monitor := startForwarder(t, broker, natsAddr)
	recs := kafkatest.Consume(t, broker, topic, 2, 30*time.Second)
	if len(recs) != 2 {
		t.Fatalf("%d records in Kafka, want 2", len(recs))
	}
	byID := map[string]*kgo.Record{}
	for _, r := range recs {
		id, _ := kafkatest.HeaderValue(r, "spillway-id")
		byID[id] = r
	}

	bin := byID[binID]
	if bin == nil {
		t.Fatalf("no record with spillway-id %s in Kafka; headers: %v, %v", binID, headerList(recs[0]), headerList(recs[1]))
	}
	if !bytes.Equal(bin.Value, binValue) {
		t.Errorf("binary value in Kafka:\n%x\nwant\n%x", bin.Value, binValue)
	}
	if !bytes.Equal(bin.Key, binKey) {
		t.Errorf("binary key in Kafka: %x, want %x", bin.Key, binKey)
	}
	if bin.Partition != 2 {
		t.Errorf("partition %d, want 2 (X-Kafka-Partition)", bin.Partition)
	}
	if ms := bin.Timestamp.UnixMilli(); ms != 1700000000123 {
		t.Errorf("timestamp %d, want 1700000000123 (X-Kafka-Timestamp)", ms)
	}
	checkHeaders(t, bin, binID, "multi=one", "multi=two", "trace-tag=abc 123")

	text := byID[textID]
	if text == nil {
		t.Fatalf("no record with spillway-id %s in Kafka", textID)
	}
	if string(text.Value) != textValue || string(text.Key) != "k-text" {
		t.Errorf("text record in Kafka: key %q value %q; want %q %q", text.Key, text.Value, "k-text", textValue)
	}
	checkHeaders(t, text, textID, "origin=forward-test")

	if v := metricValue(t, monitor, `spillway_records_drained_total{consumer="forwarder",topic="wal-exact"}`); v != 2 {
		t.Errorf("spillway_records_drained_total of the forwarder: %v, want 2", v)
	}
}

// checkHeaders checks r's headers: the client's (want, sorted by key, each
// key's values in the order given), then Spillway's spillway-id (the id
// the ingest answered) and a W3C traceparent, and nothing else.
func checkHeaders(t *testing.T, r *kgo.Record, id string, want ...string) {
	t.Helper()
	var client []string
	var spillwayID, traceparent []string
	for _, h := range r.Headers {
		switch h.Key {
		case "spillway-id":
			spillwayID = append(spillwayID, string(h.Value))
		case "traceparent":
			traceparent = append(traceparent, string(h.Value))
		default:
			client = append(client, h.Key+"="+string(h.Value))
		}
	}
	// The client's headers of different keys come in any order; values of
	// one key keep theirs (a stable sort by key).
	slices.SortStableFunc(client, func(a, b string) int {
		ka, _, _ := strings.Cut(a, "=")
		kb, _, _ := strings.Cut(b, "=")
		return strings.Compare(ka, kb)
	})
	if !slices.Equal(client, want) {
		t.Errorf("the client's headers in Kafka: %q; want %q (all headers: %q)", client, want, headerList(r))
	}
	if !slices.Equal(spillwayID, []string{id}) {
		t.Errorf("spillway-id headers %q; want one, %q", spillwayID, id)
	}
	if len(traceparent) != 1 || len(traceparent[0]) != 55 || !strings.HasPrefix(traceparent[0], "00-") {
		t.Errorf("traceparent headers %q; want one W3C traceparent", traceparent)
	}
}

// TestForwarderRateLimit writes 200 records ahead, then starts the
// forwarder with forward.rate_limit 50: at every moment it has delivered
// no more than 50 records per second since it started, plus one second's
// worth of burst, so the 200 take at least 3 s; all of them arrive, once.
func TestForwarderRateLimit(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t)
	in := startIngest(t, broker, "SPILLWAY_PRODUCER_WAL_MODE=always")
	natsAddr := in.natsAddr
	const topic, n, rate = "wal-rate", 200, 50
	var values []string
	for i := range n {
		values = append(values, fmt.Sprintf(`"rate-%d"`, i))
	}
	byID := postValuesAhead(t, in.httpAddr, topic, values)

	start := time.Now() // before the forwarder exists: its limiter starts later
	_, monitor := startForwarder(t, broker, natsAddr, fmt.Sprintf("SPILLWAY_FORWARD_RATE_LIMIT=%d", rate))
	series := `spillway_records_drained_total{consumer="forwarder",topic="wal-rate"}`
	var drained float64
	eventually(t, 30*time.Second, "the forwarder to deliver every record", func() bool {
		drained = metricValue(t, monitor, series)
		elapsed := time.Since(start)
		if limit := rate * (elapsed.Seconds() + 1); drained > limit {
			t.Fatalf("%v records delivered %v after the forwarder started; at %d/s the limit is %.0f", drained, elapsed.Round(time.Millisecond), rate, limit)
		}
		return drained >= n
	})
	elapsed := time.Since(start)
	t.Logf("%d records at forward.rate_limit %d/s took %v", n, rate, elapsed.Round(time.Millisecond))
	if drained != n {
		t.Errorf("%s = %v, want %d", series, drained, n)
	}
	recs := kafkatest.Consume(t, broker, topic, n, 10*time.Second)
	checkOnce(t, recs, byID)
}

// checkOnce checks that recs are exactly the records of byID (id to
// value): each once, with its value.
func checkOnce(t *testing.T, recs []*kgo.Record, byID map[string]string) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range recs {
		id, _ := kafkatest.HeaderValue(r, "spillway-id")
		seen[id]++
		want, ok := byID[id]
		switch {
		case !ok:
			t.Errorf("a record in Kafka that was never acknowledged: id %q value %q", id, r.Value)
		case string(r.Value) != want:
			t.Errorf("record %s in Kafka has value %q, want %q", id, r.Value, want)
		}
	}
	missing, dups := 0, 0
	for id := range byID {
		if seen[id] == 0 {
			missing++
		}
		dups += max(0, seen[id]-1)
	}
	if missing > 0 || dups > 0 {
		t.Errorf("%d acknowledged records: %d missing, %d duplicates in Kafka; want 0 and 0", len(byID), missing, dups)
	}
}

// forwarderStoppedMidDrain writes n records ahead and starts a forwarder
// (forward.rate_limit 1000, batches of 100, producer.wal.ack_wait 10s,
// kafka.message.timeout.ms 8000)
// against a Kafka that takes 300 ms to answer, so that its workers spend
// most of their time waiting for Kafka with a batch in hand. Once it has
// delivered 300 records it is stopped with sig, and the test checks that
// it stopped mid-drain (not every record in Kafka yet). Another forwarder
// then drains the rest. It returns what the ingest acknowledged (id to
// value) and how many times each id is in Kafka, once JetStream has
// nothing left to send.
func forwarderStoppedMidDrain(t *testing.T, sig syscall.Signal) (byID map[string]string, seen map[string]int) {
	t.Helper()
	k := newFaultyKafka(t)
	broker := k.addr
	in := startIngest(t, broker, "SPILLWAY_PRODUCER_WAL_MODE=always")
	natsAddr := in.natsAddr
	const topic, n = "wal-stopped", 3000
	byID = map[string]string{}
	for b := range n / 100 {
		var values []string
		for i := range 100 {
			values = append(values, fmt.Sprintf(`"stopped-%d"`, b*100+i))
		}
		for id, v := range postValuesAhead(t, in.httpAddr, topic, values) {
			byID[id] = v
		}
	}

	// ack_wait must be above a batch's bound, the message timeout (a
	// start-up check). Kafka answers in 300 ms here, but a batch waits behind
	// the others: a timeout would send it twice.
	env := []string{"SPILLWAY_PRODUCER_WAL_ACK_WAIT=10s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=8000"}
	k.slow(t, 300*time.Millisecond)
	first, monitor := startForwarder(t, broker, natsAddr, append(env, "SPILLWAY_FORWARD_RATE_LIMIT=1000")...)
	series := `spillway_records_drained_total{consumer="forwarder",topic="wal-stopped"}`
	var drained float64
	eventually(t, 30*time.Second, "the forwarder to deliver 300 records", func() bool {
		drained = metricValue(t, monitor, series)
		return drained >= 300
	})
	if err := first.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	code := first.exitCode(t, 20*time.Second)
	if sig == syscall.SIGTERM && code != 0 {
		t.Fatalf("the forwarder exited %d after SIGTERM; want 0", code)
	}
	k.fast(t)
	before := map[string]bool{}
	for _, r := range kcatConsume(t, broker, topic) {
		before[header(r, "spillway-id")] = true
	}
	t.Logf("%v after %v records delivered: %d of %d records in Kafka when the forwarder had exited", sig, drained, len(before), n)
	if len(before) < 300 || len(before) >= n {
		t.Fatalf("%d of %d records in Kafka when the forwarder stopped; want at least 300 and not all (stopped mid-drain)", len(before), n)
	}

	startForwarder(t, broker, natsAddr, env...)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		seen = map[string]int{}
		for _, r := range kcatConsumeMaybe(broker, topic) {
			seen[header(r, "spillway-id")]++
		}
		missing, dups := countMissingAndDuplicates(byID, seen)
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after the restart %d of %d acknowledged records are not in Kafka (%d duplicates)", missing, n, dups)
		}
	}
	// Once the stream is empty every message was acknowledged, and none
	// can be sent again: only then are the duplicates all in Kafka.
	eventually(t, 30*time.Second, "the buffer's stream to be empty", func() bool { return streamMessages(t, natsAddr) == 0 })
	seen = map[string]int{}
	for _, r := range kcatConsume(t, broker, topic) {
		id := header(r, "spillway-id")
		seen[id]++
		want, ok := byID[id]
		switch {
		case !ok:
			t.Errorf("a record in Kafka that was never acknowledged: id %q value %q", id, *r.Payload)
		case *r.Payload != want:
			t.Errorf("record %s in Kafka has value %q, want %q", id, *r.Payload, want)
		}
	}
	return byID, seen
}

// streamMessages is how many messages the buffer's stream (SPILLWAY)
// holds, as JetStream says; -1 when it cannot say.
func streamMessages(t *testing.T, natsAddr string) int64 {
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
	stream, err := js.Stream(t.Context(), "SPILLWAY")
	if err != nil {
		return -1
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		return -1
	}
	return int64(info.State.Msgs)
}

// TestForwarderKilledMidDrain kills the forwarder (kill -9) mid-drain and
// starts another: every acknowledged record reaches Kafka with its value.
// Duplicates are bounded by the records the killed forwarder held without
// its acknowledgement reaching JetStream: at most 4 workers with a batch
// of rate/10 = 100 records each, 400.
func TestForwarderKilledMidDrain(t *testing.T) {
	parallel(t, waits)
	byID, seen := forwarderStoppedMidDrain(t, syscall.SIGKILL)
	missing, dups := countMissingAndDuplicates(byID, seen)
	t.Logf("kill -9: %d acknowledged, %d missing, %d duplicates in Kafka", len(byID), missing, dups)
	if missing != 0 || dups > 400 {
		t.Fatalf("%d acknowledged records: %d missing, %d duplicates; want 0 missing and at most 400 duplicates", len(byID), missing, dups)
	}
}

// TestForwarderSIGTERMMidDrain stops the forwarder with SIGTERM mid-drain:
// it finishes the batches it holds, acknowledges them and exits 0, so
// that after a restart every acknowledged record is in Kafka exactly once.
func TestForwarderSIGTERMMidDrain(t *testing.T) {
	parallel(t, waits)
	byID, seen := forwarderStoppedMidDrain(t, syscall.SIGTERM)
	missing, dups := countMissingAndDuplicates(byID, seen)
	t.Logf("SIGTERM: %d acknowledged, %d missing, %d duplicates in Kafka", len(byID), missing, dups)
	if missing != 0 || dups != 0 {
		t.Fatalf("%d acknowledged records: %d missing, %d duplicates; want 0 and 0", len(byID), missing, dups)
	}
}

func countMissingAndDuplicates(byID map[string]string, seen map[string]int) (missing, dups int) {
	for id := range byID {
		if seen[id] == 0 {
			missing++
		}
	}
	for _, k := range seen {
		dups += max(0, k-1)
	}
	return missing, dups
}
