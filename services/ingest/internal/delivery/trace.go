package delivery

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/telemetry"
)

// parent is the trace context a record continues: the request's, or the
// one its client gave in the record's own traceparent header.
type parent struct {
	ctx  context.Context
	key  string // "" for the request's context
	link trace.SpanContext
}

// parentOf reads rec's parent context, before any hop overwrites the
// record's trace headers: the traceparent its client gave it, else the
// request's context ctx, whose span is request.
func (d *Delivery) parentOf(ctx context.Context, request trace.SpanContext, rec *record.Record) parent {
	carrier := telemetry.RecordCarrier{Record: rec}
	if tp := carrier.Get("traceparent"); tp != "" {
		pctx := d.opts.Propagators.Extract(ctx, carrier)
		if trace.SpanContextFromContext(pctx).IsValid() {
			return parent{ctx: pctx, key: tp, link: request}
		}
	}
	return parent{ctx: ctx}
}

// spans are the producer spans of one hand-off (to Kafka or to the
// buffer) of a batch: one per distinct parent context. Each record's
// headers get its span's context, so that the next hop continues the
// trace.
type spans struct {
	byParent map[string]trace.Span
	of       []trace.Span // the span of each record
	keys     []string     // the parent key of each record
}

// Without an exporter (Options.TracerProvider nil) there are no spans to
// make: each record's headers get its parent's context, and the nil
// *spans that it returns does nothing. describe names the span and gives
// its attributes, only when spans are made.
//
// recs are items' records, in order (records(items)): each continues its
// item's parent.
func (d *Delivery) startSpans(items []*item, recs []record.Record, describe func() (string, []attribute.KeyValue)) *spans {
	if !d.recording {
		// A parent's context is formatted once, and set on each of its
		// records (runs of one parent: a request's records, mostly).
		var (
			last    parent
			encoded *headerCarrier
		)
		for i := range recs {
			if p := items[i].parent; encoded == nil || p.ctx != last.ctx || p.key != last.key {
				last, encoded = p, &headerCarrier{}
				d.opts.Propagators.Inject(last.ctx, encoded)
			}
			encoded.setOn(&recs[i])
		}
		return nil
	}
	name, attrs := describe()
	s := &spans{byParent: map[string]trace.Span{}, of: make([]trace.Span, len(recs)), keys: make([]string, len(recs))}
	for i := range recs {
		p := items[i].parent
		s.keys[i] = p.key
		span, ok := s.byParent[p.key]
		if !ok {
			opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...)}
			if p.link.IsValid() {
				opts = append(opts, trace.WithLinks(trace.Link{SpanContext: p.link}))
			}
			_, span = d.tracer.Start(p.ctx, name, opts...)
			s.byParent[p.key] = span
		}
		s.of[i] = span
		d.opts.Propagators.Inject(trace.ContextWithSpan(p.ctx, span), telemetry.RecordCarrier{Record: &recs[i]})
	}
	return s
}

// event adds an event to every span.
func (s *spans) event(name string) {
	if s == nil {
		return
	}
	for _, sp := range s.byParent {
		sp.AddEvent(name)
	}
}

// end records each record's outcome on its span and ends the spans.
func (s *spans) end(recs []record.Record, results []record.Result) {
	if s == nil {
		return
	}
	counts := map[string]int{}
	for _, k := range s.keys {
		counts[k]++
	}
	for i, r := range results {
		sp := s.of[i]
		if counts[s.keys[i]] == 1 { // a span of one record names it
			sp.SetAttributes(semconv.MessagingMessageID(recs[i].ID))
			if r.Outcome == record.Delivered {
				sp.SetAttributes(semconv.MessagingDestinationPartitionID(strconv.Itoa(int(r.Partition))), semconv.MessagingKafkaOffset(int(r.Offset)))
			}
		}
		if r.Outcome == record.Failed && r.Err != nil {
			sp.RecordError(r.Err, trace.WithAttributes(attribute.String("spillway.record.id", recs[i].ID)))
			sp.SetStatus(codes.Error, string(record.ReasonOf(r.Err)))
		}
	}
	for _, sp := range s.byParent {
		sp.End()
	}
}

var _ propagation.TextMapCarrier = telemetry.RecordCarrier{}

// headerCarrier collects the headers a propagator sets, in order, to set
// them on many records; the records share their values.
type headerCarrier struct{ headers []record.Header }

func (c *headerCarrier) Get(string) string { return "" }
func (c *headerCarrier) Keys() []string    { return nil }
func (c *headerCarrier) Set(key, value string) {
	c.headers = append(c.headers, record.Header{Key: key, Value: []byte(value)})
}

// setOn sets c's headers on r, in place of any of the same names.
func (c *headerCarrier) setOn(r *record.Record) {
	kept := r.Headers[:0:0]
	for _, h := range r.Headers {
		if !slices.ContainsFunc(c.headers, func(o record.Header) bool { return strings.EqualFold(o.Key, h.Key) }) {
			kept = append(kept, h)
		}
	}
	if len(kept) == 0 {
		r.Headers = c.headers[:len(c.headers):len(c.headers)] // appending to it copies
		return
	}
	r.Headers = append(kept, c.headers...)
}

func kafkaAttrs(topic string, n int) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemKafka, semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("send"),
		semconv.MessagingDestinationName(topic), semconv.MessagingBatchMessageCount(n),
	}
}

func bufferAttrs(subject string, n int) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemKey.String("nats"), semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("publish"),
		semconv.MessagingDestinationName(subject), semconv.MessagingBatchMessageCount(n),
	}
}
