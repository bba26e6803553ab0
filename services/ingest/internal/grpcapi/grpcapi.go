// Package grpcapi is the ingest's gRPC produce API: Spillway's own
// spillway.ingest.v1.IngestService, and kafka-ambassador's KafkaAmbassador
// and kafka-pixy's KafkaPixy wire formats. Like the HTTP API, it turns
// requests into records, hands them to the delivery path, and answers
// each record's outcome.
package grpcapi

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
	"github.com/spillway/spillway/proto/gen/kafkapixy"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// API is the label of records received over gRPC.
const API = "grpc"

// Sender is the delivery path: one call per request.
type Sender interface {
	// Deliver validates the request's topic, refuses it or sends its
	// records, and counts every outcome. It returns one result per record
	// and refusal, in order, or the error the whole request is refused
	// for.
	Deliver(ctx context.Context, req record.Request) ([]record.Result, error)
}

// TopicLister lists Kafka's topics.
type TopicLister interface {
	Topics(ctx context.Context) ([]string, error)
}

// Options configure the gRPC API.
type Options struct {
	Sender Sender
	Topics TopicLister
	Config config.GRPC
	// MaxRequestRecords caps the records of one ProduceRequest or
	// ProduceStreamRequest (server.max_request_records); 0: no cap.
	MaxRequestRecords int
	// MaxRequestHeaders caps the record headers of one request, all its
	// records together (server.max_request_headers); 0: no cap.
	MaxRequestHeaders int
	Registry          prometheus.Registerer
	Logger            *slog.Logger
	LatencyBuckets    []float64
	// Auth authenticates calls; nil: the client id is the principal.
	Auth *identity.Authenticator
	// TLS is the listener's TLS; nil: plaintext.
	TLS *tls.Config
	// TracerProvider and Propagators trace calls (not health checks); none
	// when nil.
	TracerProvider trace.TracerProvider
	Propagators    propagation.TextMapPropagator
	// Draining closes when shutdown begins: streams stop taking requests,
	// acknowledge the ones they took, and end.
	Draining <-chan struct{}
	// NotReady is why the ingest is not ready (what /readyz says), nil
	// when it is: a health Check answered NOT_SERVING carries it in its
	// ReadinessTrailer. nil: no reason given.
	NotReady func() error
}

// ReadinessTrailer is the trailer of a health Check answered NOT_SERVING
// that says why, as /readyz does ("not ready: buffer: ..."): the health
// protocol's answer holds only the status. grpcurl -v shows it.
const ReadinessTrailer = "spillway-readiness"

// Server is the gRPC server with both services, health and reflection.
type Server struct {
	*grpc.Server
	health *health.Server
}

// New builds the gRPC server. Its health starts NOT_SERVING; SetServing
// follows the ingest's readiness.
func New(o Options) *Server {
	metrics := newServerMetrics(o.LatencyBuckets)
	o.Registry.MustRegister(metrics.collectors()...)
	streams := &streamLimit{max: int64(o.Config.MaxOpenStreams)}
	serverOpts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(o.Config.MaxRequestSize),
		grpc.ForceServerCodecV2(newCappedCodec(o.MaxRequestRecords, o.MaxRequestHeaders)),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: o.Config.KeepaliveTime, Timeout: o.Config.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: o.Config.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(metrics.unary, o.identifyUnary),
		grpc.ChainStreamInterceptor(metrics.stream, streams.intercept, o.identifyStream),
	}
	if o.Config.MaxConcurrentStreams > 0 {
		serverOpts = append(serverOpts, grpc.MaxConcurrentStreams(o.Config.MaxConcurrentStreams))
	}
	if w := o.Config.StreamWindowBytes; w > 0 {
		// A fixed window (no BDP estimation): what one client may send
		// ahead of the server's reading is bounded.
		serverOpts = append(serverOpts, grpc.InitialWindowSize(w), grpc.InitialConnWindowSize(4*w))
	}
	if o.TLS != nil {
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(o.TLS)))
	}
	if o.TracerProvider != nil {
		serverOpts = append(serverOpts, grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(o.TracerProvider),
			otelgrpc.WithPropagators(o.Propagators),
			otelgrpc.WithFilter(filters.Not(filters.HealthCheck())),
		)))
	}
	s := grpc.NewServer(serverOpts...)
	ingestv1.RegisterIngestServiceServer(s, &ingestServer{opts: o})
	kafkaambassador.RegisterKafkaAmbassadorServer(s, &ambassadorServer{opts: o})
	kafkapixy.RegisterKafkaPixyServer(s, &pixyServer{opts: o})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s, drainingHealth{Server: hs, draining: o.Draining, notReady: o.NotReady})
	reflection.Register(s)
	metrics.initialize(s)
	return &Server{Server: s, health: hs}
}

