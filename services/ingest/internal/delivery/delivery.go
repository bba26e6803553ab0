// Package delivery is the one path every record takes after an API parsed
// it: it gets an id and is counted; it is written ahead to the JetStream
// buffer, or sent to Kafka behind a circuit breaker and spilled to the
// buffer when Kafka cannot take it; and its outcome is counted, whichever
// API it came from.
package delivery

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/monitor"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/services/ingest/internal/identity"
	"github.com/spillway/spillway/services/ingest/internal/policy"
)

// Producer writes records to Kafka and reports each one's outcome.
type Producer interface {
	Produce(ctx context.Context, recs []record.Record) []record.Result
}

// Buffer stores records in JetStream and reports each one's outcome.
type Buffer interface {
	Publish(ctx context.Context, kind spill.Kind, recs []record.Record, reason string) []record.Result
}

// Mirror copies records to a second cluster without the client waiting.
type Mirror interface {
	Matches(topic string) bool
	Offer(recs []record.Record)
}

// Options configure the delivery path.
type Options struct {
	Producer Producer
	// Buffer is the JetStream buffer; nil when producer.wal.mode is
	// disable.
	Buffer  Buffer
	WAL     config.WAL
	Breaker config.Breaker
	// MaxInFlight bounds the records received and not yet answered; 0: no
	// bound.
	MaxInFlight int
	// MaxRecordBytes is Kafka's record size limit (kafka.message.max.bytes):
	// a larger record (key, value and the client's headers) is refused
	// before it is sent or buffered.
	MaxRecordBytes int
	Registry       prometheus.Registerer
	MaxTopics      int
	// Policy holds the rules a reload may replace: topic ACLs, rate
	// limits, validation and topic mapping. Each request reads it once.
	Policy *atomic.Pointer[policy.Policy]
	// Mirrors get a copy of each acknowledged record of their topics.
	Mirrors []Mirror
	// MaxPrincipals and MaxLibraries cap the distinct principals and
	// library versions in the per-client metrics; later ones are "other".
	MaxPrincipals int
	MaxLibraries  int
	Logger        *slog.Logger
	// Tracer provider and propagators for the producer spans; no tracing
	// when nil.
	TracerProvider trace.TracerProvider
	Propagators    propagation.TextMapPropagator
	// StopWaiting ends near the shutdown deadline: waits for Kafka end,
	// and the records still waiting are spilled. Nil: never.
	StopWaiting context.Context
}

// Delivery sends records on their way and measures what becomes of them.
type Delivery struct {
	opts       Options
	tracer     trace.Tracer
	inFlight   atomic.Int64
	always     map[string]bool
	never      map[string]bool
	breaker    *gobreaker.CircuitBreaker[[]record.Result]
	topics     *monitor.BoundedLabels
	principals *monitor.BoundedLabels
	libraries  *monitor.BoundedLabels
	m          metrics
}

// errKafkaFailing tells the breaker that a produce had records Kafka could
// not take for a reason that may pass (unavailable, timeout).
var errKafkaFailing = errors.New("kafka failed records with a retriable error")

// New returns the delivery path.
func New(o Options) *Delivery {
	if o.StopWaiting == nil {
		o.StopWaiting = context.Background()
	}
	if o.TracerProvider == nil {
		o.TracerProvider = noop.NewTracerProvider()
	}
	if o.Propagators == nil {
		o.Propagators = propagation.TraceContext{}
	}
	if o.Policy == nil { // no ACLs, limits, rules or mapping
		o.Policy = &atomic.Pointer[policy.Policy]{}
		none, _ := policy.New(&config.Config{}, nil)
		o.Policy.Store(none)
	}
	d := &Delivery{
		opts:       o,
		tracer:     o.TracerProvider.Tracer("github.com/spillway/spillway/services/ingest/internal/delivery"),
		always:     toSet(o.WAL.AlwaysTopics),
		never:      toSet(o.WAL.DisableTopics),
		topics:     monitor.NewBoundedLabels(o.MaxTopics),
		principals: monitor.NewBoundedLabels(max(o.MaxPrincipals, 1)),
		libraries:  monitor.NewBoundedLabels(max(o.MaxLibraries, 1)),
		m:          newMetrics(o.Registry),
	}
	d.m.breakerState.Set(0) // closed; the series exists from the start
	d.breaker = gobreaker.NewCircuitBreaker[[]record.Result](gobreaker.Settings{
		Name:        "kafka",
		MaxRequests: o.Breaker.Requests,
		Interval:    o.Breaker.Interval,
		Timeout:     o.Breaker.Timeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= o.Breaker.Fails },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			d.m.breakerState.Set(float64(to))
			d.m.breakerChanges.WithLabelValues(to.String()).Inc()
			o.Logger.Warn("kafka circuit breaker changed state", "from", from.String(), "to", to.String())
		},
	})
	return d
}

