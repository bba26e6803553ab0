package app_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spillway/spillway/pkg/kafkatest"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path+".new", []byte(content), 0o600))
	require.NoError(t, os.Rename(path+".new", path))
}

// TestValidationAndMapping: over HTTP and gRPC, each rule accepts a good
// record and refuses a bad one with 422 (InvalidArgument) naming the rule;
// in a batch only the bad record fails, named by its index; a mapped topic
// is read from Kafka under its new name, while the metrics keep the name
// the client gave.
func TestValidationAndMapping(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	dir := t.TempDir()
	writeFile(t, dir+"/order.json", `{"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}`)
	in := ingesttest.StartYAML(t, addr, `
validation:
  rules:
    - topics: ["orders"]
      key_required: true
      headers_required: [source]
      schema: `+dir+`/order.json
    - topics: ["logs.*"]
      json: true
      max_bytes: 100
topic_mapping:
  - {exact: legacy-orders, to: orders}
  - {prefix: "logs.", to: "applogs."}
  - {prefix: "logs.audit.", to: "audit."}
`)
	url := func(topic string) string { return in.URL + "/topics/" + topic + "/messages" }
	type answer struct {
		ErrorCode int    `json:"error_code"`
		Message   string `json:"message"`
		Topic     string `json:"topic"`
		Results   []struct {
			Outcome   string `json:"outcome"`
			ErrorCode int    `json:"error_code"`
			Message   string `json:"message"`
		} `json:"results"`
	}
	post := func(topic, ct, body string, headers ...string) (int, answer) {
		code, b := ingesttest.Post(t, url(topic), ct, body, headers...)
		var a answer
		require.NoError(t, json.Unmarshal([]byte(b), &a), b)
		return code, a
	}

	for _, tc := range []struct {
		name, topic, body string
		headers           []string
		status            int
		msg               string
	}{
		{"good order", "orders", `{"amount": 5}`, []string{"X-Kafka-Key", "o1", "X-Kafka-Header-Source", "shop"}, 200, ""},
		{"no key", "orders", `{"amount": 5}`, []string{"X-Kafka-Header-Source", "shop"}, 422, "validation rule key_required (validation.rules[0]) failed: the record has no key"},
		{"no header", "orders", `{"amount": 5}`, []string{"X-Kafka-Key", "o1"}, 422, "validation rule headers_required (validation.rules[0]) failed: the record lacks the header(s) source"},
		{"schema", "orders", `{"amount": "5"}`, []string{"X-Kafka-Key", "o1", "X-Kafka-Header-Source", "shop"}, 422, "validation rule schema (validation.rules[0]) failed: the value does not satisfy the schema: at '/amount': got string, want number"},
		{"not json", "logs.app", `plain`, nil, 422, "validation rule json (validation.rules[1]) failed: the value is not valid JSON"},
		{"too large", "logs.app", `"` + strings.Repeat("x", 200) + `"`, nil, 422, "validation rule max_bytes (validation.rules[1]) failed: the record is 202 bytes"},
		{"good log, mapped", "logs.app", `{"line": 1}`, nil, 200, ""},
		{"no rule", "free", `anything`, nil, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, a := post(tc.topic, "text/plain", tc.body, tc.headers...)
			assert.Equal(t, tc.status, code, "%+v", a)
			if tc.status == 422 {
				assert.Equal(t, 42201, a.ErrorCode)
				assert.Contains(t, a.Message, tc.msg)
			}
		})
	}

	// A batch with one bad record: the others are delivered.
	code, a := post("logs.app", "application/x-ndjson", "{\"n\":1}\n{\"n\":2}\n\""+strings.Repeat("y", 150)+"\"\n{\"n\":4}\n")
	assert.Equal(t, http.StatusMultiStatus, code)
	require.Len(t, a.Results, 4)
	assert.Equal(t, []string{"delivered", "delivered", "failed", "delivered"}, []string{a.Results[0].Outcome, a.Results[1].Outcome, a.Results[2].Outcome, a.Results[3].Outcome})
	assert.Equal(t, 42201, a.Results[2].ErrorCode)
	assert.Contains(t, a.Message, "record 2: validation rule max_bytes (validation.rules[1]) failed")

	// Mapping: exact, and the longest prefix.
	code, a = post("legacy-orders", "text/plain", "old client")
	require.Equal(t, http.StatusUnprocessableEntity, code, "the rules of orders follow the record: %+v", a)
	code, a = post("legacy-orders", "text/plain", `{"amount": 7}`, "X-Kafka-Key", "o2", "X-Kafka-Header-Source", "old-shop")
	require.Equal(t, http.StatusOK, code, "%+v", a)
	assert.Equal(t, "orders", a.Topic, "the answer names the Kafka topic")
	code, _ = post("logs.audit.login", "text/plain", `{"who": "x"}`)
	require.Equal(t, http.StatusOK, code)

	recs := kafkatest.Consume(t, addr, "applogs.app", 4, 10*time.Second)
	assert.Len(t, recs, 4, "the good log and three of the batch, under the mapped name")
	recs = kafkatest.Consume(t, addr, "audit.login", 1, 10*time.Second)
	assert.Equal(t, `{"who": "x"}`, string(recs[0].Value), "logs.audit. is longer than logs.: it wins")
	recs = kafkatest.Consume(t, addr, "orders", 2, 10*time.Second)
	assert.ElementsMatch(t, []string{`{"amount": 5}`, `{"amount": 7}`}, []string{string(recs[0].Value), string(recs[1].Value)})

	// gRPC: a bad record is InvalidArgument, the others of the call pass.
	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	resp, err := ingestv1.NewIngestServiceClient(conn).Produce(t.Context(), &ingestv1.ProduceRequest{Topic: "logs.app", Records: []*ingestv1.Record{
		{Value: []byte(`{"g":1}`)}, {Value: []byte("not json")},
	}})
	require.NoError(t, err)
	assert.Equal(t, ingestv1.Outcome_OUTCOME_DELIVERED, resp.Results[0].Outcome)
	assert.Equal(t, ingestv1.Outcome_OUTCOME_FAILED, resp.Results[1].Outcome)
	assert.Equal(t, int32(codes.InvalidArgument), resp.Results[1].ErrorCode)
	assert.Contains(t, resp.Results[1].ErrorMessage, "validation rule json (validation.rules[1]) failed")

	// Confluent v2: the bad record's offset carries the error.
	code, body := ingesttest.Post(t, in.URL+"/topics/logs.app", "application/vnd.kafka.binary.v2+json",
		`{"records":[{"value":"eyJvayI6MX0="},{"value":"bm90IGpzb24="}]}`) // {"ok":1} and "not json"
	assert.Equal(t, http.StatusMultiStatus, code, body)
	assert.Contains(t, body, `"error":"validation rule json (validation.rules[1]) failed: the value is not valid JSON"`)
	assert.Contains(t, body, `"message":"record 1: validation rule json`)

	m := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	assert.Equal(t, 1.0, m(`spillway_validation_failures_total{rule="key_required",topic="orders"}`))
	assert.Equal(t, 1.0, m(`spillway_validation_failures_total{rule="schema",topic="orders"}`))
	assert.Equal(t, 3.0, m(`spillway_validation_failures_total{rule="json",topic="logs.app"}`), "one over HTTP, one over v2, one over gRPC")
	assert.Equal(t, 2.0, m(`spillway_validation_failures_total{rule="max_bytes",topic="logs.app"}`))
	assert.Equal(t, 1.0, m(`spillway_records_delivered_total{topic="legacy-orders"}`), "metrics use the name the client gave")
}

