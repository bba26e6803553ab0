package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spillway/spillway/pkg/record"
)

// lastSender is a Sender that delivers every record at once and keeps
// the last call's records.
type lastSender struct {
	mu   sync.Mutex
	recs []record.Record
}

func (s *lastSender) Send(_ context.Context, _ string, recs []record.Record) []record.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = recs
	out := make([]record.Result, len(recs))
	for i, r := range recs {
		out[i] = record.Result{ID: "id", Outcome: record.Delivered, Topic: r.Topic, Partition: 0, Offset: int64(i)}
	}
	return out
}

func (s *lastSender) Refuse(context.Context, string, string, int, record.Reason) {}

func (s *lastSender) take() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.recs
	s.recs = nil
	return r
}

// FuzzPixyRequest sends kafka-pixy requests made of fuzzed parts: the
// answer is a 200 or a 4xx with a message, never a 5xx or a panic, and a
// delivered record carries the key parameter and the decoded X-Kafka-
// header that the request gave.
func FuzzPixyRequest(f *testing.F) {
	f.Add(false, "key=k&sync", "text/plain", "Trace-Id", "dC0x", []byte("body"))
	f.Add(true, "key=", "application/x-www-form-urlencoded", "Key", "YQ==", []byte("msg=hello"))
	f.Add(false, "sync", "application/json", "Header-X", "plain", []byte(`{"a":1}`))
	f.Add(true, "", "", "Bin", "not base64!", []byte{0, 1, 2})
	f.Add(false, "key=%zz", "application/x-www-form-urlencoded", "Partition", "1", []byte("msg=%"))
	sender := &lastSender{}
	h := New(Options{Sender: sender, MaxBodyBytes: 1 << 16, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), LatencyBuckets: prometheus.DefBuckets})
	f.Fuzz(func(t *testing.T, cluster bool, query, contentType, name, value string, body []byte) {
		path := "/topics/t/messages"
		if cluster {
			path = "/clusters/default/topics/t/messages"
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.URL.RawQuery = query
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		header := http.CanonicalHeaderKey(pixyHeaderPrefix + name)
		if !validHeader(header, value) {
			return
		}
		req.Header.Set(header, value)
		var form url.Values
		if isForm(req) {
			form, _ = url.ParseQuery(string(body))
		}
		pixy := cluster || isPixy(req, form)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		recs := sender.take()

		if w.Code >= 500 {
			t.Fatalf("%s?%s: %d %s", path, query, w.Code, w.Body)
		}
		if w.Code != http.StatusOK {
			var e errorBody
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Message == "" {
				t.Fatalf("%d without an error message: %s", w.Code, w.Body)
			}
			return
		}
		if !pixy {
			return
		}
		if len(recs) != 1 {
			t.Fatalf("200 with %d records sent", len(recs))
		}
		rec := recs[0]
		q, _ := url.ParseQuery(query)
		if q.Has("key") && string(rec.Key) != q.Get("key") {
			t.Fatalf("key %q, the parameter says %q", rec.Key, q.Get("key"))
		}
		reserved := !cluster && (header == HeaderKey || header == HeaderKeyBase64 || header == HeaderPartition || header == HeaderTimestamp)
		if len(header) == len(pixyHeaderPrefix) || reserved {
			return
		}
		want, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			t.Fatalf("%s: %q is not base64, yet answered 200", header, value)
		}
		for _, hd := range rec.Headers {
			if hd.Key == header[len(pixyHeaderPrefix):] && bytes.Equal(hd.Value, want) {
				return
			}
		}
		t.Fatalf("header %s: %q not in the record's headers %v", header, want, rec.Headers)
	})
}

// validHeader says whether net/http would send the header as it is.
func validHeader(name, value string) bool {
	if name == "" || strings.ContainsAny(name, " \t\r\n:()<>@,;\\\"/[]?={}") || strings.ContainsAny(value, "\r\n\x00") {
		return false
	}
	for _, c := range name + value {
		if c > 0x7e || (c < 0x20 && c != '\t') {
			return false
		}
	}
	return true
}