func toSet(list []string) map[string]bool {
	m := make(map[string]bool, len(list))
	for _, t := range list {
		m[t] = true
	}
	return m
}

// BreakerState is the Kafka breaker's state: closed, half-open or open.
func (d *Delivery) BreakerState() string { return d.breaker.State().String() }

// writesAhead says whether topic's records go to the buffer first.
func (d *Delivery) writesAhead(topic string) bool {
	return d.opts.Buffer != nil && !d.never[topic] && (d.opts.WAL.Mode == config.ModeAlways || d.always[topic])
}

// spills says whether topic's records may be buffered when Kafka cannot
// take them.
func (d *Delivery) spills(topic string) bool {
	return d.opts.Buffer != nil && d.opts.WAL.Mode != config.ModeDisable && !d.never[topic]
}

// Send delivers recs, received through api ("http" or "grpc"), and returns
// one result per record in order.
func (d *Delivery) Send(ctx context.Context, api string, recs []record.Record) []record.Result {
	client := identity.From(ctx)
	sizes := make([]int, len(recs)) // as the client sent them, before our headers
	now := time.Now()
	for i := range recs {
		sizes[i] = recs[i].Size()
		if recs[i].ID == "" {
			recs[i].ID = ulid.Make().String()
		}
		if recs[i].Timestamp.IsZero() { // the receive time, wherever the record goes
			recs[i].Timestamp = now
		}
	}
	// One metric update per topic, not per record: a batch's records
	// almost always share their topic.
	var received, receivedBytes tally
	for i := range recs {
		received.add(tallyKey{recs[i].Topic}, 1)
		receivedBytes.add(tallyKey{recs[i].Topic}, float64(sizes[i]))
	}
	for k, n := range received.all() {
		d.m.received.WithLabelValues(api, d.topics.Value(k[0])).Add(n)
	}
	for k, n := range receivedBytes.all() {
		d.m.receivedBytes.WithLabelValues(api, d.topics.Value(k[0])).Add(n)
	}
	if n := d.inFlight.Add(int64(len(recs))); d.opts.MaxInFlight > 0 && n > int64(d.opts.MaxInFlight) && n > int64(len(recs)) {
		// Overloaded: refuse rather than grow memory. A single request larger
		// than the bound still goes through when nothing else is in flight.
		d.inFlight.Add(-int64(len(recs)))
		results := make([]record.Result, len(recs))
		for i := range recs {
			results[i] = record.Fail(recs[i].Topic, record.Errorf(record.ReasonOverloaded,
				"the ingest has %d records in flight (server.max_in_flight_records): retry later", n-int64(len(recs))))
			results[i].ID = recs[i].ID
			d.m.failed.WithLabelValues(d.topics.Value(recs[i].Topic), string(record.ReasonOverloaded)).Inc()
		}
		return results
	}
	defer d.inFlight.Add(-int64(len(recs)))
	d.m.inFlight.Add(float64(len(recs)))
	defer d.m.inFlight.Sub(float64(len(recs)))

	results := make([]record.Result, len(recs))
	total := 0
	for _, n := range sizes {
		total += n
	}
	pol := d.opts.Policy.Load()
	if err := pol.TakeRate(d.principals.Value(client.Principal), len(recs), total); err != nil {
		d.Denied(client.Principal, string(record.ReasonRateLimited))
		for i := range recs {
			results[i] = record.Fail(recs[i].Topic, err)
			results[i].ID = recs[i].ID
			d.m.failed.WithLabelValues(d.topics.Value(recs[i].Topic), string(record.ReasonRateLimited)).Inc()
		}
		d.countClient(client, topicsOf(recs), sizes, results)
		return results
	}
	// ACLs, validation and metrics use the topic the client named; the
	// record goes on to its Kafka topic.
	named := make([]string, len(recs))
	for i := range recs {
		named[i] = recs[i].Topic
	}
	parents := d.parents(ctx, recs)
	var ahead, direct []int
	for i := range recs {
		if !pol.Allowed(client.Principal, named[i]) {
			results[i] = record.Fail(named[i], record.Errorf(record.ReasonForbidden,
				"%s may not produce to topic %q (security.allow_topics, security.acl)", client.Principal, named[i]))
			d.Denied(client.Principal, string(record.ReasonForbidden))
			continue
		}
		if rule, err := pol.Validate(named[i], &recs[i]); err != nil {
			results[i] = record.Fail(named[i], err)
			d.m.rejected.WithLabelValues(d.topics.Value(named[i]), rule).Inc()
			continue
		}
		recs[i].Topic = pol.Map(named[i])
		if err := record.ValidateTopic(recs[i].Topic); err != nil { // a prefix rewrite can make one
			results[i] = record.Fail(named[i], record.Errorf(record.ReasonInvalid, "topic %q is mapped to an invalid topic (topic_mapping): %s", named[i], record.ClientMessage(err)))
			continue
		}
		switch {
		case sizes[i] > d.opts.MaxRecordBytes:
			// Kafka would refuse it: no use sending or buffering it.
			results[i] = record.Fail(recs[i].Topic, record.Errorf(record.ReasonTooLarge,
				"record of %d bytes is over the limit of %d bytes (kafka.message.max.bytes)", sizes[i], d.opts.MaxRecordBytes))
		case d.writesAhead(recs[i].Topic):
			ahead = append(ahead, i)
		default:
			direct = append(direct, i)
		}
	}
	if len(ahead) > 0 {
		d.scatter(results, ahead, d.buffer(ctx, spill.WriteAhead, pick(recs, ahead), pick(named, ahead), pick(parents, ahead), "write_ahead"))
	}
	if len(direct) > 0 {
		d.scatter(results, direct, d.toKafka(ctx, pick(recs, direct), pick(named, direct), pick(parents, direct)))
	}

	d.mirror(recs, results)
	d.countClient(client, named, sizes, results)
	var delivered, failed tally
	for i, r := range results {
		results[i].ID = recs[i].ID
		switch r.Outcome {
		case record.Delivered:
			delivered.add(tallyKey{named[i]}, 1)
		case record.Failed:
			failed.add(tallyKey{named[i], string(record.ReasonOf(r.Err))}, 1)
		}
	}
	for k, n := range delivered.all() {
		d.m.delivered.WithLabelValues(d.topics.Value(k[0])).Add(n)
	}
	for k, n := range failed.all() {
		d.m.failed.WithLabelValues(d.topics.Value(k[0]), k[1]).Add(n)
	}
	return results
}

