package monitor

import (
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// get fetches path from s and returns the status and body.
func get(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr() + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// Whoever reaches the monitoring port gets metrics and health, but not the
// process's profiles, command line or heap, unless the operator asked for
// them.
func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		want int
	}{
		{"by default", nil, http.StatusNotFound},
		{"off", []Option{WithPprof(false)}, http.StatusNotFound},
		{"on", []Option{WithPprof(true)}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New("127.0.0.1:0", prometheus.NewRegistry(), tc.opts...)
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap", "/debug/pprof/symbol"} {
				status, body := get(t, s, path)
				assert.Equal(t, tc.want, status, "%s: %s", path, body)
			}
			status, _ := get(t, s, "/metrics")
			assert.Equal(t, http.StatusOK, status, "metrics are served either way")
			status, body := get(t, s, "/healthz")
			assert.Equal(t, http.StatusOK, status)
			assert.Equal(t, "ok\n", body)
		})
	}
}

// /readyz names what a starting service waits for, and says "starting or
// shutting down" otherwise, before and after.
func TestReadyzNamesWhatStartWaitsFor(t *testing.T) {
	s, err := New("127.0.0.1:0", prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	for _, step := range []struct {
		do         func()
		status     int
		body, name string
	}{
		{func() {}, http.StatusServiceUnavailable, "not ready: starting or shutting down\n", "starting"},
		{func() { s.SetStarting(errors.New("buffer: no quorum")) }, http.StatusServiceUnavailable, "not ready: buffer: no quorum\n", "waiting"},
		{func() { s.SetStarting(nil) }, http.StatusServiceUnavailable, "not ready: starting or shutting down\n", "waited"},
		{func() { s.SetStarting(errors.New("buffer: no quorum")); s.SetReady(true) }, http.StatusOK, "ready\n", "ready"},
		{func() { s.SetReady(false) }, http.StatusServiceUnavailable, "not ready: starting or shutting down\n", "shutting down"},
	} {
		step.do()
		status, body := get(t, s, "/readyz")
		assert.Equal(t, step.status, status, step.name)
		assert.Equal(t, step.body, body, step.name)
	}
}
