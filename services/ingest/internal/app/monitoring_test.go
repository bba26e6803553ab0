package app_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// Whoever reaches the ingest's monitoring port gets no profile, heap dump
// or command line unless server.monitoring.pprof is on.
func TestPprofOnlyWithTheKey(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	for _, tc := range []struct {
		name string
		env  []string
		want int
	}{
		{"by default", nil, http.StatusNotFound},
		{"server.monitoring.pprof: true", []string{"SPILLWAY_SERVER_MONITORING_PPROF=true"}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := ingesttest.Start(t, addr, tc.env...)
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap"} {
				resp, err := http.Get(in.Monitor + path)
				require.NoError(t, err)
				resp.Body.Close()
				assert.Equal(t, tc.want, resp.StatusCode, path)
			}
			resp, err := http.Get(in.Monitor + "/metrics")
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode, "metrics are served either way")
		})
	}
}