// TestReload: rules, mappings, ACLs and rate limits change when the file
// does, without a failed request under a steady load; a bad file is
// rejected with its error and the rules before it stay in force.
func TestReload(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	path := filepath.Join(t.TempDir(), "spillway.yaml")
	writeFile(t, path, `
security:
  allow_topics: ["events", "old", "first", "new"] # an alias and its topic
topic_mapping:
  - {exact: old, to: first}
`)
	in := ingesttest.StartFile(t, addr, path)

	// A steady load on "events" during every reload.
	var sent, failedReqs atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, body := ingesttest.Post(t, in.URL+"/topics/events/messages", "text/plain", "steady")
				sent.Add(1)
				if code != http.StatusOK {
					failedReqs.Add(1)
					firstFailure.CompareAndSwap(nil, body)
				}
			}
		}()
	}
	reloads := func() float64 {
		return ingesttest.Metric(t, in.Monitor, `spillway_config_reloads_total{result="applied"}`)
	}

	code, a := ingesttest.Post(t, in.URL+"/topics/old/messages", "text/plain", "1")
	require.Equal(t, http.StatusOK, code, a)
	assert.Contains(t, a, `"topic":"first"`)
	code, _ = ingesttest.Post(t, in.URL+"/topics/blocked/messages", "text/plain", "1")
	assert.Equal(t, http.StatusForbidden, code, "not in the allow-list yet")

	writeFile(t, path, `
security:
  allow_topics: ["events", "old", "second", "new", "blocked"]
  rate_limit: {records_per_second: 100000}
topic_mapping:
  - {exact: old, to: second}
validation:
  rules:
    - {topics: [new], key_required: true}
`)
	require.Eventually(t, func() bool { return reloads() == 1 }, 10*time.Second, 20*time.Millisecond)
	code, a = ingesttest.Post(t, in.URL+"/topics/old/messages", "text/plain", "2")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, a, `"topic":"second"`, "the new mapping")
	code, _ = ingesttest.Post(t, in.URL+"/topics/blocked/messages", "text/plain", "2")
	assert.Equal(t, http.StatusOK, code, "the new allow-list")
	code, a = ingesttest.Post(t, in.URL+"/topics/new/messages", "text/plain", "2")
	assert.Equal(t, http.StatusUnprocessableEntity, code, "the new rule: %s", a)

	// A bad file: rejected, logged with its error, the rules stay.
	writeFile(t, path, `
topic_mapping:
  - {exact: old}
`)
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_config_reloads_total{result="rejected"}`) == 1
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, 0.0, ingesttest.Metric(t, in.Monitor, `spillway_config_last_reload_successful`))
	assert.Contains(t, in.LogText(), "configuration reload rejected; the configuration before it stays in force")
	assert.Contains(t, in.LogText(), `topic_mapping[0].to: invalid topic name: it is empty`)
	code, a = ingesttest.Post(t, in.URL+"/topics/old/messages", "text/plain", "3")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, a, `"topic":"second"`, "the mapping before the bad file")

	// Reload on request (what SIGHUP does) after fixing the file.
	writeFile(t, path, "security: {allow_topics: [events]}\n")
	require.Eventually(t, func() bool { return reloads() == 2 }, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, in.App.Reload())
	assert.Equal(t, 3.0, reloads())
	code, _ = ingesttest.Post(t, in.URL+"/topics/old/messages", "text/plain", "4")
	assert.Equal(t, http.StatusForbidden, code)

	close(stop)
	wg.Wait()
	assert.Positive(t, sent.Load())
	assert.Zero(t, failedReqs.Load(), "no request failed during the reloads (first failure: %v)", firstFailure.Load())
	t.Logf("%d requests during 3 reloads and a rejected one", sent.Load())
}

// TestMirror: the acknowledged records of the mirrored topics (by their
// Kafka name, after mapping) are also in the mirror cluster, with their
// key, headers and value; other topics are not copied.
func TestMirror(t *testing.T) {
	_, primary := kafkatest.NewCluster(t)
	_, mirrorAddr := kafkatest.NewCluster(t)
	in := ingesttest.StartYAML(t, primary, `
