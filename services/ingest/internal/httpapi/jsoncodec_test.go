package httpapi

import (
	stdjson "encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	fastjson "github.com/segmentio/encoding/json"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
)

// The answers of POST /topics/{topic}/messages as structs: what
// encoding/json gives for them is what appendResult and appendBatch must
// write.
// resultBody is one record's outcome on POST /topics/{topic}/messages.
type resultBody struct {
	ID        string     `json:"id,omitempty"`
	Outcome   string     `json:"outcome"`
	Topic     string     `json:"topic"`
	Partition *int32     `json:"partition,omitempty"`
	Offset    *int64     `json:"offset,omitempty"`
	Timestamp *time.Time `json:"timestamp,omitempty"`
	ErrorCode int        `json:"error_code,omitempty"`
	Message   string     `json:"message,omitempty"`
}

func newResultBody(r record.Result) resultBody {
	b := resultBody{ID: r.ID, Outcome: r.Outcome.String(), Topic: r.Topic}
	switch r.Outcome {
	case record.Delivered:
		b.Partition, b.Offset = &r.Partition, &r.Offset
		if !r.Timestamp.IsZero() {
			ts := r.Timestamp.UTC()
			b.Timestamp = &ts
		}
	case record.Failed:
		he := fromError(r.Err)
		b.ErrorCode, b.Message = he.body.ErrorCode, he.body.Message
	}
	return b
}

// batchBody answers a batch: a result per record and, when not every
// record made it, the first failure at the top.
type batchBody struct {
	ErrorCode int          `json:"error_code,omitempty"`
	Message   string       `json:"message,omitempty"`
	Results   []resultBody `json:"results"`
}

// TestResultJSONMatchesEncodingJSON: the answers written field by field
// are the bytes encoding/json (and segmentio/encoding, echo's serializer
// here before) gives for every outcome, with strings that need escaping.
func TestResultJSONMatchesEncodingJSON(t *testing.T) {
	ts := time.Date(2026, 11, 30, 8, 1, 2, 345678900, time.FixedZone("x", 3600))
	results := []record.Result{
		{ID: "01JQ8ZQ3K4M5N6P7Q8R9S0T1V2", Outcome: record.Delivered, Topic: "orders", Partition: 2, Offset: 1234567890123, Timestamp: ts},
		{ID: "01JQ8ZQ3K4M5N6P7Q8R9S0T1V3", Outcome: record.Delivered, Topic: "orders"},
		{Outcome: record.Delivered, Topic: "t", Partition: -1, Offset: -1, Timestamp: time.Unix(0, 0)},
		{ID: "id", Outcome: record.Buffered, Topic: "orders"},
		{ID: "a\"b\\c<d>&e\x01\x7f\u00e9", Outcome: record.Buffered, Topic: "\u2028"},
		record.Fail("orders", record.Errorf(record.ReasonRejected, `value <"quoted"> & \ escaped`+"\n\u2028 \xff")),
		record.Fail("orders", record.Errorf(record.ReasonTooLarge, "too large")),
		record.Fail("orders", errors.New("plain")),
	}
	for i, r := range results {
		body := newResultBody(r)
		want, err := stdjson.Marshal(body)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(appendResult(nil, &r, &lastTime{})), "result %d", i)
		fast, err := fastjson.Marshal(body)
		require.NoError(t, err)
		assert.Equal(t, string(fast), string(appendResult(nil, &r, &lastTime{})), "result %d against segmentio/encoding", i)
	}
	for _, tc := range []struct {
		results []record.Result
		first   *httpError
	}{
		{results: results},
		{results: results[:2], first: newHTTPError(503, 50301, "Kafka & the buffer <failed>")},
		{results: results[5:6], first: fromError(results[5].Err)},
		{results: []record.Result{}},
		{results: sharedTimes(ts)},
	} {
		b := batchBody{Results: make([]resultBody, len(tc.results))}
		for i, r := range tc.results {
			b.Results[i] = newResultBody(r)
		}
		if tc.first != nil {
			b.ErrorCode, b.Message = tc.first.body.ErrorCode, tc.first.body.Message
		}
		want, err := stdjson.Marshal(b)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(appendBatch(nil, tc.results, tc.first)))
	}
}

