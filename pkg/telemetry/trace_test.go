package telemetry

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/spillway/spillway/pkg/record"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestNewTracing(t *testing.T) {
	tr, err := NewTracing(t.Context(), "svc", "v1", env(nil))
	require.NoError(t, err)
	assert.False(t, tr.Exporting, "no endpoint: nothing exported")
	_, span := tr.Provider.Tracer("t").Start(t.Context(), "s")
	assert.True(t, span.SpanContext().IsValid(), "spans still get ids, for the logs")
	span.End()
	require.NoError(t, tr.Shutdown(t.Context()))

	tr, err = NewTracing(t.Context(), "svc", "v1", env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}))
	require.NoError(t, err)
	assert.True(t, tr.Exporting)

	tr, err = NewTracing(t.Context(), "svc", "v1", env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}))
	require.NoError(t, err)
	assert.False(t, tr.Exporting, "OTEL_TRACES_EXPORTER=none wins")

	tr, err = NewTracing(t.Context(), "svc", "v1", env(map[string]string{"OTEL_SDK_DISABLED": "true"}))
	require.NoError(t, err)
	assert.IsType(t, noop.TracerProvider{}, tr.Provider)

	_, err = NewTracing(t.Context(), "svc", "v1", env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}))
	assert.ErrorContains(t, err, `OTEL_EXPORTER_OTLP_PROTOCOL "carrier-pigeon" is not supported`)
}

func TestRecordCarrier(t *testing.T) {
	r := record.Record{Headers: []record.Header{{Key: "Traceparent", Value: []byte("old")}, {Key: "other", Value: []byte("x")}}}
	c := RecordCarrier{Record: &r}
	assert.Equal(t, "old", c.Get("traceparent"), "header names are matched without case")
	c.Set("traceparent", "new")
	assert.Equal(t, []record.Header{{Key: "other", Value: []byte("x")}, {Key: "traceparent", Value: []byte("new")}}, r.Headers)
	assert.ElementsMatch(t, []string{"other", "traceparent"}, c.Keys())
}