topic_mapping:
  - {exact: legacy, to: orders}
mirrors:
  - name: dr
    topics: ["orders", "audit.*"]
    kafka: {brokers: ["`+mirrorAddr+`"]}
`)
	for i := range 5 {
		code, body := ingesttest.Post(t, in.URL+"/topics/legacy/messages", "text/plain", fmt.Sprintf("order-%d", i), "X-Kafka-Key", "k", "X-Kafka-Header-Source", "shop")
		require.Equal(t, http.StatusOK, code, body)
	}
	code, body := ingesttest.Post(t, in.URL+"/topics/audit.login/messages", "application/x-ndjson", "{\"a\":1}\n{\"a\":2}\n")
	require.Equal(t, http.StatusOK, code, body)
	code, body = ingesttest.Post(t, in.URL+"/topics/private/messages", "text/plain", "not mirrored")
	require.Equal(t, http.StatusOK, code, body)

	got := kafkatest.Consume(t, mirrorAddr, "orders", 5, 10*time.Second)
	require.Len(t, got, 5)
	assert.Equal(t, "k", string(got[0].Key))
	source, _ := kafkatest.HeaderValue(got[0], "source")
	assert.Equal(t, "shop", source)
	primaryID, _ := kafkatest.HeaderValue(kafkatest.Consume(t, primary, "orders", 5, 10*time.Second)[0], "spillway-id")
	mirrorIDs := map[string]bool{}
	for _, r := range got {
		id, _ := kafkatest.HeaderValue(r, "spillway-id")
		mirrorIDs[id] = true
	}
	assert.True(t, mirrorIDs[primaryID], "the copy has the record's spillway-id")
	assert.Len(t, kafkatest.Consume(t, mirrorAddr, "audit.login", 2, 10*time.Second), 2)
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_mirror_records_total{mirror="dr",outcome="mirrored"}`) == 7
	}, 10*time.Second, 20*time.Millisecond, "5 orders and 2 audit records; private is not mirrored")
	assert.Equal(t, 0.0, ingesttest.Metric(t, in.Monitor, `spillway_mirror_queued_records{mirror="dr"}`))
}
