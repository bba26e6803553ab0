package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// TestKeylessRecordFailsAloneOnACompactedTopic: Kafka refuses a batch
// that holds a record without a key for a compacted topic (INVALID_RECORD,
// naming no record, as brokers before 2.4 do). Through HTTP, 5 keyless
// records posted among 100 keyed ones to the same topic, at the same
// time, share batches with them: each keyless record is answered 400 and
// says why, and every keyed record is answered 200 and is in Kafka with
// its key.
func TestKeylessRecordFailsAloneOnACompactedTopic(t *testing.T) {
	parallel(t, waits)
	c, broker := kafkatest.NewCluster(t, kfake.SeedTopics(1, "compacted"))
	refused := kafkatest.RefuseKeyless(t, c, "compacted", false)
	in := startIngest(t, broker, "SPILLWAY_KAFKA_LINGER_MS=20") // concurrent posts share a batch

	l := newLoad()
	client := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() { l.post(client, in.httpAddr, "compacted", fmt.Sprintf("k%d", i), fmt.Sprintf("keyed-%d", i)) })
		if i%20 == 10 {
			wg.Go(func() { l.post(client, in.httpAddr, "compacted", "", fmt.Sprintf("keyless-%d", i)) })
		}
	}
	wg.Wait()

	if !slices.ContainsFunc(refused.Sizes(), func(n int) bool { return n > 1 }) {
		t.Fatalf("Kafka refused batches of %v records: no keyless record shared a batch with another, so nothing was tested", refused.Sizes())
	}
	l.mu.Lock()
	statuses, body := l.statuses, l.bodies[http.StatusBadRequest]
	for value, p := range l.records {
		want := http.StatusOK
		if strings.HasPrefix(value, "keyless-") {
			want = http.StatusBadRequest
		}
		if p.status != want {
			t.Errorf("%s was answered %d, want %d", value, p.status, want)
		}
	}
	l.mu.Unlock()
	t.Logf("answers %v; Kafka refused batches of %v records", statuses, refused.Sizes())
	if !strings.Contains(body, "Invalid Record") {
		t.Errorf("the 400 does not say Kafka refused the record as invalid: %s", body)
	}
	recs := kafkatest.Consume(t, broker, "compacted", 100, 30*time.Second)
	keys := map[string]bool{}
	for _, r := range recs {
		if string(r.Value) != "keyed-"+strings.TrimPrefix(string(r.Key), "k") {
			t.Errorf("in Kafka: key %q value %q", r.Key, r.Value)
		}
		keys[string(r.Key)] = true
	}
	if len(recs) != 100 || len(keys) != 100 {
		t.Errorf("Kafka holds %d records with %d distinct keys, want the 100 keyed ones once each", len(recs), len(keys))
	}
}
