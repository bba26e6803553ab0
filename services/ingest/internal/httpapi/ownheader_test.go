package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestClientsCannotSetSpillwayID: a client that forges the spillway-id
// header could make consumers that de-duplicate on it drop another
// client's record. Every way a client names a header is refused with 400,
// and nothing of the request reaches Kafka.
func TestClientsCannotSetSpillwayID(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "forged", "honest"))
	in := ingesttest.Start(t, addr)
	const want = `the record header "%s" is Spillway's own (the record's id, set by Spillway): a client may not set it`

	for _, tt := range []struct {
		name, path, contentType, body string
		headers                       []string
		header                        string // as the client spelled it
	}{
		{"ambassador header", "/topics/forged/messages", "text/plain", "x", []string{"X-Kafka-Header-Spillway-Id", "01VICTIM"}, "spillway-id"},
		{"ndjson header", "/topics/forged/messages", "application/x-ndjson", "1\n2\n", []string{"X-Kafka-Header-SPILLWAY-ID", "01VICTIM"}, "spillway-id"},
		{"v3 header", "/v3/clusters/c/topics/forged/records", "application/json", `{"headers":[{"name":"Spillway-Id","value":"MDFWSUNUSU0="}],"value":{"data":1}}`, nil, "Spillway-Id"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body := ingesttest.Post(t, in.URL+tt.path, tt.contentType, tt.body, tt.headers...)
			require.Equal(t, http.StatusBadRequest, status, body)
			var e struct {
				ErrorCode int    `json:"error_code"`
				Message   string `json:"message"`
			}
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			assert.Contains(t, e.Message, fmt.Sprintf(want, tt.header))
		})
	}

	// A record of another client on the same topic goes through, and is
	// the only one Kafka holds.
	status, body := ingesttest.Post(t, in.URL+"/topics/forged/messages", "text/plain", "real", "X-Kafka-Header-Source", "web")
	require.Equal(t, http.StatusOK, status, body)
	got := kafkatest.Consume(t, addr, "forged", 1, readTimeout)
	require.Len(t, got, 1)
	assert.Equal(t, "real", string(got[0].Value))
	ids := 0
	for _, h := range got[0].Headers {
		if h.Key == "spillway-id" {
			ids++
		}
	}
	assert.Equal(t, 1, ids, "exactly one spillway-id, Spillway's: %v", got[0].Headers)
}