// mirror hands each mirror a copy of the acknowledged records of its
// topics. The copy lets the mirror's partitioner choose the partition: the
// mirror's topic may have another partition count.
func (d *Delivery) mirror(recs []record.Record, results []record.Result) {
	for _, m := range d.opts.Mirrors {
		var copies []record.Record
		for i, r := range results {
			if (r.Outcome == record.Delivered || r.Outcome == record.Buffered) && m.Matches(recs[i].Topic) {
				c := recs[i]
				c.Partition = record.AnyPartition
				copies = append(copies, c)
			}
		}
		m.Offer(copies)
	}
}

// Denied counts a refused request or record, per principal and reason
// (unauthenticated, forbidden).
func (d *Delivery) Denied(principal, reason string) {
	d.m.denied.WithLabelValues(d.principals.Value(principal), reason).Inc()
}

// countClient counts the request, its records by outcome and their bytes
// per client.
func (d *Delivery) countClient(c identity.Client, topics []string, sizes []int, results []record.Result) {
	principal := d.principals.Value(c.Principal)
	library, version := c.Library, c.Version
	if d.libraries.Value(library+"/"+version) == monitor.OtherLabel {
		library, version = monitor.OtherLabel, ""
	}
	d.m.clientRequests.WithLabelValues(principal, library, version).Inc()
	var records, bytes tally
	for i, r := range results {
		records.add(tallyKey{topics[i], r.Outcome.String()}, 1)
		bytes.add(tallyKey{topics[i]}, float64(sizes[i]))
	}
	for k, n := range records.all() {
		d.m.clientRecords.WithLabelValues(principal, d.topics.Value(k[0]), k[1]).Add(n)
	}
	for k, n := range bytes.all() {
		d.m.clientBytes.WithLabelValues(principal, d.topics.Value(k[0])).Add(n)
	}
}