// SetServing sets the health of the server and of each service.
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range []string{"", ingestv1.IngestService_ServiceDesc.ServiceName, kafkaambassador.KafkaAmbassador_ServiceDesc.ServiceName, kafkapixy.KafkaPixy_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(name, st)
	}
}

// drainingHealth ends the health Watch streams when shutdown begins, once
// each has been told NOT_SERVING (or after a second): a client watching
// the ingest's health (gRPC client-side health checking) would otherwise
// hold GracefulStop until the shutdown deadline.
type drainingHealth struct {
	*health.Server
	draining <-chan struct{}
	notReady func() error
}

// Check is the health's Check, with the reason in ReadinessTrailer when
// the answer is NOT_SERVING.
func (h drainingHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	resp, err := h.Server.Check(ctx, req)
	if err != nil || resp.GetStatus() == healthpb.HealthCheckResponse_SERVING || h.notReady == nil {
		return resp, err
	}
	if why := h.notReady(); why != nil {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(ReadinessTrailer, printable("not ready: "+why.Error())))
	}
	return resp, nil
}

// printable is s with every byte that a gRPC metadata value cannot hold
// (printable ASCII only) replaced by '?'.
func printable(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

func (h drainingHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	w := &watchStream{Health_WatchServer: stream, ctx: ctx, toldNotServing: make(chan struct{})}
	go func() {
		select {
		case <-h.draining:
		case <-ctx.Done():
			return
		}
		select {
		case <-w.toldNotServing:
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
		cancel()
	}()
	return h.Server.Watch(req, w)
}

type watchStream struct {
	healthpb.Health_WatchServer
	ctx            context.Context
	once           sync.Once
	toldNotServing chan struct{}
}

func (w *watchStream) Context() context.Context { return w.ctx }

func (w *watchStream) Send(m *healthpb.HealthCheckResponse) error {
	err := w.Health_WatchServer.Send(m)
	if m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		w.once.Do(func() { close(w.toldNotServing) })
	}
	return err
}

// reasonCodes is the gRPC status code of each failure reason, for every
// gRPC service: Spillway's, kafka-pixy's and kafka-ambassador's. Every
// reason in record.Reasons has a row (TestEveryReasonMapped).
var reasonCodes = map[record.Reason]codes.Code{
	record.ReasonInvalid:         codes.InvalidArgument,
	record.ReasonTooLarge:        codes.ResourceExhausted,
	record.ReasonUnknownTopic:    codes.NotFound,
	record.ReasonNotAuthorized:   codes.Unavailable, // Kafka refused Spillway's own credentials: not the client's fault
	record.ReasonUnavailable:     codes.Unavailable,
	record.ReasonTimeout:         codes.DeadlineExceeded,
	record.ReasonBufferFull:      codes.ResourceExhausted,
	record.ReasonOverloaded:      codes.Unavailable,
	record.ReasonForbidden:       codes.PermissionDenied,
	record.ReasonRateLimited:     codes.ResourceExhausted,
	record.ReasonRejected:        codes.InvalidArgument,
	record.ReasonUnauthenticated: codes.Unauthenticated, // as identify answers
}

// codeOf maps a failure reason to its gRPC status code. A reason without a
// row (TestEveryReasonMapped sees that none is) is answered as
// unavailable, as record.ReasonOf names an error without one.
func codeOf(reason record.Reason) codes.Code {
	c, ok := reasonCodes[reason]
	if !ok {
		c = reasonCodes[record.ReasonUnavailable]
	}
	return c
}

// statusOf is the gRPC status for a failed record.
func statusOf(err error) *status.Status {
	return status.New(codeOf(record.ReasonOf(err)), record.ClientMessage(err))
}

// toRequest converts a request's records for topic: a bad record is
// refused alone, at its index.
func toRequest(topic string, in []*ingestv1.Record) record.Request {
	req := record.Request{API: API, Topic: topic, Records: make([]record.Record, 0, len(in))}
	for i, r := range in {
		rec, err := toRecord(topic, r)
		if err != nil {
			req.Refused = append(req.Refused, record.Refusal{Index: i, Topic: topic,
				Err: record.Errorf(record.ReasonInvalid, "records[%d]: %s", i, record.ClientMessage(err))})
			continue
		}
		req.Records = append(req.Records, rec)
	}
	return req
}

// refusal is a whole request refused before it was sent, answered with
// st and counted under reason.
func refusal(reason record.Reason, st *status.Status) error {
	return &record.Error{Reason: reason, Message: st.Message(), Err: st.Err()}
}

// answerOf is the status a request refused as a whole is answered with:
// the API's own (refusal), or its reason's.
func answerOf(err error) error {
	var re *record.Error
	if errors.As(err, &re) && re.Err != nil {
		if _, ok := status.FromError(re.Err); ok {
			return re.Err
		}
	}
	return statusOf(err).Err()
}

func toRecord(topic string, r *ingestv1.Record) (record.Record, error) {
	if r == nil {
		return record.Record{}, record.Errorf(record.ReasonInvalid, "the record is empty")
	}
	rec := record.Record{Topic: topic, Key: r.Key, Value: r.Value, Partition: record.AnyPartition}
	if r.Partition != nil {
		if *r.Partition < 0 {
			return rec, record.Errorf(record.ReasonInvalid, "partition %d is not a partition; want 0 or more", *r.Partition)
		}
		rec.Partition = *r.Partition
	}
	if r.Timestamp != nil {
		if err := r.Timestamp.CheckValid(); err != nil {
			return rec, record.Errorf(record.ReasonInvalid, "timestamp: %v", err)
		}
		if rec.Timestamp = r.Timestamp.AsTime(); rec.Timestamp.Before(time.Unix(0, 0)) {
			return rec, record.Errorf(record.ReasonInvalid, "timestamp %s is before 1970", rec.Timestamp.Format(time.RFC3339))
		}
	}
	for _, h := range r.Headers {
		rec.Headers = append(rec.Headers, record.Header{Key: h.GetKey(), Value: h.GetValue()})
	}
	return rec, nil
}

// send delivers a batch for topic, answering every record: a topic that
// is not a topic fails each of them.
func send(ctx context.Context, o Options, topic string, in []*ingestv1.Record) []record.Result {
	results, err := o.Sender.Deliver(ctx, toRequest(topic, in))
	if err != nil {
		results = make([]record.Result, len(in))
		for i := range results {
			results[i] = record.Fail(topic, err)
		}
	}
	return results
}

// identify authenticates a call, except health checks and reflection.
func (o Options) identify(ctx context.Context, method string) (context.Context, error) {
	if strings.HasPrefix(method, "/grpc.health.") || strings.HasPrefix(method, "/grpc.reflection.") {
		return ctx, nil
	}
	client, err := identity.FromGRPC(ctx, o.Auth)
	if err != nil {
		_, _ = o.Sender.Deliver(identity.With(ctx, client), record.Request{API: API, Err: &record.Error{Reason: record.ReasonUnauthenticated, Message: err.Error()}})
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return identity.With(ctx, client), nil
}

// identifyUnary and identifyStream authenticate the caller and put its
// client (principal, library and version) in the call's context.
func (o Options) identifyUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := o.identify(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (o Options) identifyStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := o.identify(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, identifiedStream{ServerStream: ss, ctx: ctx})
}

type identifiedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s identifiedStream) Context() context.Context { return s.ctx }

// RecvMsg ends the stream once the credential it opened with has expired
// (a JWT's exp): a long stream must not outlive its token.
func (s identifiedStream) RecvMsg(m any) error {
	if until := identity.From(s.ctx).Until; !until.IsZero() && time.Now().After(until) {
		return status.Error(codes.Unauthenticated, "invalid credentials: the token has expired; open a new stream with a new token")
	}
	return s.ServerStream.RecvMsg(m)
}
