// Package delivery is the one path every record takes after an API parsed
// it: it gets an id and is counted; it is written ahead to the JetStream
// buffer, or sent to Kafka behind a circuit breaker and spilled to the
// buffer when Kafka cannot take it; and its outcome is counted, whichever
// API it came from.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/spillway/spillway/pkg/breaker"
	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/monitor"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/services/ingest/internal/backlog"
	"github.com/spillway/spillway/services/ingest/internal/identity"
	"github.com/spillway/spillway/services/ingest/internal/policy"
)

// Producer writes records to Kafka and reports each one's outcome.
type Producer interface {
	breaker.Kafka
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
	// MaxInFlightBytes bounds what the records received and not yet
	// answered cost in memory (their size plus RecordOverhead each); 0: no
	// bound.
	MaxInFlightBytes int64
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
	// Backlog keeps a lane that spilled behind its buffered records
	// (producer.order partition); nil: producer.order none.
	Backlog *backlog.Tracker
}

// Delivery sends records on their way and measures what becomes of them.
type Delivery struct {
	opts       Options
	tracer     trace.Tracer
	recording  bool // spans are made (a TracerProvider was given)
	ids        *idSource
	inFlight   atomic.Int64
	inBytes    atomic.Int64
	kafka      *breaker.Producer
	topics     *monitor.BoundedLabels
	principals *monitor.BoundedLabels
	libraries  *monitor.BoundedLabels
	m          metrics
}

