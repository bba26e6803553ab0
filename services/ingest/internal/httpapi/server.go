// Package httpapi is the ingest's HTTP produce API: kafka-ambassador's
// and kafka-pixy's routes, Confluent REST Proxy's v2 and v3 produce
// formats, and the topic list. It parses requests into records, hands
// them to the delivery path, and answers each record's outcome.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.opentelemetry.io/contrib/instrumentation/github.com/labstack/echo/otelecho"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// API is the label of records received over HTTP.
const API = "http"

// Sender is the delivery path: one call per request.
type Sender interface {
	// Deliver validates the request's topic, refuses it or sends its
	// records, and counts every outcome. It returns one result per record,
	// in order, or the error the whole request is refused for.
	Deliver(ctx context.Context, req record.Request) ([]record.Result, error)
}

// TopicLister lists Kafka's topics.
type TopicLister interface {
	Topics(ctx context.Context) ([]string, error)
}

// Options configure the HTTP API.
type Options struct {
	Sender       Sender
	Topics       TopicLister
	MaxBodyBytes int64
	// MaxRequestRecords caps the records of one request (NDJSON, v2, v3
	// with a length); 0: no cap. A v3 stream is not one request: it holds
	// at most streamWindow records at once.
	MaxRequestRecords int
	// MaxStreams caps the v3 streams open at once (0: no cap), and
	// StreamIdleTimeout ends a stream that sends nothing for that long
	// (0: never).
	MaxStreams        int
	StreamIdleTimeout time.Duration
	// Draining closes when shutdown begins: v3 streams stop reading,
	// answer the records they took, and end.
	Draining <-chan struct{}
	Registry prometheus.Registerer
	Logger   *slog.Logger
	// LatencyBuckets are the request latency histogram's buckets, in seconds.
	LatencyBuckets []float64
	// Auth authenticates requests; nil: the client id is the principal.
	Auth *identity.Authenticator
	// TracerProvider and Propagators trace requests; none when nil. With
	// Propagators alone, requests carry a trace context but make no span
	// (no span would leave the process).
	TracerProvider trace.TracerProvider
	Propagators    propagation.TextMapPropagator
}

type handler struct {
	Options
	latency *prometheus.HistogramVec
	streams atomic.Int64 // v3 streams open
}

// New returns the HTTP API's handler.
func New(o Options) http.Handler {
	h := &handler{
		Options: o,
		latency: promauto.With(o.Registry).NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spillway_http_request_duration_seconds",
			Help:    "HTTP produce API requests: time to answer, per route and status code.",
			Buckets: o.LatencyBuckets,
		}, []string{"route", "code"}),
	}
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = errorHandler
	e.JSONSerializer = jsonSerializer{}
	mw := []echo.MiddlewareFunc{middleware.Recover()}
	switch {
	case o.TracerProvider != nil:
		mw = append(mw, otelecho.Middleware("spillway-ingest", otelecho.WithTracerProvider(o.TracerProvider), otelecho.WithPropagators(o.Propagators)))
	case o.Propagators != nil:
		mw = append(mw, spanContext(o.Propagators))
	}
	e.Use(append(mw, h.observe, h.identify)...)

	e.POST("/topics/:topic/messages", h.postTopicMessages)
	e.POST("/clusters/:cluster/topics/:topic/messages", h.postClusterMessages)
	e.POST("/topics/:topic", h.postV2)
	e.POST("/v3/clusters/:cluster_id/topics/:topic/records", h.postV3)
	e.GET("/topics", h.getTopics)
	return e
}

// observe measures every request and logs the ones that failed on our or
// Kafka's side.
func (h *handler) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		status := c.Response().Status
		elapsed := time.Since(start)
		h.latency.WithLabelValues(route, strconv.Itoa(status)).Observe(elapsed.Seconds())
		level := slog.LevelDebug
		if status >= 500 {
			level = slog.LevelWarn
		}
		if h.Logger.Enabled(c.Request().Context(), level) {
			attrs := []any{"method", c.Request().Method, "path", c.Request().URL.Path, "status", status, "duration", elapsed}
			if sc := trace.SpanContextFromContext(c.Request().Context()); sc.IsValid() {
				attrs = append(attrs, "trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String())
			}
			if err != nil {
				attrs = append(attrs, "error", err.Error())
			}
			h.Logger.Log(c.Request().Context(), level, "http request", attrs...)
		}
		return nil
	}
}

