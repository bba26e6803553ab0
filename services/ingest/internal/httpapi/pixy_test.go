package httpapi_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// pixyAnswer is kafka-pixy's produce answer, with Spillway's id and
// outcome, or an error.
type pixyAnswer struct {
	ID        string `json:"id"`
	Outcome   string `json:"outcome"`
	Topic     string `json:"topic"` // only in Spillway's own answer
	Partition *int32 `json:"partition"`
	Offset    *int64 `json:"offset"`
	ErrorCode int    `json:"error_code"`
	Message   string `json:"message"`
}

func postPixy(t *testing.T, url, contentType, body string, headers ...string) (int, pixyAnswer) {
	t.Helper()
	status, text := ingesttest.Post(t, url, contentType, body, headers...)
	var a pixyAnswer
	require.NoError(t, json.Unmarshal([]byte(text), &a), text)
	return status, a
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// murmur2 is the Java client's hash of a key, which picks its partition.
func murmur2(data []byte) uint32 {
	const m, r = 0x5bd1e995, 24
	h := uint32(0x9747b28c) ^ uint32(len(data))
	for len(data) >= 4 {
		k := uint32(data[0]) | uint32(data[1])<<8 | uint32(data[2])<<16 | uint32(data[3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h = h*m ^ k
		data = data[4:]
	}
	switch len(data) {
	case 3:
		h ^= uint32(data[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// TestPixyProduce posts as kafka-pixy's producers do, on both of its
// routes, and reads each record back from Kafka.
func TestPixyProduce(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(3, "pixy"))
	in := ingesttest.Start(t, addr)

	t.Run("form body, key, sync, base64 headers", func(t *testing.T) {
		status, a := postPixy(t, in.URL+"/topics/pixy/messages?key=k1&sync", "application/x-www-form-urlencoded", "msg=Good+news+everyone%21",
			"X-Kafka-Trace-Id", b64("t-1"), "X-Kafka-Bin", base64.StdEncoding.EncodeToString([]byte{0, 0xff}))
		require.Equal(t, http.StatusOK, status, a)
		assert.Equal(t, "delivered", a.Outcome)
		require.NotNil(t, a.Partition)
		require.NotNil(t, a.Offset)
		assert.Equal(t, int32(murmur2([]byte("k1"))&0x7fffffff%3), *a.Partition, "the key's murmur2 hash picks the partition")
		got := kafkatest.Consume(t, addr, "pixy", 1, readTimeout)
		require.Len(t, got, 1)
		r := got[0]
		assert.Equal(t, "k1", string(r.Key))
		assert.Equal(t, "Good news everyone!", string(r.Value))
		assert.Equal(t, *a.Partition, r.Partition)
		assert.Equal(t, *a.Offset, r.Offset)
		assert.Equal(t, "t-1", header(t, r, "Trace-Id"))
		assert.Equal(t, "\x00\xff", header(t, r, "Bin"))
		assert.Equal(t, a.ID, header(t, r, "spillway-id"))
	})

	t.Run("text body, async: answered after Kafka all the same", func(t *testing.T) {
		status, a := postPixy(t, in.URL+"/topics/pixy-async/messages?key=k2", "text/plain", "async")
		require.Equal(t, http.StatusOK, status, a)
		require.NotNil(t, a.Partition)
		require.NotNil(t, a.Offset)
		r := consumeOne(t, addr, "pixy-async")
		assert.Equal(t, "k2", string(r.Key))
		assert.Equal(t, "async", string(r.Value))
		assert.Equal(t, *a.Offset, r.Offset)
	})

	t.Run("cluster route: every X-Kafka-{Name} is a header", func(t *testing.T) {
		status, a := postPixy(t, in.URL+"/clusters/default/topics/pixy-cluster/messages?key=k3", "application/json", `{"a":1}`,
			"X-Kafka-Key", b64("not the key"))
		require.Equal(t, http.StatusOK, status, a)
		r := consumeOne(t, addr, "pixy-cluster")
		assert.Equal(t, "k3", string(r.Key))
		assert.Equal(t, `{"a":1}`, string(r.Value))
		assert.Equal(t, "not the key", header(t, r, "Key"))
	})

	t.Run("empty key: one fixed partition; no key: none", func(t *testing.T) {
		status, a := postPixy(t, in.URL+"/topics/pixy-empty/messages?key=&sync", "text/plain", "empty")
		require.Equal(t, http.StatusOK, status, a)
		assert.Equal(t, int32(murmur2(nil)&0x7fffffff%3), *a.Partition)
		status, a = postPixy(t, in.URL+"/topics/pixy-empty/messages?sync", "text/plain", "none")
		require.Equal(t, http.StatusOK, status, a)
		got := kafkatest.Consume(t, addr, "pixy-empty", 2, readTimeout)
		require.Len(t, got, 2)
		for _, r := range got {
			switch string(r.Value) {
			case "empty":
				assert.NotNil(t, r.Key, "key= is an empty key")
				assert.Empty(t, r.Key)
			case "none":
				assert.Nil(t, r.Key, "no key parameter: a null key")
			}
		}
	})

	// On the shared route an X-Kafka-Header-* header means Spillway's
	// scheme: key and sync are not read, X-Kafka-Key is the key.
	t.Run("shared route, Spillway's scheme", func(t *testing.T) {
		status, a := postPixy(t, in.URL+"/topics/pixy-own/messages?key=ignored&sync", "text/plain", "own",
			"X-Kafka-Header-Via", "spillway", "X-Kafka-Key", "own-key", "X-Kafka-Trace", b64("pixy's"))
		require.Equal(t, http.StatusOK, status, a)
		assert.Equal(t, "pixy-own", a.Topic, "Spillway's answer")
		r := consumeOne(t, addr, "pixy-own")
		assert.Equal(t, "own-key", string(r.Key))
		assert.Equal(t, "spillway", header(t, r, "via"))
		_, ok := kafkatest.HeaderValue(r, "Trace")
		assert.False(t, ok, "X-Kafka-Trace is not a header in Spillway's scheme: %v", r.Headers)
	})

	t.Run("shared route, pixy's scheme keeps X-Kafka-Key", func(t *testing.T) {
		status, a := postPixy(t, in.URL+"/topics/pixy-mixed/messages?sync", "text/plain", "mixed",
			"X-Kafka-Key", "header-key", "X-Kafka-Via", b64("pixy"))
		require.Equal(t, http.StatusOK, status, a)
		assert.Empty(t, a.Topic, "pixy's answer")
		r := consumeOne(t, addr, "pixy-mixed")
		assert.Equal(t, "header-key", string(r.Key))
		assert.Equal(t, "pixy", header(t, r, "Via"))
	})

	errs := []struct {
		name, url, contentType, body string
		headers                      []string
		status, code                 int
		message                      string
	}{
		{"invalid base64", "/topics/pixy/messages?sync", "text/plain", "x", []string{"X-Kafka-Trace", "not base64!"}, 400, 40001,
			"header X-Kafka-Trace is not valid base64"},
		{"unknown cluster", "/clusters/eu/topics/pixy/messages", "text/plain", "x", nil, 404, 40402,
			`cluster "eu" is not known here: Spillway produces to one Kafka cluster, called "default"`},
		{"form without msg", "/topics/pixy/messages?sync", "application/x-www-form-urlencoded", "key=k", nil, 400, 40001,
			"the form body has no msg field"},
		{"form without msg, sync or key: Spillway's", "/topics/pixy/messages", "application/x-www-form-urlencoded", "x", nil, 415, 41501,
			`Content-Type "application/x-www-form-urlencoded" is not supported here`},
		{"key twice", "/topics/pixy/messages?key=a", "text/plain", "x", []string{"X-Kafka-Key", "b"}, 400, 40001,
			"give the key in the key parameter or in X-Kafka-Key, not both"},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			status, a := postPixy(t, in.URL+tt.url, tt.contentType, tt.body, tt.headers...)
			assert.Equal(t, tt.status, status, a)
			assert.Equal(t, tt.code, a.ErrorCode)
			assert.Contains(t, a.Message, tt.message)
		})
	}
	assert.Len(t, kafkatest.Consume(t, addr, "pixy", 1, readTimeout), 1, "no refused request reached Kafka")
}

// TestPixyBuffered: with Kafka gone, a pixy request (sync or not) is
// answered 202 with the record's id and no partition or offset.
func TestPixyBuffered(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	c.Close()
	in := ingesttest.Start(t, addr, "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000")
	for _, url := range []string{"/topics/down/messages?key=k&sync", "/clusters/default/topics/down/messages"} {
		status, text := ingesttest.Post(t, in.URL+url, "text/plain", "later", "X-Kafka-Via", b64("pixy"))
		require.Equal(t, http.StatusAccepted, status, text)
		var a map[string]any
		require.NoError(t, json.Unmarshal([]byte(text), &a))
		assert.Equal(t, "buffered", a["outcome"], text)
		assert.NotEmpty(t, a["id"], text)
		assert.NotContains(t, a, "partition", text)
		assert.NotContains(t, a, "offset", text)
	}
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_records_buffered_total{reason="unavailable",topic="down"}`))
}