// New returns the delivery path.
func New(o Options) *Delivery {
	if o.StopWaiting == nil {
		o.StopWaiting = context.Background()
	}
	recording := o.TracerProvider != nil
	if !recording {
		o.TracerProvider = noop.NewTracerProvider()
	}
	if o.Propagators == nil {
		o.Propagators = propagation.TraceContext{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Policy == nil { // no ACLs, limits, rules or mapping
		o.Policy = &atomic.Pointer[policy.Policy]{}
		none, _ := policy.New(&config.Config{}, nil)
		o.Policy.Store(none)
	}
	d := &Delivery{
		opts:       o,
		tracer:     o.TracerProvider.Tracer("github.com/spillway/spillway/services/ingest/internal/delivery"),
		recording:  recording,
		ids:        newIDSource(),
		topics:     monitor.NewBoundedLabels(o.MaxTopics),
		principals: monitor.NewBoundedLabels(max(o.MaxPrincipals, 1)),
		libraries:  monitor.NewBoundedLabels(max(o.MaxLibraries, 1)),
		m:          newMetrics(o.Registry),
	}
	d.m.breakerState.Set(0) // closed; the series exists from the start
	d.kafka = breaker.New(o.Producer, breaker.Options{
		Name:     "kafka",
		Settings: o.Breaker,
		MaxWait:  o.Breaker.MaxWait,
		Stop:     o.StopWaiting,
		Logger:   o.Logger,
		OnStateChange: func(_, to breaker.State) {
			d.m.breakerState.Set(float64(to))
			d.m.breakerChanges.WithLabelValues(to.String()).Inc()
		},
	})
	if o.Backlog != nil {
		o.Backlog.SetKafkaHealthy(func() bool { return d.kafka.State() != breaker.Open })
	}
	return d
}

// BreakerState is the Kafka breaker's state: closed, half-open or open.
func (d *Delivery) BreakerState() string { return d.kafka.State().String() }

// writesAhead says whether topic's records go to the buffer first.
func (d *Delivery) writesAhead(topic string) bool {
	return d.opts.Buffer != nil && d.opts.WAL.WritesAhead(topic)
}

// spills says whether topic's records may be buffered when Kafka cannot
// take them.
func (d *Delivery) spills(topic string) bool {
	return d.opts.Buffer != nil && d.opts.WAL.Spills(topic)
}

// batch is one Send's records on their way through the stages. A stage
// looks only at the records that are still open; the one that answers a
// record closes it.
type batch struct {
	api     string
	client  identity.Client
	recs    []record.Record
	named   []string // the topics the client named: ACLs, rules and metrics use them
	sizes   []int    // as the client sent them, before our headers
	parents []parent
	results []record.Result
	closed  []bool
	cost    int64 // what the records cost in memory, for the in-flight bound
}

// fail answers record i with err and closes it.
func (b *batch) fail(i int, topic string, err error) {
	b.results[i] = record.Fail(topic, err)
	b.closed[i] = true
}

// Send delivers recs, received through api ("http" or "grpc"), and returns
// one result per record in order. The stages: admit (ids, counts, the
// in-flight bound), authorize (rate limits, ACLs), validate, map the
// topics, route (write ahead, or Kafka behind the breaker and the buffer
// when Kafka cannot take them), and account (mirrors and metrics).
func (d *Delivery) Send(ctx context.Context, api string, recs []record.Record) []record.Result {
	b := d.admit(ctx, api, recs)
	if !d.reserve(b) {
		return b.results
	}
	defer d.release(b)
	pol := d.opts.Policy.Load()
	if d.authorize(b, pol) {
		d.validate(b, pol)
		d.mapTopics(b, pol)
		b.parents = d.parents(ctx, recs)
		d.route(ctx, b)
	}
	d.account(b)
	return b.results
}

// admit gives each record an id and a timestamp, and counts it received.
func (d *Delivery) admit(ctx context.Context, api string, recs []record.Record) *batch {
	b := &batch{
		api:     api,
		client:  identity.From(ctx),
		recs:    recs,
		named:   make([]string, len(recs)),
		sizes:   make([]int, len(recs)),
		results: make([]record.Result, len(recs)),
		closed:  make([]bool, len(recs)),
	}
	now := time.Now()
	d.ids.assign(recs)
	for i := range recs {
		b.named[i] = recs[i].Topic
		b.sizes[i] = recs[i].Size()
		if recs[i].Timestamp.IsZero() { // the receive time, wherever the record goes
			recs[i].Timestamp = now
		}
	}
	// One metric update per topic, not per record: a batch's records
	// almost always share their topic.
	var received, receivedBytes tally
	for i := range recs {
		received.add(tallyKey{recs[i].Topic}, 1)
		receivedBytes.add(tallyKey{recs[i].Topic}, float64(b.sizes[i]))
	}
	for k, n := range received.all() {
		d.m.received.WithLabelValues(api, d.topics.Value(k[0])).Add(n)
	}
	for k, n := range receivedBytes.all() {
		d.m.receivedBytes.WithLabelValues(api, d.topics.Value(k[0])).Add(n)
	}
	return b
}

// RecordOverhead is what a record costs the ingest in memory beyond its
// key, value and headers: its Record, id, result, the per-stage slices and
// the Kafka message made of it. A 16 MiB NDJSON body of 8.4 M one-byte
// records took the ingest from 70 MB to over 9 GB, about 1.1 KB a record
// (issue 15).
const RecordOverhead = 1024

// reserve takes b's records into the in-flight bounds (records, and what
// they cost in memory), or refuses them all when the ingest is
// overloaded: refusing is better than growing memory. A single request
// over a bound still goes through when nothing else is in flight, so that
// a bound set below one request does not refuse it for ever; one request
// is itself bounded by server.max_request_records and the body limits.
func (d *Delivery) reserve(b *batch) bool {
	n := int64(len(b.recs))
	b.cost = n * RecordOverhead
	for _, s := range b.sizes {
		b.cost += int64(s)
	}
	records, bytes := d.inFlight.Add(n), d.inBytes.Add(b.cost)
	var msg string
	switch {
	case d.opts.MaxInFlight > 0 && records > int64(d.opts.MaxInFlight) && records > n:
		msg = fmt.Sprintf("the ingest has %d records in flight (server.max_in_flight_records): retry later", records-n)
	case d.opts.MaxInFlightBytes > 0 && bytes > d.opts.MaxInFlightBytes && bytes > b.cost:
		msg = fmt.Sprintf("the ingest has %d bytes of records in flight, and these records need %d more (server.max_in_flight_bytes %d): retry later",
			bytes-b.cost, b.cost, d.opts.MaxInFlightBytes)
	}
	if msg != "" {
		d.inFlight.Add(-n)
		d.inBytes.Add(-b.cost)
		for i := range b.recs {
			b.results[i] = record.Fail(b.recs[i].Topic, record.Errorf(record.ReasonOverloaded, "%s", msg))
			b.results[i].ID = b.recs[i].ID
			d.m.failed.WithLabelValues(d.topics.Value(b.recs[i].Topic), string(record.ReasonOverloaded)).Inc()
		}
		return false
	}
	d.m.inFlight.Add(float64(n))
	d.m.inFlightBytes.Add(float64(b.cost))
	return true
}

// release gives b's records back to the in-flight bounds.
func (d *Delivery) release(b *batch) {
	d.inFlight.Add(-int64(len(b.recs)))
	d.inBytes.Add(-b.cost)
	d.m.inFlight.Sub(float64(len(b.recs)))
	d.m.inFlightBytes.Sub(float64(b.cost))
}

// authorize takes the client's rate limit for the whole batch (its
// principal's buckets, whatever the metric label cap), and refuses each
// record whose topic the client may not produce to, under the name it
// gave or the Kafka topic that maps to. It returns false when the rate
// limit refused the batch.
func (d *Delivery) authorize(b *batch, pol *policy.Policy) bool {
	total := 0
	for _, n := range b.sizes {
		total += n
	}
	if err := pol.TakeRate(b.client, len(b.recs), total); err != nil {
		d.denied(b.client.Principal, record.ReasonRateLimited)
		for i := range b.recs {
			b.fail(i, b.recs[i].Topic, err)
		}
		return false
	}
	// The name the client gave and the Kafka topic it maps to, once per
	// topic of the batch (records of one topic come in runs).
	var (
		last string
		err  error
	)
	for i := range b.recs {
		if i == 0 || b.named[i] != last {
			last, err = b.named[i], pol.Authorize(b.client, b.named[i])
		}
		if err != nil {
			b.fail(i, b.named[i], err)
			d.denied(b.client.Principal, record.ReasonForbidden)
		}
	}
	return true
}

// validate refuses the records that carry a header only Spillway may set,
// and those that break a validation rule of the topic the client named or
// of the Kafka topic it maps to.
func (d *Delivery) validate(b *batch, pol *policy.Policy) {
	for i := range b.recs {
		if b.closed[i] {
			continue
		}
		if h, ok := ownHeader(b.recs[i].Headers); ok {
			// A forged id would let a client make consumers that
			// de-duplicate on it drop another client's record.
			b.fail(i, b.named[i], record.Errorf(record.ReasonInvalid,
				"the record header %q is Spillway's own (the record's id, set by Spillway): a client may not set it", h))
			continue
		}
		if rule, err := pol.Validate(b.named[i], &b.recs[i]); err != nil {
			b.fail(i, b.named[i], err)
			d.m.rejected.WithLabelValues(d.topics.Value(b.named[i]), rule).Inc()
		}
	}
}

// ownHeader returns the first of headers that only Spillway sets, in any
// letter case.
func ownHeader(headers []record.Header) (string, bool) {
	for _, h := range headers {
		if strings.EqualFold(h.Key, record.IDHeader) {
			return h.Key, true
		}
	}
	return "", false
}

// mapTopics gives each record its Kafka topic (topic_mapping), and refuses
// those Kafka would refuse: a mapped topic that is not a topic, a record
// over Kafka's size limit.
func (d *Delivery) mapTopics(b *batch, pol *policy.Policy) {
	for i := range b.recs {
		if b.closed[i] {
			continue
		}
		b.recs[i].Topic = pol.Map(b.named[i])
		if err := record.ValidateTopic(b.recs[i].Topic); err != nil { // a prefix rewrite can make one
			b.fail(i, b.named[i], record.Errorf(record.ReasonInvalid, "topic %q is mapped to an invalid topic (topic_mapping): %s", b.named[i], record.ClientMessage(err)))
			continue
		}
		if b.sizes[i] > d.opts.MaxRecordBytes { // no use sending or buffering it
			b.fail(i, b.recs[i].Topic, record.Errorf(record.ReasonTooLarge,
				"record of %d bytes is over the limit of %d bytes (kafka.message.max.bytes)", b.sizes[i], d.opts.MaxRecordBytes))
		}
	}
}

// route sends the open records on: to the buffer first for the topics
// written ahead, to Kafka for the others.
func (d *Delivery) route(ctx context.Context, b *batch) {
	var ahead, direct []int
	for i := range b.recs {
		switch {
		case b.closed[i]:
		case d.writesAhead(b.recs[i].Topic):
			ahead = append(ahead, i)
		default:
			direct = append(direct, i)
		}
	}
	if len(ahead) > 0 {
		scatter(b.results, ahead, d.buffer(ctx, spill.WriteAhead, pick(b.recs, ahead), pick(b.named, ahead), pick(b.parents, ahead), "write_ahead"))
	}
	if len(direct) > 0 && d.opts.Backlog.Active() {
		direct = d.behindBacklog(ctx, b, direct)
	}
	if len(direct) > 0 {
		scatter(b.results, direct, d.toKafka(ctx, pick(b.recs, direct), pick(b.named, direct), pick(b.parents, direct)))
	}
}

// behindBacklog buffers the records of direct whose lane has a backlog
// (producer.order partition): they wait behind it, in the buffer, and are
// answered buffered. It returns the others, for Kafka.
func (d *Delivery) behindBacklog(ctx context.Context, b *batch, direct []int) []int {
	var spillable []int
	var rest []int
	for _, i := range direct {
		if d.spills(b.recs[i].Topic) {
			spillable = append(spillable, i)
		} else {
			rest = append(rest, i) // never buffered: no order through the buffer to keep
		}
	}
	if len(spillable) == 0 {
		return direct
	}
	recs := pick(b.recs, spillable)
	behind := d.opts.Backlog.Behind(ctx, recs)
	var wait []int
	for j, i := range spillable {
		if behind[j] {
			wait = append(wait, i)
		} else {
			rest = append(rest, i)
		}
	}
	if len(wait) > 0 {
		scatter(b.results, wait, d.buffer(ctx, spill.Spilled, pick(b.recs, wait), pick(b.named, wait), pick(b.parents, wait), "backlog"))
		d.opts.Backlog.Done(recs, behind)
	}
	slices.Sort(rest)
	return rest
}

// account hands the acknowledged records to the mirrors, gives each result
// its record's id, and counts the outcomes per topic and per client.
func (d *Delivery) account(b *batch) {
	d.mirror(b.recs, b.results)
	d.countClient(b.client, b.named, b.sizes, b.results)
	var delivered, failed tally
	for i, r := range b.results {
		b.results[i].ID = b.recs[i].ID
		switch r.Outcome {
		case record.Delivered:
			delivered.add(tallyKey{b.named[i]}, 1)
		case record.Failed:
			failed.add(tallyKey{b.named[i], string(record.ReasonOf(r.Err))}, 1)
		}
	}
	for k, n := range delivered.all() {
		d.m.delivered.WithLabelValues(d.topics.Value(k[0])).Add(n)
	}
	for k, n := range failed.all() {
		d.m.failed.WithLabelValues(d.topics.Value(k[0]), k[1]).Add(n)
	}
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

// denied counts a refused request or record, per principal and reason
// (unauthenticated, forbidden, rate_limited).
func (d *Delivery) denied(principal string, reason record.Reason) {
	d.m.denied.WithLabelValues(d.principals.Value(principal), string(reason)).Inc()
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
// gave, for the metrics. A record waits at most producer.cb.max_wait, and
// less when the breaker opens meanwhile; the records not yet sent then
// are withdrawn before they are spilled (record.ErrWithdrawn), and Kafka
// never gets them. One spilled after it was sent and Kafka did not answer
// in time may still reach Kafka, and is counted as a possible duplicate.
func (d *Delivery) toKafka(ctx context.Context, recs []record.Record, named []string, parents []parent) []record.Result {
	sp := d.startSpans(parents, recs, func() (string, []attribute.KeyValue) {
		return "send " + recs[0].Topic, kafkaAttrs(recs[0].Topic, len(recs))
	})
	start := time.Now()
	results, err := d.kafka.Produce(ctx, recs) // its wait ends at StopWaiting too
	spillReason := ""
	if errors.Is(err, breaker.ErrOpen) {
		sp.event("circuit breaker open: Kafka not tried")
		spillReason = "breaker_open"
		for i := range recs {
			results[i] = record.Fail(recs[i].Topic, &record.Error{
				Reason:  record.ReasonUnavailable,
				Message: "Kafka is failing (circuit breaker open) and this topic is never buffered (producer.wal.disable_topics or mode disable)",
			})
		}
	} else {
		d.m.produceTime.Observe(time.Since(start).Seconds())
	}

	sp.end(recs, results)

	// A record whose client has left is not spilled: it was never
	// acknowledged, the client will send it again if it cares, and Kafka
	// may still take it if it was on the wire; spilling it too would only
	// make a duplicate. It is counted as failed.
	left := ctx.Err() != nil
	byReason := map[string][]int{}
	for i, r := range results {
		if r.Outcome == record.Failed && record.ReasonOf(r.Err).Retriable() && d.spills(recs[i].Topic) && !left {
			reason := spillReason
			if reason == "" {
				reason = string(record.ReasonOf(r.Err))
			}
			byReason[reason] = append(byReason[reason], i)
		}
	}
	for reason, idx := range byReason {
		var sent []bool // on the wire when the wait ended: Kafka may still take it
		if reason == string(record.ReasonTimeout) {
			sent = make([]bool, len(idx))
			for j, i := range idx {
				sent[j] = !errors.Is(results[i].Err, record.ErrWithdrawn)
			}
		}
		spilling := pick(recs, idx)
		if d.opts.Backlog != nil {
			// The lanes get a backlog before their records are buffered, so
			// that the next records of each lane wait behind them.
			d.opts.Backlog.Spilling(ctx, spilling)
		}
		scatter(results, idx, d.buffer(ctx, spill.Spilled, spilling, pick(named, idx), pick(parents, idx), reason))
		if d.opts.Backlog != nil {
			d.opts.Backlog.Done(spilling, nil)
		}
		for j, i := range idx {
			if sent != nil && sent[j] && results[i].Outcome == record.Buffered {
				d.m.duplicates.WithLabelValues(d.topics.Value(named[i])).Inc()
			}
		}
	}
	return results
}

// buffer publishes recs to the buffer and counts the buffered ones under
// the topics the client named.
func (d *Delivery) buffer(ctx context.Context, kind spill.Kind, recs []record.Record, named []string, parents []parent, reason string) []record.Result {
	subject := spill.Subjects{Prefix: d.opts.WAL.SubjectPrefix}.For(kind, recs[0].Topic)
	sp := d.startSpans(parents, recs, func() (string, []attribute.KeyValue) {
		return "publish " + subject, append(bufferAttrs(subject, len(recs)), attribute.String("spillway.buffer.reason", reason))
	})
	res := d.opts.Buffer.Publish(ctx, kind, recs, reason)
	sp.end(recs, res)
	for i, r := range res {
		if r.Outcome == record.Buffered {
			d.m.buffered.WithLabelValues(d.topics.Value(named[i]), reason).Inc()
		}
	}
	return res
}

func pick[T any](all []T, idx []int) []T {
	out := make([]T, len(idx))
	for j, i := range idx {
		out[j] = all[i]
	}
	return out
}

func scatter(results []record.Result, idx []int, res []record.Result) {
	for j, i := range idx {
		results[i] = res[j]
	}
}

// PossibleDuplicates counts n records of topic (as the client named it)
// that were stored while their request was answered as failed, so that
// the client's retry may store them again: a Kafka-protocol partition
// the buffer failed midway.
func (d *Delivery) PossibleDuplicates(topic string, n int) {
	d.m.duplicates.WithLabelValues(d.topics.Value(topic)).Add(float64(n))
}

// Refuse counts n records that an API refused before it could send them
// (a bad topic name, a malformed body: reason invalid, or too_large), so
// that every failure is counted here. A request refused for its
// credentials (reason unauthenticated, n 0) is counted per principal, the
// one ctx holds.
func (d *Delivery) Refuse(ctx context.Context, api, topic string, n int, reason record.Reason) {
	if reason == record.ReasonUnauthenticated {
		d.denied(identity.From(ctx).Principal, reason)
		return
	}
	if record.ValidateTopic(topic) != nil {
		topic = "" // not a topic: no label of the client's making
	}
	t := d.topics.Value(topic)
	d.m.received.WithLabelValues(api, t).Add(float64(n))
	d.m.failed.WithLabelValues(t, string(reason)).Add(float64(n))
}
