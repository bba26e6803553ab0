package httpapi

import (
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/delivertest"
)

// The API tables: each route's answer to every outcome the scripted Sender
// (scripted_test.go) gives, without Kafka or the ingest. Status, error
// code, body and Retry-After are what a client reads; the records the
// Sender was handed show what the route made of the request.

// serve answers one request with an HTTP API over a Sender scripted with
// script, and returns the answer and the records the Sender got.
func serve(t *testing.T, script []answer, method, target, contentType, body string, headers ...string) (*httptest.ResponseRecorder, []record.Record) {
	t.Helper()
	sender := &delivertest.Sender{InTurn: script}
	h := New(Options{Sender: sender, MaxBodyBytes: 1 << 16, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.DiscardHandler), LatencyBuckets: prometheus.DefBuckets})
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w, sender.Records()
}

// wantRetryAfter says whether a failure for reason tells the client to
// come back in a second (docs/api.md: overloaded and rate limited).
func wantRetryAfter(reason record.Reason) bool {
	return reason == record.ReasonOverloaded || reason == record.ReasonRateLimited
}

// failureBody is the error answer of a request failed for reason, with the
// message prefix a batch puts before it ("record N: ").
func failureBody(reason record.Reason, prefix string) string {
	_, code := statusOf(reason)
	return `{"error_code":` + strconv.Itoa(code) + `,"message":"` + prefix + failMessage(reason) + `"}`
}

// TestReasonAnchors pins a few rows of the reason table (status, code and
// Confluent v2's error_code) to their documented values (docs/api.md), so
// that the tables below, which read every other row from it, stand on
// known ground.
func TestReasonAnchors(t *testing.T) {
	for reason, want := range map[record.Reason]reasonAnswer{
		record.ReasonInvalid:     {400, 40001, 1},
		record.ReasonTooLarge:    {413, 41301, 1},
		record.ReasonUnavailable: {503, 50301, 2},
		record.ReasonTimeout:     {504, 50401, 2},
		record.ReasonBufferFull:  {507, 50701, 2},
		record.ReasonOverloaded:  {503, 50303, 2},
		record.ReasonRateLimited: {429, 42901, 2},
	} {
		assert.Equal(t, want, answerOf(reason), reason)
	}
}

const wantTime = `"timestamp":"2026-12-04T10:11:12.345Z"`

// TestAmbassadorSingleAnswers: POST /topics/{topic}/messages with one
// record (kafka-ambassador's and Spillway's route).
func TestAmbassadorSingleAnswers(t *testing.T) {
	cases := []struct {
		name   string
		answer answer
		status int
		body   string
	}{
		{"delivered", delivered(3, 42), 200, `{"id":"id-0","outcome":"delivered","topic":"orders","partition":3,"offset":42,` + wantTime + `}`},
		{"buffered", buffered(), 202, `{"id":"id-0","outcome":"buffered","topic":"orders"}`},
	}
	for _, reason := range record.Reasons() {
		status, _ := statusOf(reason)
		cases = append(cases, struct {
			name   string
			answer answer
			status int
			body   string
		}{string(reason), failed(reason), status, failureBody(reason, "")})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, recs := serve(t, []answer{c.answer}, http.MethodPost, "/topics/orders/messages", "text/plain", "hello",
				"X-Kafka-Key", "user-42", "X-Kafka-Header-Trace", "abc")
			assert.Equal(t, c.status, w.Code)
			assert.JSONEq(t, c.body, w.Body.String())
			assert.Equal(t, c.answer.Outcome == record.Failed && wantRetryAfter(c.answer.Reason), w.Header().Get("Retry-After") == "1")
			require.Len(t, recs, 1)
			assert.Equal(t, "orders", recs[0].Topic)
			assert.Equal(t, "user-42", string(recs[0].Key))
			assert.Equal(t, "hello", string(recs[0].Value))
			assert.Equal(t, []record.Header{{Key: "trace", Value: []byte("abc")}}, recs[0].Headers)
		})
	}
}

