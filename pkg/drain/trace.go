package drain

import (
	"context"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/telemetry"
)

// recordSpans are, for each record of a batch, a consumer span that
// continues the trace stored with the record (a child, so that one trace
// shows the record's whole journey, however late the drain comes), and its
// Kafka produce span, whose context goes into the record's traceparent.
type recordSpans struct {
	consume, send []trace.Span
}

// startSpans returns nil when the tracer is a no-op: the records keep the
// trace context they were stored with, and their spans would cost a fifth
// of the drain's CPU for nothing.
func (d *Drainer) startSpans(ctx context.Context, msgs []jetstream.Msg, recs []record.Record) *recordSpans {
	if _, noop := d.opts.TracerProvider.(noop.TracerProvider); noop {
		return nil
	}
	s := &recordSpans{consume: make([]trace.Span, len(recs)), send: make([]trace.Span, len(recs))}
	for i := range recs {
		carrier := telemetry.RecordCarrier{Record: &recs[i]}
		parent := d.opts.Propagators.Extract(ctx, carrier)
		// Named after the topic's subject, without the partition token:
		// a span name of bounded variety.
		cctx, consume := d.tracer.Start(parent, "process "+d.subjects.For(d.opts.Kind, recs[i].Topic), trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			semconv.MessagingSystemKey.String("nats"), semconv.MessagingOperationTypeProcess, semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(msgs[i].Subject()), semconv.MessagingMessageID(recs[i].ID),
			semconv.MessagingConsumerGroupName(d.opts.Consumer),
		))
		pctx, send := d.tracer.Start(cctx, "send "+recs[i].Topic, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
			semconv.MessagingSystemKafka, semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("send"),
			semconv.MessagingDestinationName(recs[i].Topic), semconv.MessagingMessageID(recs[i].ID),
		))
		d.opts.Propagators.Inject(pctx, carrier)
		s.consume[i], s.send[i] = consume, send
	}
	return s
}

func (s *recordSpans) result(i int, r record.Result) {
	if s == nil {
		return
	}
	send := s.send[i]
	switch r.Outcome {
	case record.Delivered:
		send.SetAttributes(semconv.MessagingDestinationPartitionID(strconv.Itoa(int(r.Partition))), semconv.MessagingKafkaOffset(int(r.Offset)))
	case record.Failed:
		send.RecordError(r.Err)
		send.SetStatus(codes.Error, string(record.ReasonOf(r.Err)))
		s.consume[i].SetAttributes(attribute.Bool("spillway.retried", !record.ReasonOf(r.Err).InRecord())) // else dead-lettered
	}
}

func (s *recordSpans) end() {
	if s == nil {
		return
	}
	for i := range s.send {
		s.send[i].End()
		s.consume[i].End()
	}
}
