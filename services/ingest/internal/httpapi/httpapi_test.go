package httpapi_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

const readTimeout = 10 * time.Second

func consumeOne(t *testing.T, addr, topic string) *kgo.Record {
	t.Helper()
	got := kafkatest.Consume(t, addr, topic, 1, readTimeout)
	require.Len(t, got, 1)
	return got[0]
}

func header(t *testing.T, r *kgo.Record, key string) string {
	t.Helper()
	v, ok := kafkatest.HeaderValue(r, key)
	require.True(t, ok, "record has no header %q: %v", key, r.Headers)
	return v
}

func TestMessagesSingleRecord(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	status, body := ingesttest.Post(t, in.URL+"/topics/clicks/messages", "text/plain", "hello world",
		"X-Kafka-Key", "user-42",
		"X-Kafka-Partition", "1",
		"X-Kafka-Timestamp", "1700000000123",
		"X-Kafka-Header-Source", "web",
		"X-Kafka-Header-Trace", "abc")
	require.Equal(t, http.StatusOK, status, body)
	var res map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &res))
	assert.Equal(t, "delivered", res["outcome"])
	assert.Equal(t, "clicks", res["topic"])
	assert.EqualValues(t, 1, res["partition"])
	assert.EqualValues(t, 0, res["offset"])

	r := consumeOne(t, addr, "clicks")
	assert.Equal(t, "hello world", string(r.Value))
	assert.Equal(t, "user-42", string(r.Key))
	assert.EqualValues(t, 1, r.Partition)
	assert.Equal(t, time.UnixMilli(1700000000123), r.Timestamp)
	assert.Equal(t, "web", header(t, r, "source"))
	assert.Equal(t, "abc", header(t, r, "trace"))
}

func TestMessagesBinaryAndJSON(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	binary := "\x00\x01\xfe\xff"
	status, body := ingesttest.Post(t, in.URL+"/topics/bin/messages", "application/octet-stream", binary, "X-Kafka-Key-Base64", "AAE=")
	require.Equal(t, http.StatusOK, status, body)
	r := consumeOne(t, addr, "bin")
	assert.Equal(t, []byte(binary), r.Value)
	assert.Equal(t, []byte{0, 1}, r.Key)

	status, body = ingesttest.Post(t, in.URL+"/topics/js/messages", "application/json; charset=utf-8", `{"a": 1}`)
	require.Equal(t, http.StatusOK, status, body)
	r = consumeOne(t, addr, "js")
	assert.Equal(t, `{"a": 1}`, string(r.Value))
	assert.Nil(t, r.Key, "no X-Kafka-Key: the record has no key")
}

func TestMessagesNDJSON(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	status, body := ingesttest.Post(t, in.URL+"/topics/events/messages", "application/x-ndjson",
		"{\"n\":1}\n{\"n\":2}\r\n\n\"three\"\n", "X-Kafka-Partition", "2", "X-Kafka-Header-Batch", "b1")
	require.Equal(t, http.StatusOK, status, body)
	var res struct {
		Results []struct {
			Outcome   string
			Partition int32
			Offset    int64
		}
	}
	require.NoError(t, json.Unmarshal([]byte(body), &res))
	require.Len(t, res.Results, 3)
	for i, r := range res.Results {
		assert.Equal(t, "delivered", r.Outcome)
		assert.EqualValues(t, 2, r.Partition)
		assert.EqualValues(t, i, r.Offset)
	}
	got := kafkatest.Consume(t, addr, "events", 3, readTimeout)
	require.Len(t, got, 3)
	for i, want := range []string{`{"n":1}`, `{"n":2}`, `"three"`} {
		assert.Equal(t, want, string(got[i].Value), "in order")
		assert.Equal(t, "b1", header(t, got[i], "batch"))
	}
}

