package httpapi

import (
	stdjson "encoding/json"
	"errors"
	"testing"
	"time"

	fastjson "github.com/segmentio/encoding/json"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
)

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
	var all []resultBody
	for i, r := range results {
		body := newResultBody(r)
		all = append(all, body)
		want, err := stdjson.Marshal(body)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(body.appendJSON(nil)), "result %d", i)
		fast, err := fastjson.Marshal(body)
		require.NoError(t, err)
		assert.Equal(t, string(fast), string(body.appendJSON(nil)), "result %d against segmentio/encoding", i)
	}
	for _, b := range []batchBody{
		{Results: all},
		{ErrorCode: 50301, Message: "Kafka & the buffer <failed>", Results: all[:2]},
		{Results: []resultBody{}},
		{},
	} {
		want, err := stdjson.Marshal(b)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(b.appendJSON(nil)))
	}
}
