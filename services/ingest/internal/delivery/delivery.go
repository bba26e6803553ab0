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

// Placer tells the partition the producer's partitioner would choose for
// a record, once the topic's partition count is known: Partitioner is
// topic's, and false while that count is not known.
type Placer interface {
	Partitioner(topic string) (func(key []byte) int32, bool)
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
	// Placer gives a record that may be buffered its Kafka partition
	// before it is routed, so that its lane is its partition (with
	// Backlog); nil: such records keep their key's lane.
	Placer Placer
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

// item is one record on its way through the stages: the record, what the
// client gave for it, and its result. A stage looks only at the items
// still open; the one that answers an item closes it.
type item struct {
	rec    record.Record
	named  string // the topic the client named: ACLs, rules and metrics use it
	size   int    // as the client sent it, before our headers
	parent parent
	res    *record.Result // its place in its batch's results
	closed bool
}

// fail answers it with err, under topic, and closes it.
func (it *item) fail(topic string, err error) {
	*it.res = record.Fail(topic, err)
	it.closed = true
}

// batch is one Send's records on their way through the stages.
type batch struct {
	api     string
	client  identity.Client
	items   []item
	results []record.Result // items[i].res is &results[i]
	cost    int64           // what the records cost in memory, for the in-flight bound
}

// open is b's items not yet answered.
func (b *batch) open() []*item {
	out := make([]*item, 0, len(b.items))
	for i := range b.items {
		if !b.items[i].closed {
			out = append(out, &b.items[i])
		}
	}
	return out
}

// answers is each item's result, in order, with its record's id.
func (b *batch) answers() []record.Result {
	for i := range b.items {
		b.results[i].ID = b.items[i].rec.ID
	}
	return b.results
}

// records is the records of items, copied: a hand-off writes its trace
// headers on them.
func records(items []*item) []record.Record {
	out := make([]record.Record, len(items))
	for j, it := range items {
		out[j] = it.rec
	}
	return out
}

// answer gives each of items its result of res, in order, and closes it.
func answer(items []*item, res []record.Result) {
	for j, it := range items {
		*it.res, it.closed = res[j], true
	}
}

// Send delivers recs, received through api ("http" or "grpc"), and returns
// one result per record in order. The stages: admit (ids, timestamps,
// counts), reserve (the in-flight bound), authorize (rate limits, ACLs),
// validate, map the topics, route (write ahead, or Kafka behind the
// breaker and the buffer when Kafka cannot take them), and account
// (mirrors and metrics).
func (d *Delivery) Send(ctx context.Context, api string, recs []record.Record) []record.Result {
	return d.send(ctx, api, recs, nil)
}

// send is Send, with the batch each record belongs to (units; nil: each
// record alone), stored all or none.
func (d *Delivery) send(ctx context.Context, api string, recs []record.Record, units []int) []record.Result {
	b := d.admit(ctx, api, recs)
	if !d.reserve(b) {
		return b.answers()
	}
	defer d.release(b)
	pol := d.opts.Policy.Load()
	if d.authorize(b, pol) {
		d.validate(b.open(), pol)
		d.mapTopics(b.open(), pol)
		if units != nil {
			d.wholeUnits(b, units)
		}
		d.trace(ctx, b.open())
		d.route(ctx, b.open())
	}
	d.account(b)
	return b.answers()
}

// Deliver is an API's one call for a request: it refuses the whole
// request when the topic it names is not a topic or the API could not
// read it, answers the records the API could not parse with their
// reasons, sends the others (Send), and counts every outcome. It returns
// one result per record and refusal, each in its place, or the error the
// whole request is refused for.
func (d *Delivery) Deliver(ctx context.Context, req record.Request) ([]record.Result, error) {
	if err := d.refused(ctx, req); err != nil {
		return nil, err
	}
	n := len(req.Records) + len(req.Refused)
	if n == 0 { // a request with nothing to send: its topic is checked
		return nil, nil
	}
	if len(req.Refused) == 0 {
		return d.send(ctx, req.API, req.Records, req.Units), nil
	}
	results := make([]record.Result, n)
	taken := make([]bool, n)
	for _, r := range req.Refused {
		results[r.Index], taken[r.Index] = record.Fail(r.Topic, r.Err), true
		if reason := record.ReasonOf(r.Err); reason == record.ReasonUnauthenticated {
			d.denied(identity.From(ctx).Principal, reason)
		} else {
			d.count(req.API, r.Topic, max(r.N, 1), reason)
		}
	}
	if len(req.Records) == 0 {
		return results, nil
	}
	sent := d.send(ctx, req.API, req.Records, req.Units)
	j := 0
	for i := range results {
		if !taken[i] {
			results[i] = sent[j]
			j++
		}
	}
	return results, nil
}

// refused is the error the whole of req is refused for, counted; nil
// when it is not. The client's credentials come first, then the topic's
// name, then what the API could not read.
func (d *Delivery) refused(ctx context.Context, req record.Request) error {
	if req.Err != nil && record.ReasonOf(req.Err) == record.ReasonUnauthenticated {
		d.denied(identity.From(ctx).Principal, record.ReasonUnauthenticated)
		return req.Err
	}
	onlyTopic := req.Err == nil && len(req.Records) == 0 && len(req.Refused) == 0
	if req.Topic != "" || onlyTopic { // a request of a topic alone asks whether it is one
		if err := record.ValidateTopic(req.Topic); err != nil {
			d.count(req.API, "", 1, record.ReasonInvalid)
			return err
		}
	}
	if req.Err != nil {
		d.count(req.API, req.Topic, 1, record.ReasonOf(req.Err))
		return req.Err
	}
	return nil
}

// count counts n records of topic received and refused for reason
// before they could be sent.
func (d *Delivery) count(api, topic string, n int, reason record.Reason) {
	t := d.label(topic)
	d.m.received.WithLabelValues(api, t).Add(float64(n))
	d.m.failed.WithLabelValues(t, string(reason)).Add(float64(n))
}

// admit gives each record an id and a timestamp, refuses those whose
// topic, as the client named it, is not a topic, and counts each received.
func (d *Delivery) admit(ctx context.Context, api string, recs []record.Record) *batch {
	b := &batch{api: api, client: identity.From(ctx), items: make([]item, len(recs)), results: make([]record.Result, len(recs))}
	now := time.Now()
	d.ids.assign(recs)
	var topicErr error
	for i := range recs {
		it := &b.items[i]
		it.rec, it.named, it.size, it.res = recs[i], recs[i].Topic, recs[i].Size(), &b.results[i]
		if it.rec.Timestamp.IsZero() { // the receive time, wherever the record goes
			it.rec.Timestamp = now
		}
		if i == 0 || it.named != b.items[i-1].named { // once per run of a topic
			topicErr = record.ValidateTopic(it.named)
		}
		if topicErr != nil { // the name the client gave: no use mapping it
			it.fail(it.named, topicErr)
		}
	}
	// One metric update per topic, not per record: a batch's records
	// almost always share their topic.
	var received, receivedBytes tally
	for i := range b.items {
		received.add(tallyKey{b.items[i].named}, 1)
		receivedBytes.add(tallyKey{b.items[i].named}, float64(b.items[i].size))
	}
	for k, n := range received.all() {
		d.m.received.WithLabelValues(api, d.label(k[0])).Add(n)
	}
	for k, n := range receivedBytes.all() {
		d.m.receivedBytes.WithLabelValues(api, d.label(k[0])).Add(n)
	}
	return b
}

// RecordOverhead is what a record costs the ingest in memory beyond its
// key, value and headers: its Record, id, result, its item in the stages
// and the Kafka message made of it. A 16 MiB NDJSON body of 8.4 M
// one-byte records took the ingest from 70 MB to over 9 GB, about 1.1 KB
// a record (issue 15).
const RecordOverhead = 1024

// reserve takes b's records into the in-flight bounds (records, and what
// they cost in memory), or refuses them all when the ingest is
// overloaded: refusing is better than growing memory. A single request
// over a bound still goes through when nothing else is in flight, so that
// a bound set below one request does not refuse it for ever; one request
// is itself bounded by server.max_request_records and the body limits.
func (d *Delivery) reserve(b *batch) bool {
	n := int64(len(b.items))
	b.cost = n * RecordOverhead
	for i := range b.items {
		b.cost += int64(b.items[i].size)
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
		for i := range b.items {
			it := &b.items[i]
			it.fail(it.named, record.Errorf(record.ReasonOverloaded, "%s", msg))
			d.m.failed.WithLabelValues(d.label(it.named), string(record.ReasonOverloaded)).Inc()
		}
		return false
	}
	d.m.inFlight.Add(float64(n))
	d.m.inFlightBytes.Add(float64(b.cost))
	return true
}

// release gives b's records back to the in-flight bounds.
func (d *Delivery) release(b *batch) {
	d.inFlight.Add(-int64(len(b.items)))
	d.inBytes.Add(-b.cost)
	d.m.inFlight.Sub(float64(len(b.items)))
	d.m.inFlightBytes.Sub(float64(b.cost))
}

// authorize takes the client's rate limit for the whole batch (its
// principal's buckets, whatever the metric label cap), and refuses each
// record whose topic the client may not produce to, under the name it
// gave or the Kafka topic that maps to. It returns false when the rate
// limit refused the batch.
func (d *Delivery) authorize(b *batch, pol *policy.Policy) bool {
	total := 0
	for i := range b.items {
		total += b.items[i].size
	}
	if err := pol.TakeRate(b.client, len(b.items), total); err != nil {
		d.denied(b.client.Principal, record.ReasonRateLimited)
		for i := range b.items {
			b.items[i].fail(b.items[i].named, err)
		}
		return false
	}
	// The name the client gave and the Kafka topic it maps to, once per
	// topic of the batch (records of one topic come in runs).
	var (
		last string
		err  error
	)
	for i := range b.items {
		it := &b.items[i]
		if it.closed {
			continue
		}
		if i == 0 || it.named != last {
			last, err = it.named, pol.Authorize(b.client, it.named)
		}
		if err != nil {
			it.fail(it.named, err)
			d.denied(b.client.Principal, record.ReasonForbidden)
		}
	}
	return true
}

// validate refuses the records that carry a header only Spillway may set,
// and those that break a validation rule of the topic the client named or
// of the Kafka topic it maps to.
func (d *Delivery) validate(items []*item, pol *policy.Policy) {
	for _, it := range items {
		if h, ok := ownHeader(it.rec.Headers); ok {
			// A forged id would let a client make consumers that
			// de-duplicate on it drop another client's record.
			it.fail(it.named, record.Errorf(record.ReasonInvalid,
				"the record header %q is Spillway's own (the record's id, set by Spillway): a client may not set it", h))
			continue
		}
		if rule, err := pol.Validate(it.named, &it.rec); err != nil {
			it.fail(it.named, err)
			d.m.rejected.WithLabelValues(d.label(it.named), rule).Inc()
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
func (d *Delivery) mapTopics(items []*item, pol *policy.Policy) {
	var (
		named, mapped string
		invalid       error
	)
	for i, it := range items {
		if i == 0 || it.named != named { // once per run of a topic
			named, mapped = it.named, pol.Map(it.named)
			invalid = record.ValidateTopic(mapped) // a prefix rewrite can make one
		}
		it.rec.Topic = mapped
		if invalid != nil {
			it.fail(it.named, record.Errorf(record.ReasonInvalid, "topic %q is mapped to an invalid topic (topic_mapping): %s", it.named, record.ClientMessage(invalid)))
			continue
		}
		if err := record.CheckSize(it.size, d.opts.MaxRecordBytes); err != nil { // no use sending or buffering it
			it.fail(it.rec.Topic, err)
		}
	}
}

// wholeUnits refuses the open records of each unit (a batch stored all
// or none) in which a record was refused before sending, as a broker
// refuses a batch whole: with the first refusal's reason, and
// record.ErrBatchRefused as the cause.
func (d *Delivery) wholeUnits(b *batch, units []int) {
	refused := map[int]record.Reason{}
	for i := range b.items {
		if it := &b.items[i]; it.closed {
			if _, ok := refused[units[i]]; !ok {
				refused[units[i]] = record.ReasonOf(it.res.Err)
			}
		}
	}
	if len(refused) == 0 {
		return
	}
	for i := range b.items {
		it := &b.items[i]
		if reason, ok := refused[units[i]]; ok && !it.closed {
			it.fail(it.named, &record.Error{Reason: reason, Message: "not stored", Err: record.ErrBatchRefused})
		}
	}
}

// trace reads each record's parent trace context, before any hop
// overwrites the record's trace headers.
func (d *Delivery) trace(ctx context.Context, items []*item) {
	request := trace.SpanFromContext(ctx).SpanContext()
	for _, it := range items {
		it.parent = d.parentOf(ctx, request, &it.rec)
	}
}

// route sends the open records on: to the buffer first for the topics
// written ahead, to Kafka for the others.
func (d *Delivery) route(ctx context.Context, items []*item) {
	if d.opts.Backlog != nil && d.opts.Placer != nil {
		d.place(items)
	}
	var ahead, direct []*item
	for _, it := range items {
		if d.writesAhead(it.rec.Topic) {
			ahead = append(ahead, it)
		} else {
			direct = append(direct, it)
		}
	}
	if len(ahead) > 0 {
		d.buffer(ctx, spill.WriteAhead, ahead, "write_ahead")
	}
	if len(direct) > 0 && d.opts.Backlog.Active() {
		direct = d.behindBacklog(ctx, direct)
	}
	if len(direct) > 0 {
		d.toKafka(ctx, direct)
	}
}

// countsWait bounds how long a record waits at start for the partition
// counts shared in the buffer.
const countsWait = 2 * time.Second

// place gives each record that may be buffered, and whose partition the
// client left to Kafka, the partition the producer's partitioner chooses,
// so that its lane is its partition: once a partition spilled, all of its
// later records wait behind its backlog, whatever their keys. A record
// keeps its key's lane while its topic's partition count is not known
// (never read from Kafka, by this ingest or another: the counts are
// shared in the buffer), and while that lane still has a backlog
// (buffered before the count was known), so that it waits behind its
// key's earlier records.
func (d *Delivery) place(items []*item) {
	active := d.opts.Backlog.Active()
	var (
		last        string
		seen        bool
		buffered    bool // last's records may be buffered
		asked       bool // the placer was asked for last's partitioner
		partitionOf func(key []byte) int32
		known       bool // last's partition count is known: partitionOf
		waited      bool
	)
	for _, it := range items {
		r := &it.rec
		if r.Partition != record.AnyPartition {
			continue
		}
		if !seen || r.Topic != last { // records of one topic come in runs
			last, seen, buffered, asked = r.Topic, true, d.spills(r.Topic) || d.writesAhead(r.Topic), false
		}
		if !buffered || active && d.opts.Backlog.Has(r.Topic, spill.Lane(r)) {
			continue
		}
		if !asked {
			partitionOf, known = d.opts.Placer.Partitioner(r.Topic)
			asked = true
			if !known && !waited {
				// At start, the counts shared in the buffer (by other
				// ingests, or this one before a restart) are read first:
				// a key's lane must not change while its records are
				// buffered.
				d.opts.Backlog.WaitCounts(countsWait)
				waited = true
				partitionOf, known = d.opts.Placer.Partitioner(r.Topic)
			}
		}
		if known {
			r.Partition = partitionOf(r.Key)
		}
	}
}

// behindBacklog buffers the records of direct whose lane has a backlog
// (producer.order partition): they wait behind it, in the buffer, and are
// answered buffered. It returns the others, for Kafka, in their order.
func (d *Delivery) behindBacklog(ctx context.Context, direct []*item) []*item {
	var spillable []*item
	for _, it := range direct {
		if d.spills(it.rec.Topic) { // a topic never buffered has no order through the buffer to keep
			spillable = append(spillable, it)
		}
	}
	if len(spillable) == 0 {
		return direct
	}
	recs := records(spillable)
	d.opts.Backlog.Pace(ctx, recs, d.opts.Breaker.MaxWait)
	behind := d.opts.Backlog.Behind(ctx, recs)
	var wait []*item
	for j, it := range spillable {
		if behind[j] {
			wait = append(wait, it)
		}
	}
	if len(wait) == 0 {
		return direct
	}
	d.buffer(ctx, spill.Spilled, wait, "backlog")
	d.opts.Backlog.Done(recs, behind)
	rest := make([]*item, 0, len(direct)-len(wait))
	for _, it := range direct {
		if !it.closed {
			rest = append(rest, it)
		}
	}
	return rest
}

// account hands the acknowledged records to the mirrors, and counts the
// outcomes per topic and per client.
func (d *Delivery) account(b *batch) {
	d.mirror(b.items)
	d.countClient(b.client, b.items)
	var delivered, failed tally
	for i := range b.items {
		it := &b.items[i]
		switch it.res.Outcome {
		case record.Delivered:
			delivered.add(tallyKey{it.named}, 1)
		case record.Failed:
			failed.add(tallyKey{it.named, string(record.ReasonOf(it.res.Err))}, 1)
		}
	}
	for k, n := range delivered.all() {
		d.m.delivered.WithLabelValues(d.label(k[0])).Add(n)
	}
	for k, n := range failed.all() {
		d.m.failed.WithLabelValues(d.label(k[0]), k[1]).Add(n)
	}
}

// mirror hands each mirror a copy of the acknowledged records of its
// topics. The copy lets the mirror's partitioner choose the partition: the
// mirror's topic may have another partition count.
func (d *Delivery) mirror(items []item) {
	for _, m := range d.opts.Mirrors {
		var copies []record.Record
		for i := range items {
			it := &items[i]
			if (it.res.Outcome == record.Delivered || it.res.Outcome == record.Buffered) && m.Matches(it.rec.Topic) {
				c := it.rec
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
func (d *Delivery) countClient(c identity.Client, items []item) {
	principal := d.principals.Value(c.Principal)
	library, version := c.Library, c.Version
	if d.libraries.Value(library+"/"+version) == monitor.OtherLabel {
		library, version = monitor.OtherLabel, ""
	}
	d.m.clientRequests.WithLabelValues(principal, library, version).Inc()
	var records, bytes tally
	for i := range items {
		records.add(tallyKey{items[i].named, items[i].res.Outcome.String()}, 1)
		bytes.add(tallyKey{items[i].named}, float64(items[i].size))
	}
	for k, n := range records.all() {
		d.m.clientRecords.WithLabelValues(principal, d.label(k[0]), k[1]).Add(n)
	}
	for k, n := range bytes.all() {
		d.m.clientBytes.WithLabelValues(principal, d.label(k[0])).Add(n)
	}
}

// toKafka produces items behind the breaker and spills those Kafka could
// not take, where their topic allows it. A record waits at most
// producer.cb.max_wait, and less when the breaker opens meanwhile; the
// records not yet sent then are withdrawn before they are spilled
// (record.ErrWithdrawn), and Kafka never gets them. One spilled after it
// was sent and Kafka did not answer in time may still reach Kafka, and is
// counted as a possible duplicate.
func (d *Delivery) toKafka(ctx context.Context, items []*item) {
	recs := records(items)
	sp := d.startSpans(items, recs, func() (string, []attribute.KeyValue) {
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
	answer(items, results)

	// A record whose client has left is not spilled: it was never
	// acknowledged, the client will send it again if it cares, and Kafka
	// may still take it if it was on the wire; spilling it too would only
	// make a duplicate. It is counted as failed.
	if ctx.Err() != nil {
		return
	}
	var reasons []string // in the order first met
	byReason := map[string][]*item{}
	for _, it := range items {
		if it.res.Outcome == record.Failed && record.ReasonOf(it.res.Err).Retriable() && d.spills(it.rec.Topic) {
			reason := spillReason
			if reason == "" {
				reason = string(record.ReasonOf(it.res.Err))
			}
			if _, ok := byReason[reason]; !ok {
				reasons = append(reasons, reason)
			}
			byReason[reason] = append(byReason[reason], it)
		}
	}
	for _, reason := range reasons {
		spilling := byReason[reason]
		// On the wire when the wait ended: Kafka may still take it.
		sent := make([]bool, len(spilling))
		for j, it := range spilling {
			sent[j] = reason == string(record.ReasonTimeout) && !errors.Is(it.res.Err, record.ErrWithdrawn)
		}
		recs := records(spilling)
		if d.opts.Backlog != nil {
			// The lanes get a backlog before their records are buffered, so
			// that the next records of each lane wait behind them.
			d.opts.Backlog.Spilling(ctx, recs)
		}
		d.buffer(ctx, spill.Spilled, spilling, reason)
		if d.opts.Backlog != nil {
			d.opts.Backlog.Done(recs, nil)
		}
		for j, it := range spilling {
			if sent[j] && it.res.Outcome == record.Buffered {
				d.m.duplicates.WithLabelValues(d.label(it.named)).Inc()
			}
		}
	}
}

// buffer publishes items to the buffer, answers them, and counts the
// buffered ones under the topics the client named.
func (d *Delivery) buffer(ctx context.Context, kind spill.Kind, items []*item, reason string) {
	recs := records(items)
	subject := spill.Subjects{Prefix: d.opts.WAL.SubjectPrefix}.For(kind, recs[0].Topic)
	sp := d.startSpans(items, recs, func() (string, []attribute.KeyValue) {
		return "publish " + subject, append(bufferAttrs(subject, len(recs)), attribute.String("spillway.buffer.reason", reason))
	})
	res := d.opts.Buffer.Publish(ctx, kind, recs, reason)
	sp.end(recs, res)
	answer(items, res)
	for _, it := range items {
		if it.res.Outcome == record.Buffered {
			d.m.buffered.WithLabelValues(d.label(it.named), reason).Inc()
		}
	}
}

// label is topic's metric label: "" for a name that is not a topic (no
// label of the client's making), "other" past topics_max.
func (d *Delivery) label(topic string) string {
	if record.ValidateTopic(topic) != nil {
		topic = ""
	}
	return d.topics.Value(topic)
}

// PossibleDuplicates counts n records of topic (as the client named it)
// that were stored while their request was answered as failed, so that
// the client's retry may store them again: a Kafka-protocol partition
// the buffer failed midway.
func (d *Delivery) PossibleDuplicates(topic string, n int) {
	d.m.duplicates.WithLabelValues(d.label(topic)).Add(float64(n))
}