func TestConfluentV2JSON(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	status, body := ingesttest.Post(t, in.URL+"/topics/v2json", "application/vnd.kafka.json.v2+json",
		`{"records":[{"key":"k1","value":{"x": [1, 2]},"partition":0},{"value":null},{"key":{"id":7},"value":"plain"}]}`)
	require.Equal(t, http.StatusOK, status, body)
	var res struct {
		Offsets []struct {
			Partition *int32
			Offset    *int64
			ErrorCode *int `json:"error_code"`
			Error     *string
		}
		KeySchemaID   *int `json:"key_schema_id"`
		ValueSchemaID *int `json:"value_schema_id"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &res))
	require.Len(t, res.Offsets, 3)
	assert.Contains(t, body, `"key_schema_id":null`)
	for _, o := range res.Offsets {
		assert.NotNil(t, o.Partition)
		assert.NotNil(t, o.Offset)
		assert.Nil(t, o.ErrorCode)
		assert.Nil(t, o.Error)
	}
	assert.EqualValues(t, 0, *res.Offsets[0].Partition)

	got := kafkatest.Consume(t, addr, "v2json", 3, readTimeout)
	require.Len(t, got, 3)
	byKey := map[string]*kgo.Record{}
	for _, r := range got {
		byKey[string(r.Key)] = r
	}
	assert.Equal(t, `{"x":[1,2]}`, string(byKey[`"k1"`].Value))
	assert.EqualValues(t, 0, byKey[`"k1"`].Partition)
	assert.Nil(t, byKey[""].Value, "a null value is a tombstone")
	assert.Nil(t, byKey[""].Key)
	assert.Equal(t, `"plain"`, string(byKey[`{"id":7}`].Value))
}

func TestConfluentV2Binary(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	status, body := ingesttest.Post(t, in.URL+"/topics/v2bin", "application/vnd.kafka.binary.v2+json",
		`{"records":[{"key":"a2V5","value":"AP8="}]}`)
	require.Equal(t, http.StatusOK, status, body)
	r := consumeOne(t, addr, "v2bin")
	assert.Equal(t, "key", string(r.Key))
	assert.Equal(t, []byte{0, 0xff}, r.Value)
}

func TestConfluentV2PartialFailure(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(2, "two"))
	in := ingesttest.Start(t, addr)
	status, body := ingesttest.Post(t, in.URL+"/topics/two", "application/vnd.kafka.json.v2+json",
		`{"records":[{"value":1,"partition":1},{"value":2,"partition":9}]}`)
	require.Equal(t, http.StatusMultiStatus, status, body)
	var res struct {
		ErrorCode int `json:"error_code"`
		Offsets   []struct {
			Partition *int32
			ErrorCode *int `json:"error_code"`
			Error     *string
		}
	}
	require.NoError(t, json.Unmarshal([]byte(body), &res))
	require.Len(t, res.Offsets, 2)
	assert.Nil(t, res.Offsets[0].ErrorCode)
	require.NotNil(t, res.Offsets[1].ErrorCode)
	assert.Equal(t, 1, *res.Offsets[1].ErrorCode, "a missing partition is not retriable")
	assert.Contains(t, *res.Offsets[1].Error, "partition 9 does not exist: the topic has 2 partitions")
	assert.Equal(t, 40401, res.ErrorCode)

	got := kafkatest.Consume(t, addr, "two", 1, readTimeout)
	require.Len(t, got, 1)
	assert.Equal(t, "1", string(got[0].Value))
}

func TestConfluentV3Single(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	status, body := ingesttest.Post(t, in.URL+"/v3/clusters/local/topics/v3one/records", "application/json", `{
		"partition_id": 2,
		"headers": [{"name": "Content-Kind", "value": "Y2FydA=="}, {"name": "empty", "value": null}],
		"key": {"type": "BINARY", "data": "AAE="},
		"value": {"type": "JSON", "data": {"items": [1, 2]}},
		"timestamp": "2026-01-02T03:04:05.678Z"
	}`)
	require.Equal(t, http.StatusOK, status, body)
	var res map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &res))
	assert.EqualValues(t, 200, res["error_code"])
	assert.Equal(t, "local", res["cluster_id"])
	assert.Equal(t, "v3one", res["topic_name"])
	assert.EqualValues(t, 2, res["partition_id"])
	assert.EqualValues(t, 0, res["offset"])
	assert.Equal(t, map[string]any{"type": "BINARY", "size": 2.0}, res["key"])
	assert.Equal(t, map[string]any{"type": "JSON", "size": 15.0}, res["value"])

	r := consumeOne(t, addr, "v3one")
	assert.Equal(t, []byte{0, 1}, r.Key)
	assert.Equal(t, `{"items":[1,2]}`, string(r.Value))
	assert.EqualValues(t, 2, r.Partition)
	assert.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC), r.Timestamp.UTC())
	assert.Equal(t, "cart", header(t, r, "Content-Kind"), "v3 header names keep their case")
	assert.Equal(t, "", header(t, r, "empty"))

	status, body = ingesttest.Post(t, in.URL+"/v3/clusters/local/topics/v3str/records", "application/json",
		`{"key":{"type":"STRING","data":"user-1"},"value":{"type":"STRING","data":"héllo"}}`)
	require.Equal(t, http.StatusOK, status, body)
	r = consumeOne(t, addr, "v3str")
	assert.Equal(t, "user-1", string(r.Key))
	assert.Equal(t, "héllo", string(r.Value))
}

// TestConfluentV3Streaming writes records into a chunked request one at a
// time and reads each answer before sending the next: the answers must
// come while the request is still open, in order.
func TestConfluentV3Streaming(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, in.URL+"/v3/clusters/c1/topics/stream/records", pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	respCh := make(chan *http.Response, 1)
	errCh := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			errCh <- err
			return
		}
		respCh <- resp
	}()

	const n = 5
	_, err = fmt.Fprintf(pw, `{"partition_id":0,"value":{"type":"STRING","data":"r0"}}`)
	require.NoError(t, err)
	var resp *http.Response
	select {
	case resp = <-respCh:
	case err := <-errCh:
		t.Fatal(err)
	case <-time.After(readTimeout):
		t.Fatal("no response headers while the stream is open")
	}
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	for i := range n {
		if i > 0 {
			_, err = fmt.Fprintf(pw, `{"partition_id":0,"value":{"type":"STRING","data":"r%d"}}`, i)
			require.NoError(t, err)
		}
		var res struct {
			ErrorCode int   `json:"error_code"`
			Offset    int64 `json:"offset"`
		}
		require.NoError(t, dec.Decode(&res))
		assert.Equal(t, 200, res.ErrorCode)
		assert.EqualValues(t, i, res.Offset)
	}
	// A malformed record ends the stream with its error.
	_, err = fmt.Fprint(pw, `{"value": nope}`)
	require.NoError(t, err)
	var bad struct {
		ErrorCode int `json:"error_code"`
		Message   string
	}
	require.NoError(t, dec.Decode(&bad))
	assert.Equal(t, 400, bad.ErrorCode)
	assert.Contains(t, bad.Message, "malformed JSON")
	pw.Close()

	got := kafkatest.Consume(t, addr, "stream", n, readTimeout)
	require.Len(t, got, n)
	for i, r := range got {
		assert.Equal(t, fmt.Sprintf("r%d", i), string(r.Value))
	}
}

func TestConfluentV3ConcatenatedRecords(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	status, body := ingesttest.Post(t, in.URL+"/v3/clusters/c1/topics/cat/records", "application/json",
		`{"partition_id":1,"value":{"data":1}} {"partition_id":1,"value":{"data":2}}`)
	require.Equal(t, http.StatusOK, status, body)
	dec := json.NewDecoder(strings.NewReader(body))
	for i := range 2 {
		var res struct {
			ErrorCode int   `json:"error_code"`
			Offset    int64 `json:"offset"`
		}
		require.NoError(t, dec.Decode(&res))
		assert.Equal(t, 200, res.ErrorCode)
		assert.EqualValues(t, i, res.Offset)
	}
}

func TestListTopics(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "beta", "alpha"))
	in := ingesttest.Start(t, addr)
	resp, err := http.Get(in.URL + "/topics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var topics []string
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&topics))
	assert.Equal(t, []string{"alpha", "beta"}, topics)
}

func TestMetricsCountRecords(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_MESSAGE_MAX_BYTES=10")
	for range 3 {
		status, body := ingesttest.Post(t, in.URL+"/topics/m/messages", "text/plain", "12345")
		require.Equal(t, http.StatusOK, status, body)
	}
	status, _ := ingesttest.Post(t, in.URL+"/topics/m/messages", "text/plain", "way over ten bytes")
	require.Equal(t, http.StatusRequestEntityTooLarge, status)

	assert.Equal(t, 4.0, ingesttest.Metric(t, in.Monitor, `spillway_records_received_total{api="http",topic="m"}`))
	assert.Equal(t, 33.0, ingesttest.Metric(t, in.Monitor, `spillway_records_received_bytes_total{api="http",topic="m"}`))
	assert.Equal(t, 3.0, ingesttest.Metric(t, in.Monitor, `spillway_records_delivered_total{topic="m"}`))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="too_large",topic="m"}`))
	assert.Equal(t, 0.0, ingesttest.Metric(t, in.Monitor, `spillway_records_in_flight`))
	assert.Equal(t, 3.0, ingesttest.Metric(t, in.Monitor, `spillway_http_request_duration_seconds_count{code="200",route="/topics/:topic/messages"}`))
	assert.Equal(t, 3.0, ingesttest.Metric(t, in.Monitor, `spillway_kafka_produce_duration_seconds_count`), "the record over the limit never reaches the producer")
}