// identify authenticates the request and puts its client (principal,
// library and version) in its context; bad or missing credentials are 401.
func (h *handler) identify(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		client, err := identity.FromHTTP(r, h.Auth)
		if err != nil {
			_, _ = h.Sender.Deliver(identity.With(r.Context(), client), record.Request{API: API, Err: &record.Error{Reason: record.ReasonUnauthenticated, Message: err.Error()}})
			c.Response().Header().Set("WWW-Authenticate", "Bearer")
			return newHTTPError(http.StatusUnauthorized, 40101, err.Error())
		}
		c.SetRequest(r.WithContext(identity.With(r.Context(), client)))
		return next(c)
	}
}

// mediaType is the request's media type without parameters, lower-cased;
// "" when absent or unparsable.
func mediaType(c echo.Context) string {
	mt, _, err := mime.ParseMediaType(c.Request().Header.Get(echo.HeaderContentType))
	if err != nil {
		return ""
	}
	return mt
}

func unsupportedMediaType(c echo.Context, want string) error {
	got := c.Request().Header.Get(echo.HeaderContentType)
	if got == "" {
		return newHTTPError(http.StatusUnsupportedMediaType, codeUnsupportedMediaType, "the request has no Content-Type; want "+want)
	}
	return newHTTPError(http.StatusUnsupportedMediaType, codeUnsupportedMediaType, "Content-Type "+strconv.Quote(got)+" is not supported here; want "+want)
}

// readBody reads the whole body, refusing one over the limit with 413.
func (h *handler) readBody(c echo.Context) ([]byte, error) {
	body := http.MaxBytesReader(c.Response(), c.Request().Body, h.MaxBodyBytes)
	b, err := readAll(body, c.Request().ContentLength, h.MaxBodyBytes)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, newHTTPError(http.StatusRequestEntityTooLarge, codeBodyTooLarge,
				"the body is over the limit of "+strconv.FormatInt(h.MaxBodyBytes, 10)+" bytes (server.http.max_body_bytes)")
		}
		return nil, newHTTPError(http.StatusBadRequest, 40002, "reading the body: "+err.Error())
	}
	return b, nil
}

func (h *handler) getTopics(c echo.Context) error {
	topics, err := h.Topics.Topics(c.Request().Context())
	if err != nil {
		return newHTTPError(http.StatusServiceUnavailable, 50302, "cannot list topics: Kafka did not answer: "+err.Error())
	}
	return c.JSON(http.StatusOK, topics)
}

// batchStatus is the status of a batch's answer: 200 when Kafka has every
// record, 202 when some are buffered and none failed, the failure's status
// when all failed alike, 207 when the outcomes are mixed. The error is the
// first failure, for the answer's top-level error_code and message.
func batchStatus(results []record.Result) (int, *httpError) {
	var first *httpError
	failed, buffered := 0, 0
	for i, r := range results {
		switch r.Outcome {
		case record.Buffered:
			buffered++
		case record.Failed:
			failed++
			he := fromError(r.Err)
			if first == nil {
				first = he
				if len(results) > 1 { // which record, at the top
					first = newHTTPError(he.status, he.body.ErrorCode, fmt.Sprintf("record %d: %s", i, he.body.Message))
				}
			}
		}
	}
	switch {
	case failed == 0 && buffered == 0:
		return http.StatusOK, nil
	case failed == 0:
		return http.StatusAccepted, nil
	case record.FailedAlike(results, func(err error) int { return fromError(err).status }):
		return first.status, first
	default:
		return http.StatusMultiStatus, first
	}
}