// TestAmbassadorBatchAnswers: an NDJSON body of three records; the status
// is 200 when Kafka has all, 202 when some are buffered and none failed,
// the failure's when all failed alike, 207 when the outcomes are mixed.
func TestAmbassadorBatchAnswers(t *testing.T) {
	del := func(id string, off int) string {
		return `{"id":"` + id + `","outcome":"delivered","topic":"t","partition":1,"offset":` + strconv.Itoa(off) + `,` + wantTime + `}`
	}
	buf := func(id string) string { return `{"id":"` + id + `","outcome":"buffered","topic":"t"}` }
	fail := func(id string, reason record.Reason) string {
		_, code := statusOf(reason)
		return `{"id":"` + id + `","outcome":"failed","topic":"t","error_code":` + strconv.Itoa(code) + `,"message":"` + failMessage(reason) + `"}`
	}
	top := func(reason record.Reason, i int) string {
		_, code := statusOf(reason)
		return `"error_code":` + strconv.Itoa(code) + `,"message":"record ` + strconv.Itoa(i) + `: ` + failMessage(reason) + `",`
	}
	cases := []struct {
		name       string
		script     []answer
		status     int
		body       string
		retryAfter bool
	}{
		{"all delivered", []answer{delivered(1, 10), delivered(1, 11), delivered(1, 12)}, 200,
			`{"results":[` + del("id-0", 10) + `,` + del("id-1", 11) + `,` + del("id-2", 12) + `]}`, false},
		{"some buffered", []answer{delivered(1, 10), buffered(), buffered()}, 202,
			`{"results":[` + del("id-0", 10) + `,` + buf("id-1") + `,` + buf("id-2") + `]}`, false},
		{"all buffered", []answer{buffered(), buffered(), buffered()}, 202,
			`{"results":[` + buf("id-0") + `,` + buf("id-1") + `,` + buf("id-2") + `]}`, false},
		{"all failed alike", []answer{failed(record.ReasonBufferFull), failed(record.ReasonBufferFull), failed(record.ReasonBufferFull)}, 507,
			`{` + top(record.ReasonBufferFull, 0) + `"results":[` + fail("id-0", record.ReasonBufferFull) + `,` + fail("id-1", record.ReasonBufferFull) + `,` + fail("id-2", record.ReasonBufferFull) + `]}`, false},
		{"all overloaded", []answer{failed(record.ReasonOverloaded), failed(record.ReasonOverloaded), failed(record.ReasonOverloaded)}, 503,
			`{` + top(record.ReasonOverloaded, 0) + `"results":[` + fail("id-0", record.ReasonOverloaded) + `,` + fail("id-1", record.ReasonOverloaded) + `,` + fail("id-2", record.ReasonOverloaded) + `]}`, true},
		{"all failed, statuses differ", []answer{failed(record.ReasonInvalid), failed(record.ReasonTooLarge), failed(record.ReasonInvalid)}, 207,
			`{` + top(record.ReasonInvalid, 0) + `"results":[` + fail("id-0", record.ReasonInvalid) + `,` + fail("id-1", record.ReasonTooLarge) + `,` + fail("id-2", record.ReasonInvalid) + `]}`, false},
		{"delivered, buffered and failed", []answer{delivered(1, 10), buffered(), failed(record.ReasonRateLimited)}, 207,
			`{` + top(record.ReasonRateLimited, 2) + `"results":[` + del("id-0", 10) + `,` + buf("id-1") + `,` + fail("id-2", record.ReasonRateLimited) + `]}`, true},
		{"one failed among delivered", []answer{delivered(1, 10), failed(record.ReasonUnavailable), delivered(1, 11)}, 207,
			`{` + top(record.ReasonUnavailable, 1) + `"results":[` + del("id-0", 10) + `,` + fail("id-1", record.ReasonUnavailable) + `,` + del("id-2", 11) + `]}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, recs := serve(t, c.script, http.MethodPost, "/topics/t/messages", "application/x-ndjson", "\"a\"\n{\"b\":1}\n3\n")
			assert.Equal(t, c.status, w.Code)
			assert.JSONEq(t, c.body, w.Body.String())
			assert.Equal(t, c.retryAfter, w.Header().Get("Retry-After") == "1")
			require.Len(t, recs, 3)
			for i, v := range []string{`"a"`, `{"b":1}`, "3"} {
				assert.Equal(t, v, string(recs[i].Value), "record %d", i)
			}
		})
	}
}

// TestPixyAnswers: kafka-pixy's routes, the shared one (recognised by its
// key parameter) and the cluster one.
func TestPixyAnswers(t *testing.T) {
	type pixyCase struct {
		name   string
		answer answer
		status int
		body   string
	}
	cases := []pixyCase{
		{"delivered", delivered(2, 7), 200, `{"id":"id-0","outcome":"delivered","partition":2,"offset":7}`},
		{"buffered", buffered(), 202, `{"id":"id-0","outcome":"buffered"}`},
	}
	for _, reason := range record.Reasons() {
		status, _ := statusOf(reason)
		cases = append(cases, pixyCase{string(reason), failed(reason), status, failureBody(reason, "")})
	}
	for _, route := range []string{"/topics/t/messages?key=k1", "/clusters/default/topics/t/messages?key=k1"} {
		for _, c := range cases {
			t.Run(route+" "+c.name, func(t *testing.T) {
				w, recs := serve(t, []answer{c.answer}, http.MethodPost, route, "text/plain", "hello", "X-Kafka-Origin", base64.StdEncoding.EncodeToString([]byte("eu")))
				assert.Equal(t, c.status, w.Code)
				assert.JSONEq(t, c.body, w.Body.String())
				assert.Equal(t, c.answer.Outcome == record.Failed && wantRetryAfter(c.answer.Reason), w.Header().Get("Retry-After") == "1")
				require.Len(t, recs, 1)
				assert.Equal(t, "k1", string(recs[0].Key))
				assert.Equal(t, "hello", string(recs[0].Value))
				if strings.HasPrefix(route, "/clusters/") {
					assert.Equal(t, []record.Header{{Key: "Origin", Value: []byte("eu")}}, recs[0].Headers)
				}
			})
		}
	}
}

// TestConfluentV2Answers: Confluent REST Proxy v2's answer, an offsets
// entry per record, with its error_code 1 (retrying will not help) or 2
// (it may) for a failed record, its reason's v2 column.
func TestConfluentV2Answers(t *testing.T) {
	del := func(id string, p, off int) string {
		return `{"partition":` + strconv.Itoa(p) + `,"offset":` + strconv.Itoa(off) + `,"error_code":null,"error":null,"outcome":"delivered","id":"` + id + `"}`
	}
	buf := func(id string) string {
		return `{"partition":null,"offset":null,"error_code":null,"error":null,"outcome":"buffered","id":"` + id + `"}`
	}
	fail := func(id string, reason record.Reason) string {
		code := strconv.Itoa(answerOf(reason).v2)
		return `{"partition":null,"offset":null,"error_code":` + code + `,"error":"` + failMessage(reason) + `","outcome":"failed","id":"` + id + `"}`
	}
	wrap := func(top string, offsets ...string) string {
		return `{` + top + `"offsets":[` + strings.Join(offsets, ",") + `],"key_schema_id":null,"value_schema_id":null}`
	}
	top := func(reason record.Reason, i int) string {
		_, code := statusOf(reason)
		return `"error_code":` + strconv.Itoa(code) + `,"message":"record ` + strconv.Itoa(i) + `: ` + failMessage(reason) + `",`
	}
	type v2Case struct {
		name       string
		script     []answer
		status     int
		body       string
		retryAfter bool
	}
	cases := []v2Case{
		{"all delivered", []answer{delivered(0, 5), delivered(1, 9)}, 200, wrap("", del("id-0", 0, 5), del("id-1", 1, 9)), false},
		{"buffered", []answer{delivered(0, 5), buffered()}, 202, wrap("", del("id-0", 0, 5), buf("id-1")), false},
		{"mixed", []answer{failed(record.ReasonTimeout), buffered()}, 207, wrap(top(record.ReasonTimeout, 0), fail("id-0", record.ReasonTimeout), buf("id-1")), false},
		{"failed in the record and in Kafka", []answer{failed(record.ReasonTooLarge), failed(record.ReasonUnavailable)}, 207,
			wrap(top(record.ReasonTooLarge, 0), fail("id-0", record.ReasonTooLarge), fail("id-1", record.ReasonUnavailable)), false},
	}
	for _, reason := range record.Reasons() {
		status, _ := statusOf(reason)
		cases = append(cases, v2Case{"all " + string(reason), []answer{failed(reason), failed(reason)}, status,
			wrap(top(reason, 0), fail("id-0", reason), fail("id-1", reason)), wantRetryAfter(reason)})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, recs := serve(t, c.script, http.MethodPost, "/topics/t", "application/vnd.kafka.binary.v2+json",
				`{"records":[{"key":"azE=","value":"djE="},{"value":"djI=","partition":1}]}`)
			assert.Equal(t, c.status, w.Code)
			assert.Equal(t, "application/vnd.kafka.v2+json", w.Header().Get("Content-Type"))
			assert.JSONEq(t, c.body, w.Body.String())
			assert.Equal(t, c.retryAfter, w.Header().Get("Retry-After") == "1")
			require.Len(t, recs, 2)
			assert.Equal(t, "k1", string(recs[0].Key))
			assert.Equal(t, "v1", string(recs[0].Value))
			assert.Equal(t, record.AnyPartition, recs[0].Partition)
			assert.Nil(t, recs[1].Key)
			assert.Equal(t, "v2", string(recs[1].Value))
			assert.Equal(t, int32(1), recs[1].Partition)
		})
	}
}

// TestConfluentV3Answers: Confluent REST Proxy v3's answer to a body of
// one record (the record's status), and of two concatenated records (200
// and a line per record with its own status in error_code).
func TestConfluentV3Answers(t *testing.T) {
	const path = "/v3/clusters/c1/topics/t/records"
	one := func(a answer) (int, string) {
		switch a.Outcome {
		case record.Delivered:
			return 200, `{"error_code":200,"outcome":"delivered","id":"id-0","cluster_id":"c1","topic_name":"t","partition_id":` +
				strconv.Itoa(int(a.Partition)) + `,"offset":` + strconv.FormatInt(a.Offset, 10) + `,` + wantTime + `,"key":{"type":"STRING","size":2},"value":{"type":"JSON","size":7}}`
		case record.Buffered:
			return 202, `{"error_code":202,"outcome":"buffered","id":"id-0","cluster_id":"c1","topic_name":"t","key":{"type":"STRING","size":2},"value":{"type":"JSON","size":7}}`
		default:
			status, _ := statusOf(a.Reason)
			return status, `{"error_code":` + strconv.Itoa(status) + `,"message":"` + failMessage(a.Reason) + `","outcome":"failed","id":"id-0"}`
		}
	}
	answers := []answer{delivered(4, 99), buffered()}
	for _, reason := range record.Reasons() {
		answers = append(answers, failed(reason))
	}
	for _, a := range answers {
		name := a.Outcome.String()
		if a.Outcome == record.Failed {
			name = string(a.Reason)
		}
		t.Run("one "+name, func(t *testing.T) {
			w, recs := serve(t, []answer{a}, http.MethodPost, path, "application/json",
				`{"key":{"type":"STRING","data":"k1"},"value":{"data":{"a":1}}}`)
			status, body := one(a)
			assert.Equal(t, status, w.Code)
			assert.JSONEq(t, body, w.Body.String())
			assert.Equal(t, a.Outcome == record.Failed && wantRetryAfter(a.Reason), w.Header().Get("Retry-After") == "1")
			require.Len(t, recs, 1)
			assert.Equal(t, "k1", string(recs[0].Key))
			assert.Equal(t, `{"a":1}`, string(recs[0].Value))
		})
	}

	t.Run("two, mixed", func(t *testing.T) {
		w, recs := serve(t, []answer{failed(record.ReasonForbidden), delivered(0, 3)}, http.MethodPost, path, "application/json",
			`{"value":{"type":"STRING","data":"a"}}{"value":{"type":"STRING","data":"b"}}`)
		assert.Equal(t, 200, w.Code)
		status, _ := statusOf(record.ReasonForbidden)
		lines := strings.Split(strings.TrimSpace(w.Body.String()), "\n")
		require.Len(t, lines, 2, w.Body.String())
		assert.JSONEq(t, `{"error_code":`+strconv.Itoa(status)+`,"message":"`+failMessage(record.ReasonForbidden)+`","outcome":"failed","id":"id-0"}`, lines[0])
		assert.JSONEq(t, `{"error_code":200,"outcome":"delivered","id":"id-1","cluster_id":"c1","topic_name":"t","partition_id":0,"offset":3,`+wantTime+`,"value":{"type":"STRING","size":1}}`, lines[1])
		require.Len(t, recs, 2)
		assert.Equal(t, "a", string(recs[0].Value))
		assert.Equal(t, "b", string(recs[1].Value))
	})
}

// TestRequestRefusals: a request refused whole, for a body the route
// cannot read or a topic that is not one, is answered with the refusal's
// status and message, and no record reaches the Sender.
func TestRequestRefusals(t *testing.T) {
	cases := []struct {
		name, target, contentType, body string
		status                          int
		answer                          string
	}{
		{"an NDJSON line that is not JSON", "/topics/t/messages", "application/x-ndjson", "\"a\"\n{b\n", 400,
			`{"error_code":40001,"message":"line 2 is not valid JSON: invalid character 'b' looking for beginning of object key string at byte 2"}`},
		{"a topic that is not one", "/topics/a*b/messages", "text/plain", "hello", 400,
			`{"error_code":40001,"message":"invalid topic name \"a*b\": character '*' at byte 1; allowed are a-z, A-Z, 0-9, '.', '_' and '-'"}`},
		{"a v2 body that is not JSON", "/topics/t", "application/vnd.kafka.binary.v2+json", `{"records":`, 400,
			`{"error_code":40001,"message":"the body ends in the middle of a JSON value"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, recs := serve(t, nil, http.MethodPost, c.target, c.contentType, c.body)
			assert.Equal(t, c.status, w.Code)
			assert.JSONEq(t, c.answer, w.Body.String())
			assert.Empty(t, recs)
		})
	}
}