// toKafka produces recs behind the breaker and spills those Kafka could
// not take, where their topic allows it. named are the topics the client
// gave, for the metrics.
func (d *Delivery) toKafka(ctx context.Context, recs []record.Record, named []string, parents []parent) []record.Result {
	sp := d.startSpans(parents, "send "+recs[0].Topic, recs, kafkaAttrs(recs[0].Topic, len(recs))...)
	results, err := d.breaker.Execute(func() ([]record.Result, error) {
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(d.opts.StopWaiting, cancel)
		defer stop()
		start := time.Now()
		res := d.opts.Producer.Produce(pctx, recs)
		d.m.produceTime.Observe(time.Since(start).Seconds())
		if ctx.Err() != nil {
			return res, nil // the client gave up (or shutdown came): not Kafka's failure
		}
		if slices.ContainsFunc(res, func(r record.Result) bool {
			return r.Outcome == record.Failed && record.ReasonOf(r.Err).Retriable()
		}) {
			return res, errKafkaFailing
		}
		return res, nil
	})
	spillReason := ""
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		for _, s := range sp.byParent {
			s.AddEvent("circuit breaker open: Kafka not tried")
		}
		spillReason = "breaker_open"
		results = make([]record.Result, len(recs))
		for i := range recs {
			results[i] = record.Fail(recs[i].Topic, &record.Error{
				Reason:  record.ReasonUnavailable,
				Message: "Kafka is failing (circuit breaker open) and this topic is never buffered (producer.wal.disable_topics or mode disable)",
			})
		}
	}

	sp.end(recs, results)

	byReason := map[string][]int{}
	for i, r := range results {
		if r.Outcome == record.Failed && record.ReasonOf(r.Err).Retriable() && d.spills(recs[i].Topic) {
			reason := spillReason
			if reason == "" {
				reason = string(record.ReasonOf(r.Err))
			}
			byReason[reason] = append(byReason[reason], i)
		}
	}
	for reason, idx := range byReason {
		d.scatter(results, idx, d.buffer(ctx, spill.Spilled, pick(recs, idx), pick(named, idx), pick(parents, idx), reason))
	}
	return results
}

// buffer publishes recs to the buffer and counts the buffered ones under
// the topics the client named.
func (d *Delivery) buffer(ctx context.Context, kind spill.Kind, recs []record.Record, named []string, parents []parent, reason string) []record.Result {
	subject := spill.Subjects{Prefix: d.opts.WAL.SubjectPrefix}.For(kind, recs[0].Topic)
	sp := d.startSpans(parents, "publish "+subject, recs, append(bufferAttrs(subject, len(recs)), attribute.String("spillway.buffer.reason", reason))...)
	res := d.opts.Buffer.Publish(ctx, kind, recs, reason)
	sp.end(recs, res)
	for i, r := range res {
		if r.Outcome == record.Buffered {
			d.m.buffered.WithLabelValues(d.topics.Value(named[i]), reason).Inc()
		}
	}
	return res
}

func topicsOf(recs []record.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Topic
	}
	return out
}

func pick[T any](all []T, idx []int) []T {
	out := make([]T, len(idx))
	for j, i := range idx {
		out[j] = all[i]
	}
	return out
}

func (d *Delivery) scatter(results []record.Result, idx []int, res []record.Result) {
	for j, i := range idx {
		results[i] = res[j]
	}
}

// Reject counts records that failed before they could be sent (a bad
// topic name, a malformed body) so that every failure is counted in one
// place.
func (d *Delivery) Reject(api, topic string, n int, reason record.Reason) {
	t := d.topics.Value(topic)
	d.m.received.WithLabelValues(api, t).Add(float64(n))
	d.m.failed.WithLabelValues(t, string(reason)).Add(float64(n))
}
