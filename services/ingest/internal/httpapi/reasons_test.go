package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// failSender fails every record with one reason.
type failSender struct{ reason record.Reason }

func (s failSender) Send(_ context.Context, _ string, recs []record.Record) []record.Result {
	out := make([]record.Result, len(recs))
	for i, r := range recs {
		out[i] = record.Fail(r.Topic, record.Errorf(s.reason, "failed for %s", s.reason))
	}
	return out
}

func (failSender) Refuse(context.Context, string, string, int, record.Reason) {}

// TestEveryReasonMapped checks that every failure reason has a row of its
// own in reasonAnswers, and that each HTTP API answers a record failed for
// it with that row's status and error code (and Confluent v2 the record
// with the row's v2 error_code).
func TestEveryReasonMapped(t *testing.T) {
	codes := map[int]record.Reason{}
	for reason, a := range reasonAnswers {
		if !slices.Contains(record.Reasons(), reason) {
			t.Errorf("reasonAnswers has a row for %q, which is not in record.Reasons()", reason)
		}
		if a.code/100 != a.status {
			t.Errorf("%s: error code %d is not its status %d times 100 plus a number", reason, a.code, a.status)
		}
		if comeBack := a.status == http.StatusTooManyRequests || a.status >= 500; comeBack != (a.v2 == v2Retriable) {
			t.Errorf("%s: status %d with Confluent v2 error_code %d: a 429 or 5xx says retry, so it is %d exactly then (else %d)",
				reason, a.status, a.v2, v2Retriable, v2Fatal)
		}
		clientsFault := reason.InRecord() || reason == record.ReasonUnauthenticated || reason == record.ReasonForbidden
		switch {
		case reason.Retriable() && a.v2 != v2Retriable:
			t.Errorf("%s: %d %d says do not retry, but the failure is Kafka's and may pass", reason, a.status, a.code)
		case clientsFault && a.v2 != v2Fatal:
			t.Errorf("%s: %d %d tells the client to retry a request that will fail again", reason, a.status, a.code)
		}
		if other, ok := codes[a.code]; ok {
			t.Errorf("%s and %s share error code %d: a program cannot tell them apart", reason, other, a.code)
		}
		codes[a.code] = reason
	}

	routes := []struct {
		name, path, contentType, body string
		v2                            bool // the answer has Confluent v2's offsets
		v3                            bool // Confluent v3: the error_code is the status
	}{
		{name: "kafka-ambassador and Spillway", path: "/topics/t/messages", contentType: "text/plain", body: "v"},
		{name: "kafka-pixy", path: "/clusters/default/topics/t/messages", contentType: "text/plain", body: "v"},
		{name: "Confluent v2", path: "/topics/t", contentType: "application/vnd.kafka.binary.v2+json", body: `{"records":[{"value":"dg=="}]}`, v2: true},
		{name: "Confluent v3", path: "/v3/clusters/c/topics/t/records", contentType: "application/json", body: `{"value":{"type":"STRING","data":"v"}}`, v3: true},
	}
	for _, reason := range record.Reasons() {
		t.Run(string(reason), func(t *testing.T) {
			want, ok := reasonAnswers[reason]
			if !ok {
				t.Fatalf("reason %q has no row in reasonAnswers (errors.go): give it an HTTP status and error code", reason)
			}
			h := New(Options{Sender: failSender{reason}, MaxBodyBytes: 1 << 16, Registry: prometheus.NewRegistry(),
				Logger: slog.New(slog.DiscardHandler), LatencyBuckets: prometheus.DefBuckets})
			for _, rt := range routes {
				req := httptest.NewRequest(http.MethodPost, rt.path, strings.NewReader(rt.body))
				req.Header.Set("Content-Type", rt.contentType)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				var got struct {
					errorBody
					Offsets []struct {
						ErrorCode *int `json:"error_code"`
					} `json:"offsets"`
				}
				if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
					t.Fatalf("%s: %v: %s", rt.name, err, w.Body)
				}
				wantCode := want.code
				if rt.v3 {
					wantCode = want.status
				}
				if w.Code != want.status || got.ErrorCode != wantCode {
					t.Errorf("%s: answered %d %d; want %d %d (%s)", rt.name, w.Code, got.ErrorCode, want.status, wantCode, w.Body)
				}
				if rt.v2 && (len(got.Offsets) != 1 || got.Offsets[0].ErrorCode == nil || *got.Offsets[0].ErrorCode != want.v2) {
					t.Errorf("%s: the record's error_code in %s; want %d", rt.name, w.Body, want.v2)
				}
			}
		})
	}
}

// TestUnauthenticatedAnswersAsSignIn checks that the unauthenticated row
// is what a request without credentials is answered.
func TestUnauthenticatedAnswersAsSignIn(t *testing.T) {
	auth, err := identity.NewAuthenticator(t.Context(), config.Security{RequireCredentials: true}, config.ServerTLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h := New(Options{Sender: failSender{record.ReasonUnavailable}, Auth: auth, MaxBodyBytes: 1 << 16, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.DiscardHandler), LatencyBuckets: prometheus.DefBuckets})
	req := httptest.NewRequest(http.MethodPost, "/topics/t/messages", strings.NewReader("v"))
	req.Header.Set("Content-Type", "text/plain")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var got errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, w.Body)
	}
	want := reasonAnswers[record.ReasonUnauthenticated]
	if w.Code != want.status || got.ErrorCode != want.code {
		t.Errorf("a request without credentials is answered %d %d; the unauthenticated row says %d %d", w.Code, got.ErrorCode, want.status, want.code)
	}
}

// TestReasonsDocumented checks that docs/api.md's table of statuses has
// every reason's status and error code, so that a new row is documented.
func TestReasonsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range record.Reasons() {
		a := reasonAnswers[reason]
		if row := fmt.Sprintf("\n| %d | %d | ", a.status, a.code); !strings.Contains(string(doc), row) {
			t.Errorf("%s: docs/api.md has no row %q in its table of statuses and errors", reason, strings.TrimSpace(row))
		}
	}
}