// sharedTimes are delivered results whose timestamps repeat, change,
// come back, and repeat as the same instant in another zone: the answer
// formats a timestamp once and copies it while the instant repeats.
func sharedTimes(ts time.Time) []record.Result {
	var out []record.Result
	for i, t := range []time.Time{ts, ts, ts.Add(time.Nanosecond), ts, ts.In(time.UTC), ts.Add(time.Hour), {}, ts} {
		out = append(out, record.Result{ID: fmt.Sprint(i), Outcome: record.Delivered, Topic: "t", Offset: int64(i), Timestamp: t})
	}
	return out
}

// TestStringJSONEachByte: appendString writes a string holding any one
// byte as encoding/json does, escaped or not.
func TestStringJSONEachByte(t *testing.T) {
	for c := range 256 {
		s := "id-" + string([]byte{byte(c)}) + "-1"
		want, err := stdjson.Marshal(s)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(appendString(nil, s)), "byte %#x", c)
	}
}

// TestValidJSONNesting: nesting is bounded as encoding/json bounds it
// (10,000 levels), and a body of millions of brackets is refused, not
// recursed into until the stack runs out.
func TestValidJSONNesting(t *testing.T) {
	nested := func(n int) []byte {
		return []byte(strings.Repeat("[", n) + strings.Repeat("]", n))
	}
	for _, n := range []int{1, 10000, 10001} {
		assert.Equal(t, stdjson.Valid(nested(n)), validJSON(nested(n)), "%d levels", n)
	}
	assert.True(t, validJSON(nested(10000)))
	assert.False(t, validJSON([]byte(strings.Repeat("[", 4<<20))))
	assert.False(t, validJSON([]byte(`{"a":"`+"\x01"+`"}`)), "a raw control character in a string")
	assert.True(t, validJSON([]byte(`{"a":"[[[{{{\"}"}`)), "brackets in a string do not nest")
	assert.False(t, validJSON([]byte("\"a\tb\"")), "a raw tab in a string")
	assert.True(t, validJSON([]byte(`["\\", "\"]"]`)), "an escaped backslash, then an escaped quote")
	assert.False(t, validJSON([]byte(`"\`)), "an escape at the end")
	assert.False(t, validJSON([]byte("\"\x02\\b\"")), "a control character in a string with an escape (fastjson lets it stand)")
}

// BenchmarkValidJSON: loadgen's NDJSON record (a 256-byte JSON string) and
// an event object.
func BenchmarkValidJSON(b *testing.B) {
	for name, v := range map[string][]byte{
		"string": []byte(`"` + strings.Repeat("0123456789abcdef", 16) + `"`),
		"object": []byte(`{"user":"u-1234567","event":"page_view","path":"/products/42?ref=mail","ts":1764892800123,"tags":["a","b","c"],"props":{"referrer":"https://example.com/\"x\"","screen":[1920,1080]}}`),
	} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(v)))
			for b.Loop() {
				if !validJSON(v) {
					b.Fatal("refused")
				}
			}
		})
	}
}

// BenchmarkAppendBatch writes the answer to a batch of 500 delivered
// records, as a client of POST /messages gets it.
func BenchmarkAppendBatch(b *testing.B) {
	ts := time.Date(2026, 11, 30, 8, 1, 2, 345678900, time.UTC)
	results := make([]record.Result, 500)
	for i := range results {
		results[i] = record.Result{ID: "01JQ8ZQ3K4M5N6P7Q8R9S0T1V2", Outcome: record.Delivered, Topic: "bench-topic", Partition: int32(i % 8), Offset: 1234567 + int64(i), Timestamp: ts}
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = append(appendBatch(make([]byte, 0, batchAnswerSize(len(results))), results, nil), '\n')
	}
}
