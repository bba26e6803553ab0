package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestWrkRun runs the real wrk with bench's script against a server that
// answers 503 to its first 5 requests: the run is refused and names the 5,
// every request is a POST of one -size record, and the records/s and CPU
// count only the answers that were 2xx.
func TestWrkRun(t *testing.T) {
	path, err := exec.LookPath("wrk")
	if err != nil {
		t.Skip("wrk is not installed (Debian package wrk)")
	}
	wrkPath = path
	*size, *duration = 100, time.Second
	t.Cleanup(func() { removeTemp(true) })
	var n, bad, wrongBody atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || len(b) != 100 || r.Header.Get("Content-Type") != "text/plain" || !strings.HasPrefix(r.URL.Path, "/topics/bench-") {
			wrongBody.Add(1)
		}
		if n.Add(1) <= 5 {
			bad.Add(1)
			http.Error(w, "not now", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`{"outcome":"delivered"}`))
	}))
	defer srv.Close()

	r := wrkLoad(2, srv.URL+"/topics/TOPIC/messages", nil, nil)(0)
	if want := "5 answers not 2xx of "; !strings.HasPrefix(r.failed, want) {
		t.Fatalf("failed %q, want it to start with %q", r.failed, want)
	}
	if wrongBody.Load() != 0 {
		t.Fatalf("%d of %d requests were not a POST of one 100-byte text/plain record to /topics/bench-…", wrongBody.Load(), n.Load())
	}
	// wrk counts the answers it read; the server may have answered a few
	// more that wrk stopped waiting for at the end.
	if r.acked <= 0 || r.acked > float64(n.Load()-5) || r.rps <= 0 || r.p99ms <= 0 {
		t.Fatalf("acked %.0f (server answered %d, 5 of them 503), %.0f records/s, p99 %.2f ms", r.acked, n.Load(), r.rps, r.p99ms)
	}
}

func TestWrkSummaryFailure(t *testing.T) {
	for _, tc := range []struct {
		s    wrkSummary
		want string
	}{
		{wrkSummary{Requests: 1000}, ""},
		{wrkSummary{Requests: 1000, Non2xx: 3, Timeout: 2}, "3 answers not 2xx, 2 timeouts of 1000 requests"},
		{wrkSummary{Requests: 1000, Connect: 1, Read: 4}, "1 connect errors, 4 read errors of 1000 requests"},
		{wrkSummary{}, "no request answered of 0 requests"},
	} {
		if got := tc.s.failure(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.s, got, tc.want)
		}
	}
}
