package grpcapi

import (
	"context"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// serverMetrics are the grpc_server_* families, as go-grpc-middleware's
// Prometheus provider names and labels them (and kafka-ambassador
// exported them). They are kept here rather than by that provider because
// it looks up each stream message's counter by its labels: on
// kafka-ambassador's stream, one message a record in and one out, that
// cost about a fifth of the ingest's CPU per record (issue 29). Here a
// stream finds its counters once, when it starts.
type serverMetrics struct {
	started  *prometheus.CounterVec   // grpc_type, grpc_service, grpc_method
	handled  *prometheus.CounterVec   // and grpc_code
	received *prometheus.CounterVec   // grpc_type, grpc_service, grpc_method
	sent     *prometheus.CounterVec   // grpc_type, grpc_service, grpc_method
	handling *prometheus.HistogramVec // grpc_type, grpc_service, grpc_method
}

func newServerMetrics(buckets []float64) *serverMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &serverMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total",
			Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels, "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total",
			Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total",
			Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: buckets,
		}, labels),
	}
}

func (m *serverMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.started, m.handled, m.received, m.sent, m.handling}
}

// call is one call's counters, found once.
type call struct {
	m        *serverMetrics
	labels   [3]string // grpc_type, grpc_service, grpc_method
	received prometheus.Counter
	sent     prometheus.Counter
	start    time.Time
}

func (m *serverMetrics) begin(meta interceptors.CallMeta) *call {
	c := &call{m: m, labels: [3]string{string(meta.Typ), meta.Service, meta.Method}, start: time.Now()}
	c.received = m.received.WithLabelValues(c.labels[:]...)
	c.sent = m.sent.WithLabelValues(c.labels[:]...)
	m.started.WithLabelValues(c.labels[:]...).Inc()
	return c
}

func (c *call) end(err error) {
	st, ok := status.FromError(err)
	if !ok { // as gRPC answers it: a context's error is its status
		st = status.FromContextError(err)
	}
	c.m.handled.WithLabelValues(c.labels[0], c.labels[1], c.labels[2], st.Code().String()).Inc()
	c.m.handling.WithLabelValues(c.labels[:]...).Observe(time.Since(c.start).Seconds())
}

// unary counts a unary call: its request as a message received, its
// response (when it has one) as a message sent.
func (m *serverMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	c := m.begin(interceptors.NewServerCallMeta(info.FullMethod, nil, req))
	c.received.Inc()
	resp, err := handler(ctx, req)
	if err == nil {
		c.sent.Inc()
	}
	c.end(err)
	return resp, err
}

// stream counts a stream and each message it received or sent.
func (m *serverMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	c := m.begin(interceptors.NewServerCallMeta(info.FullMethod, info, nil))
	err := handler(srv, countedStream{ServerStream: ss, call: c})
	c.end(err)
	return err
}

// countedStream counts the messages received and sent without error.
type countedStream struct {
	grpc.ServerStream
	call *call
}

func (s countedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.call.received.Inc()
	}
	return err
}

func (s countedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.call.sent.Inc()
	}
	return err
}

// initialize makes each method's series, at zero, before its first call,
// so that rates start from a known value.
func (m *serverMetrics) initialize(s *grpc.Server) {
	for service, info := range s.GetServiceInfo() {
		for _, method := range info.Methods {
			var stream *grpc.StreamServerInfo // nil: unary, as the interceptors see it
			if method.IsClientStream || method.IsServerStream {
				stream = &grpc.StreamServerInfo{IsClientStream: method.IsClientStream, IsServerStream: method.IsServerStream}
			}
			typ := string(interceptors.NewServerCallMeta("/"+service+"/"+method.Name, stream, nil).Typ)
			m.started.WithLabelValues(typ, service, method.Name)
			m.received.WithLabelValues(typ, service, method.Name)
			m.sent.WithLabelValues(typ, service, method.Name)
			m.handling.WithLabelValues(typ, service, method.Name)
			for _, code := range interceptors.AllCodes {
				m.handled.WithLabelValues(typ, service, method.Name, code.String())
			}
		}
	}
}