// silentBroker accepts connections and never answers: Kafka that does not
// answer in time.
func silentBroker(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln.Addr().String()
}

func TestBadInput(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "exists"))
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_HTTP_MAX_BODY_BYTES=1000", "SPILLWAY_KAFKA_MESSAGE_MAX_BYTES=100", "SPILLWAY_KAFKA_ALLOW_AUTO_CREATE_TOPICS=false")
	down, _ := kafkatest.NewCluster(t)
	downAddr := down.ListenAddrs()[0]
	down.Close()
	unavailable := ingesttest.Start(t, downAddr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=5000", "SPILLWAY_PRODUCER_WAL_MODE=disable")
	slow := ingesttest.Start(t, silentBroker(t), "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=300", "SPILLWAY_PRODUCER_WAL_MODE=disable")

	v2 := "application/vnd.kafka.json.v2+json"
	tests := []struct {
		name        string
		base        string
		method      string
		path        string
		contentType string
		body        string
		headers     []string
		status      int
		code        int
		message     string
	}{
		{"no content type", in.URL, "POST", "/topics/exists/messages", "", "x", nil, 415, 41501, "the request has no Content-Type"},
		{"form content type", in.URL, "POST", "/topics/exists/messages", "application/x-www-form-urlencoded", "x", nil, 415, 41501, `Content-Type "application/x-www-form-urlencoded" is not supported here; want text/plain`},
		{"v2 avro", in.URL, "POST", "/topics/exists", "application/vnd.kafka.avro.v2+json", "{}", nil, 415, 41501, "need a schema registry"},
		{"v3 text", in.URL, "POST", "/v3/clusters/c/topics/exists/records", "text/plain", "x", nil, 415, 41501, "want application/json"},
		{"invalid topic character", in.URL, "POST", "/topics/bad*topic/messages", "text/plain", "x", nil, 400, 40001, `invalid topic name "bad*topic": character '*' at byte 3`},
		{"topic too long", in.URL, "POST", "/topics/" + strings.Repeat("t", 250) + "/messages", "text/plain", "x", nil, 400, 40001, "250 characters, the limit is 249"},
		{"dot topic", in.URL, "POST", "/topics/../messages", "text/plain", "x", nil, 400, 40001, `invalid topic name "..": "." and ".." are not allowed`},
		{"json not json", in.URL, "POST", "/topics/exists/messages", "application/json", `{"a":`, nil, 400, 40001, "the body is not valid JSON"},
		{"ndjson bad line", in.URL, "POST", "/topics/exists/messages", "application/x-ndjson", "{}\n{oops}\n", nil, 400, 40001, "line 2 is not valid JSON"},
		{"ndjson empty", in.URL, "POST", "/topics/exists/messages", "application/x-ndjson", "\n\n", nil, 400, 40001, "the body holds no records"},
		{"bad partition header", in.URL, "POST", "/topics/exists/messages", "text/plain", "x", []string{"X-Kafka-Partition", "-1"}, 400, 40001, `X-Kafka-Partition: "-1" is not a partition`},
		{"bad timestamp header", in.URL, "POST", "/topics/exists/messages", "text/plain", "x", []string{"X-Kafka-Timestamp", "yesterday"}, 400, 40001, `X-Kafka-Timestamp: "yesterday" is not a timestamp`},
		{"bad key base64", in.URL, "POST", "/topics/exists/messages", "text/plain", "x", []string{"X-Kafka-Key-Base64", "!!"}, 400, 40001, "X-Kafka-Key-Base64 is not valid base64"},
		{"v2 malformed", in.URL, "POST", "/topics/exists", v2, `{"records": [`, nil, 400, 40001, "the body ends in the middle of a JSON value"},
		{"v2 syntax", in.URL, "POST", "/topics/exists", v2, `{"records": [}`, nil, 400, 40001, "malformed JSON at byte 14"},
		{"v2 unknown field", in.URL, "POST", "/topics/exists", v2, `{"records": [{"valu": 1}]}`, nil, 400, 40001, `unknown field "valu"`},
		{"v2 wrong type", in.URL, "POST", "/topics/exists", v2, `{"records": {}}`, nil, 400, 40001, "records: want an array of records, got an object"},
		{"v2 bad base64", in.URL, "POST", "/topics/exists", "application/vnd.kafka.binary.v2+json", `{"records": [{"value": "%%%"}]}`, nil, 400, 40001, "records[0].value: not valid base64"},
		{"v2 no records", in.URL, "POST", "/topics/exists", v2, `{"records": []}`, nil, 400, 40001, "the body holds no records"},
		{"v2 schema", in.URL, "POST", "/topics/exists", v2, `{"value_schema_id": 3, "records": [{"value": 1}]}`, nil, 400, 40001, "schemas are not supported"},
		{"v3 unknown type", in.URL, "POST", "/v3/clusters/c/topics/exists/records", "application/json", `{"value":{"type":"AVRO","data":1}}`, nil, 400, 40001, `value: type "AVRO" is not supported`},
		{"v3 bad timestamp", in.URL, "POST", "/v3/clusters/c/topics/exists/records", "application/json", `{"value":{"data":1},"timestamp":"noon"}`, nil, 400, 40001, `timestamp: "noon" is not an RFC 3339 time`},
		{"v3 empty", in.URL, "POST", "/v3/clusters/c/topics/exists/records", "application/json", ``, nil, 400, 40001, "the body holds no record"},
		{"v3 second record bad", in.URL, "POST", "/v3/clusters/c/topics/exists/records", "application/json", `{"value":{"data":1}} {"value":{"type":"BINARY","data":"%"}}`, nil, 400, 40001, "record 1: value: data is not valid base64"},
		{"unknown topic", in.URL, "POST", "/topics/missing/messages", "text/plain", "x", nil, 404, 40401, "the topic does not exist and is not created automatically"},
		{"unknown route", in.URL, "POST", "/nowhere", "text/plain", "x", nil, 404, 40400, "no such route: POST /nowhere"},
		{"wrong method", in.URL, "GET", "/topics/exists/messages", "", "", nil, 405, 40500, "method GET is not allowed"},
		{"body over limit", in.URL, "POST", "/topics/exists/messages", "text/plain", strings.Repeat("x", 1001), nil, 413, 41302, "the body is over the limit of 1000 bytes (server.http.max_body_bytes)"},
		{"record over limit", in.URL, "POST", "/topics/exists/messages", "text/plain", strings.Repeat("x", 101), nil, 413, 41301, "record of 101 bytes is over the limit of 100 bytes"},
		{"kafka down", unavailable.URL, "POST", "/topics/any/messages", "text/plain", "x", nil, 503, 50301, "Kafka cannot take the record now"},
		{"kafka silent", slow.URL, "POST", "/topics/any/messages", "text/plain", "x", nil, 504, 50401, "Kafka did not acknowledge the record in time"},
		{"topics while kafka down", unavailable.URL, "GET", "/topics", "", "", nil, 503, 50302, "cannot list topics"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.base+tt.path, strings.NewReader(tt.body))
			require.NoError(t, err)
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			for i := 0; i+1 < len(tt.headers); i += 2 {
				req.Header.Set(tt.headers[i], tt.headers[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			assert.Equal(t, tt.status, resp.StatusCode, string(b))
			var e struct {
				ErrorCode int    `json:"error_code"`
				Message   string `json:"message"`
			}
			require.NoError(t, json.Unmarshal(b, &e), string(b))
			assert.Equal(t, tt.code, e.ErrorCode, string(b))
			assert.Contains(t, e.Message, tt.message)
		})
	}
	_, err := http.Get(in.URL + "/topics")
	require.NoError(t, err, "the ingest still answers after every bad request")
	assert.Regexp(t, `"msg":"http request".*"trace_id":"[0-9a-f]{32}","span_id":"[0-9a-f]{16}"`, in.LogText(), "request logs carry the trace")
}

// TestOverloadIsRefusedWithRetryAfter: with records in flight at the
// bound, a new request is refused with 503 and Retry-After instead of
// growing memory; the ones in flight are still delivered.
func TestOverloadIsRefusedWithRetryAfter(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_MAX_IN_FLIGHT_RECORDS=2", "SPILLWAY_PRODUCER_WAL_MODE=disable")
	status, body := ingesttest.Post(t, in.URL+"/topics/busy/messages", "text/plain", "warm-up")
	require.Equal(t, http.StatusOK, status, body)

	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		<-release
		return nil, nil, false
	})
	done := make(chan int, 2)
	for range 2 {
		go func() {
			s, _ := ingesttest.Post(t, in.URL+"/topics/busy/messages", "text/plain", "slow")
			done <- s
		}()
	}
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight") == 2
	}, 5*time.Second, 10*time.Millisecond)

	req, _ := http.NewRequest(http.MethodPost, in.URL+"/topics/busy/messages", strings.NewReader("one too many"))
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, string(b))
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	assert.Contains(t, string(b), `"error_code":50303`)
	assert.Contains(t, string(b), "records in flight (server.max_in_flight_records)")
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="overloaded",topic="busy"}`))

	close(release)
	for range 2 {
		assert.Equal(t, http.StatusOK, <-done)
	}
}

// TestPerClientMetrics: after a known load from two clients, the
// per-client metrics answer "who writes to this topic, at what byte rate"
// and "who runs library version X".
func TestPerClientMetrics(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	for range 3 {
		status, body := ingesttest.Post(t, in.URL+"/topics/orders/messages", "text/plain", "12345", "X-Client-Id", "billing", "User-Agent", "acme-sdk/2.1.0 (linux)")
		require.Equal(t, http.StatusOK, status, body)
	}
	status, body := ingesttest.Post(t, in.URL+"/topics/orders/messages", "application/x-ndjson", "1\n2\n", "User-Agent", "curl/8.5.0")
	require.Equal(t, http.StatusOK, status, body)

	m := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	assert.Equal(t, 3.0, m(`spillway_client_records_total{outcome="delivered",principal="billing",topic="orders"}`))
	assert.Equal(t, 15.0, m(`spillway_client_bytes_total{principal="billing",topic="orders"}`))
	assert.Equal(t, 3.0, m(`spillway_client_requests_total{library="acme-sdk",principal="billing",version="2.1.0"}`))
	assert.Equal(t, 2.0, m(`spillway_client_records_total{outcome="delivered",principal="anonymous",topic="orders"}`))
	assert.Equal(t, 1.0, m(`spillway_client_requests_total{library="curl",principal="anonymous",version="8.5.0"}`))
}
