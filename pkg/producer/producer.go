// Package producer writes records to Kafka and reports, for each record,
// whether Kafka acknowledged it with the configured acks, and where it
// went. Concurrent callers share produce batches: a caller waits only for
// the batch its records joined.
//
// The records of one Start call that go to one partition (a unit) go to
// Kafka together: consecutive and in call order in one record batch, so
// Kafka gives them consecutive offsets, base+i, as it does a Kafka
// client's batch. batch.num.messages never cuts a unit: a unit over it
// goes whole, in a batch of its own. Only a unit whose records alone are
// over the batch's byte bound (batch.size, or the topic's
// max.message.bytes: Kafka would refuse it whole) is cut, into as few
// batches as that bound allows, sent one after the other, the first ones
// its own; their offsets are consecutive unless another producer writes
// to the partition between them. Kafka's answers stay per record: when it
// refuses a batch for some of its records, those fail alone and the rest
// of their unit goes again together (Producer.answer). A caller that stops
// waiting withdraws a unit whole or not at all (toSend).
package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	describeconfigsapi "github.com/segmentio/kafka-go/protocol/describeconfigs"
	metadataapi "github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// ownHeadersAllowance is room, beyond kafka.message.max.bytes, for the
// headers Spillway adds to a record (spillway-id, traceparent, tracestate):
// the ingest checks the client's record against the limit before adding
// them.
const ownHeadersAllowance = 1024

// Producer sends records to Kafka. It is safe for concurrent use.
//
// It batches on its own, over kafka-go's Client.Produce, rather than
// through kafka-go's Writer: the Writer closes a batch linger.ms after its
// first record whether or not the one before it is still in flight, so
// under load it sends many small batches, and each costs the broker a
// request. Here a batch fills for as long as its partition's request is in
// flight (partitionQueue).
type Producer struct {
	client         *kafka.Client
	balancer       kafka.Balancer
	timeout        time.Duration
	maxRecordBytes int
	autoCreate     bool

	acks         kafka.RequiredAcks
	compression  kafka.Compression
	batchSize    int
	batchBytes   int
	linger       time.Duration
	maxAttempts  int
	backoffMin   time.Duration
	backoffMax   time.Duration
	writeTimeout time.Duration
	logger       *slog.Logger

	metadataTTL time.Duration
	// partitionCounts is, per topic, its partition count as last read from Kafka
	// (PartitionOf). Unlike layouts it is never pruned, and a reading
	// that failed leaves it: a record's partition must not change while
	// Kafka is away. It holds only topics Kafka described.
	partitionCounts  sync.Map // string -> int
	onPartitionCount atomic.Pointer[func(topic string, n int)]
	layoutMu         sync.RWMutex
	layouts          map[string]cachedLayout
	refreshing       map[string]bool
	// moved is, per topic, when its leaders were last read again because a
	// produce found one moved, and whether that reading still runs
	// (planLeaderRefresh). layoutMu is taken with a queue's mu held there,
	// never the other way round.
	moved map[string]leaderRefresh

	// startMu guards lookups: the topics whose first layout is being
	// read, each with the records that wait for it (Start). It is taken
	// with closeMu held for reading, and layoutMu is taken with it held.
	startMu sync.Mutex
	lookups map[string]*topicLookup

	// mu guards queues (by topic, then partition) and senders (a sink
	// per broker, by its id), and the count of queues.
	//
	// The locks, in the order they are taken: a lock is never taken while
	// one later in this list is held.
	//
	//	closeMu (read), startMu, mu, a sink's mu (brokerSender), a queue's
	//	mu (partitionQueue), layoutMu, a call's mu
	mu         sync.Mutex
	queues     map[string][]*partitionQueue
	senders    map[int32]*brokerSender
	queueCount int
	visits     atomic.Int64   // queues visited by the sinks' passes (take), for tests
	running    sync.WaitGroup // the sinks', lookUps' and janitor's goroutines
	// closeMu is held for reading while a call queues its records, and
	// for writing while Close sets closing: no record is queued after it.
	closeMu sync.RWMutex
	closing atomic.Bool
	closed  chan struct{}
}

// New builds a Producer from the Kafka configuration. It does not connect:
// the first produce does.
func New(cfg config.Kafka, logger *slog.Logger) (*Producer, error) {
	transport, err := newTransport(cfg)
	if err != nil {
		return nil, err
	}
	p := &Producer{
		client:         &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: transport, Timeout: cfg.SocketTimeout},
		balancer:       cfg.Partitioner.Balancer(),
		timeout:        cfg.MessageTimeout,
		maxRecordBytes: cfg.MaxMessageBytes,
		autoCreate:     cfg.AutoCreateTopics,
		acks:           kafka.RequiredAcks(cfg.RequiredAcks),
		compression:    cfg.Compression.Codec(),
		batchSize:      max(cfg.BatchSize, 1),
		batchBytes:     int(max(cfg.BatchBytes, 1)),
		linger:         cfg.Linger,
		maxAttempts:    max(cfg.MaxAttempts, 1),
		backoffMin:     cfg.RetryBackoff,
		backoffMax:     max(cfg.RetryBackoffMax, cfg.RetryBackoff),
		writeTimeout:   cfg.SocketTimeout,
		logger:         logger,
		metadataTTL:    max(cfg.MetadataRefresh, time.Millisecond),
		layouts:        map[string]cachedLayout{},
		refreshing:     map[string]bool{},
		lookups:        map[string]*topicLookup{},
		moved:          map[string]leaderRefresh{},
		queues:         map[string][]*partitionQueue{},
		senders:        map[int32]*brokerSender{},
		closed:         make(chan struct{}),
	}
	p.running.Add(1)
	go p.janitor()
	return p, nil
}

func newTransport(cfg config.Kafka) (*kafka.Transport, error) {
	t := &kafka.Transport{
		Dial:        (&net.Dialer{Timeout: cfg.SocketTimeout, KeepAlive: 30 * time.Second}).DialContext,
		DialTimeout: cfg.SocketTimeout,
		IdleTimeout: 30 * time.Second,
		MetadataTTL: cfg.MetadataRefresh,
		ClientID:    cfg.ClientID,
	}
	if cfg.UsesTLS() {
		tc, err := cfg.TLS.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("kafka TLS (ssl.*): %w", err)
		}
		t.TLS = tc
	}
	if cfg.UsesSASL() {
		m, err := saslMechanism(cfg.SASL)
		if err != nil {
			return nil, err
		}
		t.SASL = m
	}
	return t, nil
}

func saslMechanism(c config.SASL) (sasl.Mechanism, error) {
	switch c.Mechanism {
	case "SCRAM-SHA-256":
		return scram.Mechanism(scram.SHA256, c.Username, c.Password)
	case "SCRAM-SHA-512":
		return scram.Mechanism(scram.SHA512, c.Username, c.Password)
	default:
		return plain.Mechanism{Username: c.Username, Password: c.Password}, nil
	}
}

// call is one Start: its records' results, how many are still waiting for
// Kafka, and whom to tell.
type call struct {
	mu        sync.Mutex
	results   []record.Result
	remaining int  // records not yet answered
	answered  bool // done was called; later completions are dropped
	// state is each record's sendState. A record leaves pending once:
	// taken into a batch (sent, by a sender, under its queue's lock) or
	// withdrawn (takeBack, under mu), never both: whichever comes first.
	state []atomic.Uint32
	// expired is set when the caller stopped waiting (withdraw) or the
	// message timeout answered the call: its records still queued are
	// dropped, not sent (the caller spilled or failed them), and those
	// sent are not sent again.
	expired atomic.Bool
	done    func([]record.Result)
	timeout *time.Timer // message.timeout.ms
	// now: the call's records are a batch already (StartNow), and do not
	// wait linger.ms for more.
	now bool
}

// A record's sendState.
const (
	pending   uint32 = iota // not yet sent: queued, or not yet queued
	refused                 // failed before it was queued
	sent                    // taken into a batch: on the wire, or queued again after Kafka answered
	withdrawn               // left unsent: its caller stopped waiting
)

func newCall(recs []record.Record, done func([]record.Result)) *call {
	c := &call{results: make([]record.Result, len(recs)), remaining: len(recs), state: make([]atomic.Uint32, len(recs)), done: done}
	for i := range recs {
		c.results[i] = record.Fail(recs[i].Topic, nil) // unanswered: Failed without an error
	}
	return c
}

// answerIfDone tells the caller when the last record is answered. c.mu is
// held; it is released before done runs.
func (c *call) answerIfDone() {
	if c.remaining > 0 || c.answered {
		c.mu.Unlock()
		return
	}
	c.answered = true
	if c.timeout != nil {
		c.timeout.Stop()
	}
	c.mu.Unlock()
	c.done(c.results)
}

// refuse answers record i, not yet queued, with err, unless it was
// withdrawn meanwhile.
func (c *call) refuse(i int, err error) {
	c.mu.Lock()
	if c.state[i].CompareAndSwap(pending, refused) {
		c.results[i] = record.Fail(c.results[i].Topic, err)
		c.remaining--
	}
	c.answerIfDone()
}

// withdraw is for a caller that stops waiting (its client left,
// producer.cb.max_wait passed, the breaker opened): the call's records not
// yet sent leave their queues and are never sent, answered with
// record.ErrWithdrawn. It returns the call's results as they stand: Kafka's
// answer where it came, ErrWithdrawn for the records withdrawn, and
// ReasonTimeout for those on the wire (or sent and waiting to go again),
// which may still reach Kafka. done is still called, once Kafka answered
// each record sent, so that what it reports is Kafka's answer.
//
// withdraw returns nil when done was called already (or is being called):
// its results are the caller's answer. Call it at most once.
func (c *call) withdraw() []record.Result {
	c.mu.Lock()
	if c.answered || c.expired.Load() {
		c.mu.Unlock()
		return nil
	}
	out := c.takeBack()
	c.answerIfDone() // nothing left on the wire: done now
	return out
}

// expire answers the call when the message timeout passes: its records not
// yet sent are withdrawn, those unanswered fail with ReasonTimeout and may
// still reach Kafka.
func (c *call) expire() {
	c.mu.Lock()
	if c.answered {
		c.mu.Unlock()
		return
	}
	out := c.takeBack()
	c.answered = true
	c.mu.Unlock()
	c.done(out)
}

// takeBack withdraws the records of c not yet sent, and returns c's
// results with those still unanswered failed as timed out. c.mu is held.
func (c *call) takeBack() []record.Result {
	c.expired.Store(true)
	for i := range c.state {
		if c.state[i].CompareAndSwap(pending, withdrawn) {
			c.results[i] = record.Fail(c.results[i].Topic, &record.Error{
				Reason:  record.ReasonTimeout,
				Message: "Kafka did not answer in time; the record was withdrawn before it was sent",
				Err:     record.ErrWithdrawn,
			})
			c.remaining--
		}
	}
	out := slices.Clone(c.results)
	for i := range out {
		if out[i].Outcome == record.Failed && out[i].Err == nil {
			out[i] = record.Fail(out[i].Topic, &record.Error{
				Reason:  record.ReasonTimeout,
				Message: "Kafka did not acknowledge the record in time; it may still arrive",
				Err:     context.DeadlineExceeded,
			})
		}
	}
	return out
}

// Start queues recs for Kafka and returns at once. done is called once,
// with one result per record in order, when Kafka has acknowledged or
// failed each of them, or when the message timeout (message.timeout.ms)
// passes: records still unanswered then fail with record.ReasonTimeout,
// may still be in flight, and are no longer sent if they are not. A record
// is sent with its own timestamp: its callers give one (delivery the
// receive time, which the buffer keeps; drains the stored record's;
// mirrors the delivered record's), so the producer sets no default.
//
// The function it returns is for a caller that stops waiting: it takes
// back the records not yet sent and answers at once (call.withdraw).
//
// Records of a topic the producer has not seen yet wait, apart from their
// caller, for Kafka's metadata of that topic, and so do the records of
// later calls to that topic while it is looked up, so that a topic's
// records reach Kafka in the order their calls were made. Records of
// other topics never wait for it: a call that names a known topic and one
// being looked up queues its known topic's records at once, and the
// others once their topic's metadata came (or its reading failed, which
// answers them). So the records of one call to one partition stay in
// order, and so do those of successive calls.
func (p *Producer) Start(recs []record.Record, done func([]record.Result)) (withdraw func() []record.Result) {
	return p.startCall(recs, newCall(recs, done))
}

// StartNow is Start for records that are a batch already, whose sender
// lingered for them: they go in the next produce request to their
// broker without waiting linger.ms for more, and so do the records queued
// for that broker, of every partition. A Kafka client's produce request
// through the ingest's Kafka listener is such a batch: the client
// lingered for it, and the listener delivers one group of a connection's
// requests at a time, so nothing more from that connection would come.
// They still wait behind a request in flight to their broker, as Start's
// records do.
func (p *Producer) StartNow(recs []record.Record, done func([]record.Result)) (withdraw func() []record.Result) {
	c := newCall(recs, done)
	c.now = true
	return p.startCall(recs, c)
}

func (p *Producer) startCall(recs []record.Record, c *call) (withdraw func() []record.Result) {
	p.closeMu.RLock()
	if p.closing.Load() {
		p.closeMu.RUnlock()
		p.start(recs, nil, c) // refuses them
		return c.withdraw
	}
	p.startMu.Lock()
	if len(p.lookups) == 0 && p.seenAll(recs) {
		p.startMu.Unlock()
		p.closeMu.RUnlock()
		p.start(recs, nil, c)
		return c.withdraw
	}
	now := p.holdUnknown(recs, c)
	p.startMu.Unlock()
	p.closeMu.RUnlock()
	if len(now) == len(recs) {
		p.start(recs, nil, c)
	} else if len(now) > 0 {
		p.start(pick(recs, now), now, c)
	}
	return c.withdraw
}

// Partitioner is topic's partitioner: the partition the producer's
// (kafka.partitioner) would choose for a record of topic with a key, for
// the records of a batch with the topic's partition count read once. It
// is false when that count was never read from Kafka. The count last read
// is kept through Kafka's outages and is never forgotten, so that a key
// keeps its partition while its records are buffered. A record given
// that partition is sent there, as the partitioner would have sent it.
func (p *Producer) Partitioner(topic string) (func(key []byte) int32, bool) {
	n, ok := p.partitionCounts.Load(topic)
	if !ok {
		return nil, false
	}
	partitions := partitionList(n.(int))
	return func(key []byte) int32 {
		return int32(p.balancer.Balance(kafka.Message{Topic: topic, Key: key}, partitions...))
	}, true
}

// OnPartitionCount sets what is told each partition count read from
// Kafka (to share it with other ingests).
func (p *Producer) OnPartitionCount(f func(topic string, n int)) { p.onPartitionCount.Store(&f) }

// LearnPartitionCount makes topic's partition count n, as another ingest
// read it, unless a larger one is known (partitions are only ever added).
func (p *Producer) LearnPartitionCount(topic string, n int) {
	if old, ok := p.partitionCounts.Load(topic); ok && old.(int) >= n {
		return
	}
	p.partitionCounts.Store(topic, n)
}

// topicLookup is a topic whose first layout is being read (lookUp), and
// the calls' records that wait for it, in the order of their calls.
type topicLookup struct {
	waiting []waitingPart
}

// waitingPart is the records of one Start call to one topic that wait
// for the topic's layout, and their indexes in the call.
type waitingPart struct {
	recs  []record.Record
	index []int
	call  *call
}

// holdUnknown puts the records of recs whose topic has no layout yet, or
// is being looked up, in their topic's lookup, starting the lookups it
// needs, and returns the indexes of the others, which go at once.
// p.startMu and p.closeMu (for reading) are held, and the producer is not
// closing.
func (p *Producer) holdUnknown(recs []record.Record, c *call) (now []int) {
	type topicWait struct {
		topic string
		wait  bool
		index []int
	}
	var topics []topicWait // few: a list beats a map
	now = make([]int, 0, len(recs))
	for i := range recs {
		t := slices.IndexFunc(topics, func(tw topicWait) bool { return tw.topic == recs[i].Topic })
		if t < 0 {
			_, looking := p.lookups[recs[i].Topic]
			_, seen := p.cachedLayout(recs[i].Topic)
			t = len(topics)
			topics = append(topics, topicWait{topic: recs[i].Topic, wait: looking || !seen})
		}
		if topics[t].wait {
			topics[t].index = append(topics[t].index, i)
		} else {
			now = append(now, i)
		}
	}
	for _, tw := range topics {
		if !tw.wait {
			continue
		}
		l, ok := p.lookups[tw.topic]
		if !ok {
			l = &topicLookup{}
			p.lookups[tw.topic] = l
			p.running.Add(1)
			go p.lookUp(tw.topic, l)
		}
		l.waiting = append(l.waiting, waitingPart{recs: pick(recs, tw.index), index: tw.index, call: c})
	}
	return now
}

// pick is the records of recs at index, in order.
func pick(recs []record.Record, index []int) []record.Record {
	out := make([]record.Record, len(index))
	for j, i := range index {
		out[j] = recs[i]
	}
	return out
}

// lookUp reads topic's layout, then starts the records waiting for it, in
// order, and those that came meanwhile, until none is left: then the topic
// is no longer looked up, and its calls go at once.
func (p *Producer) lookUp(topic string, l *topicLookup) {
	defer p.running.Done()
	if !p.closing.Load() {
		_, _ = p.topicLayout(topic)
	}
	for {
		p.startMu.Lock()
		parts := l.waiting
		l.waiting = nil
		if len(parts) == 0 {
			delete(p.lookups, topic)
			p.startMu.Unlock()
			return
		}
		p.startMu.Unlock()
		for _, w := range parts {
			p.start(w.recs, w.index, w.call)
		}
	}
}

// seenAll says whether the producer has a layout (however old) of every
// topic of recs.
func (p *Producer) seenAll(recs []record.Record) bool {
	for i := range recs {
		if i > 0 && recs[i].Topic == recs[i-1].Topic {
			continue
		}
		if _, ok := p.cachedLayout(recs[i].Topic); !ok {
			return false
		}
	}
	return true
}

// start queues recs, records of c, once their topics' layouts are known
// (or will be read here). index is each record's index in c, or nil when
// recs are all of c's records: a call whose topics are known and one being
// looked up is started in parts (Start).
func (p *Producer) start(recs []record.Record, index []int, c *call) {
	// First each record's partition, or its refusal; then the queued
	// records, written once, each where its partition's run of them goes.
	kept := make([]int, 0, len(recs))           // the records queued, as indexes in recs
	tps := make([]topicPartition, 0, len(recs)) // and each one's partition
	leaders := make([]int32, 0, len(recs))      // and its leader
	limits := make([]int, 0, len(recs))         // and its topic's max.message.bytes
	onePartition := true
	var (
		lastTopic string
		topic     layout
		topicErr  error
	)
	at := func(j int) int { // a record's index in c
		if index != nil {
			return index[j]
		}
		return j
	}
	for j := range recs {
		r, i := &recs[j], at(j)
		if n := r.Size(); n > p.maxRecordBytes+ownHeadersAllowance {
			c.refuse(i, record.CheckSize(n, p.maxRecordBytes))
			continue
		}
		if topic.partitions == nil && topicErr == nil || r.Topic != lastTopic {
			lastTopic = r.Topic
			topic, topicErr = p.topicLayout(r.Topic)
		}
		if topicErr != nil {
			c.refuse(i, classify(topicErr))
			continue
		}
		partition := int(r.Partition)
		switch {
		case r.Partition == record.AnyPartition:
			partition = p.balancer.Balance(kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value}, topic.partitions...)
		case partition < 0 || partition >= len(topic.partitions):
			c.refuse(i, &record.Error{
				Reason:  record.ReasonUnknownTopic,
				Message: fmt.Sprintf("partition %d does not exist: the topic has %d partitions", r.Partition, len(topic.partitions)),
			})
			continue
		}
		kept = append(kept, j)
		tps = append(tps, topicPartition{r.Topic, partition})
		leaders = append(leaders, topic.leaders[partition])
		limits = append(limits, topic.maxBytes)
		onePartition = onePartition && tps[len(tps)-1] == tps[0]
	}
	if len(kept) == 0 {
		return // each record was answered
	}
	p.closeMu.RLock()
	if p.closing.Load() {
		p.closeMu.RUnlock()
		for _, j := range kept {
			c.refuse(at(j), classify(io.ErrClosedPipe))
		}
		return
	}
	c.mu.Lock()
	if !c.answered && c.timeout == nil { // a call started in parts: its first
		c.timeout = time.AfterFunc(p.timeout, c.expire)
	}
	c.mu.Unlock()

	// Records in order, per partition: the partitions of a call are few,
	// so a list beats a map. One array holds every partition's run, each
	// run capped at its end (an append to it copies rather than overwrite
	// the next). A slow partition keeps the array, and so the call's
	// other records, alive while it holds its run: at most two runs a
	// partition, the one in flight and the one its empty queue took (a
	// later call's records joining it copy the run out, see push). While
	// the run waits its call is not answered, and the ingest's in-flight
	// bound still counts the whole call; only a batch left in flight
	// after its call was answered (a hung broker) holds the array past
	// it. One array a call took the listener from 1.49 to 1.31 µs of CPU
	// a record against a slice per partition (docs/benchmarks.md).
	type group struct {
		tp       topicPartition
		leader   int32
		maxBytes int
		start, n int // its run in queue
	}
	var groups []group
	var of []int // each kept record's group; nil: one partition
	if onePartition {
		groups = []group{{tp: tps[0], leader: leaders[0], maxBytes: limits[0], n: len(kept)}}
	} else {
		of = make([]int, len(kept))
		for k := range kept {
			g := slices.IndexFunc(groups, func(g group) bool { return g.tp == tps[k] })
			if g < 0 {
				g = len(groups)
				groups = append(groups, group{tp: tps[k], leader: leaders[k], maxBytes: limits[k]})
			}
			groups[g].n++
			of[k] = g
		}
		for g := 1; g < len(groups); g++ {
			groups[g].start = groups[g-1].start + groups[g-1].n
		}
	}
	queue := make([]queued, len(kept))
	next := make([]int, len(groups)) // where each group's next record goes
	for g := range groups {
		next[g] = groups[g].start
	}
	for k, j := range kept {
		r, g := &recs[j], 0
		if of != nil {
			g = of[k]
		}
		queue[next[g]] = queued{key: r.Key, value: r.Value, headers: r.Headers, id: r.ID, time: r.Timestamp, call: c, index: at(j),
			size: encodedSize(r.Key, r.Value, r.Headers, r.ID)}
		next[g]++
	}
	for _, g := range groups {
		p.add(g.tp, g.leader, g.maxBytes, queue[g.start:g.start+g.n:g.start+g.n])
	}
	p.closeMu.RUnlock()
}

// classify turns a kafka-go error into a record.Error with the reason a
// client can act on. Only a fault in the record itself (too large,
// invalid, corrupt, a bad timestamp or topic name) is final: everything
// else Kafka says may heal (credentials fixed, a topic created, a leader
// elected, a quota refilled), and is reported so that the record is
// spilled or stays buffered rather than dead-lettered.
func classify(err error) error {
	var tooLarge kafka.MessageTooLargeError
	switch {
	case errors.Is(err, kafka.MessageSizeTooLarge), errors.Is(err, kafka.RecordListTooLarge), errors.As(err, &tooLarge):
		return &record.Error{Reason: record.ReasonTooLarge, Message: "Kafka refused the record as too large", Err: err}
	case errors.Is(err, kafka.InvalidTopic):
		return &record.Error{Reason: record.ReasonInvalid, Message: "Kafka refused the topic name", Err: err}
	case errors.Is(err, kafka.InvalidRecord), errors.Is(err, kafka.InvalidTimestamp),
		errors.Is(err, kafka.InvalidMessage), errors.Is(err, kafka.InvalidMessageSize):
		var ke kafka.Error
		errors.As(err, &ke)
		return &record.Error{Reason: record.ReasonInvalid, Message: "Kafka refused the record: " + ke.Title() + ": " + ke.Description()}
	case errors.Is(err, kafka.UnknownTopicOrPartition), errors.Is(err, kafka.UnknownTopicID),
		errors.Is(err, protocol.ErrNoTopic), errors.Is(err, protocol.ErrNoPartition): // the last two: gone from the transport's metadata
		return &record.Error{Reason: record.ReasonUnknownTopic, Message: "the topic does not exist and is not created automatically", Err: err}
	case errors.Is(err, kafka.TopicAuthorizationFailed), errors.Is(err, kafka.ClusterAuthorizationFailed),
		errors.Is(err, kafka.SASLAuthenticationFailed), errors.Is(err, kafka.TransactionalIDAuthorizationFailed),
		errors.Is(err, kafka.UnsupportedSASLMechanism), errors.Is(err, kafka.IllegalSASLState):
		return &record.Error{Reason: record.ReasonNotAuthorized, Message: "Kafka refused Spillway's credentials for this topic", Err: err}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, kafka.RequestTimedOut):
		return &record.Error{Reason: record.ReasonTimeout, Message: "Kafka did not acknowledge the record in time; it may still arrive", Err: err}
	default:
		// Broker or leader not available, throttled, an unknown server
		// error, a network error...
		return &record.Error{Reason: record.ReasonUnavailable, Message: "Kafka cannot take the record now", Err: err}
	}
}

// refusal is classify(err) for a record Kafka refused, with Kafka's own
// message for it (ErrorMessage, or the record's in RecordErrors) where
// that says more than the error code: why the record is invalid.
func refusal(err error, message string) error {
	failure := classify(err)
	var (
		re   *record.Error
		code kafka.Error
	)
	if message != "" && errors.As(failure, &re) && re.Reason == record.ReasonInvalid && errors.As(err, &code) {
		re.Message = "Kafka refused the record: " + code.Title() + ": " + message
	}
	return failure
}

// Topics lists the topics in the cluster, without Kafka's internal ones.
func (p *Producer) Topics(ctx context.Context) ([]string, error) {
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		return nil, fmt.Errorf("kafka metadata: %w", err)
	}
	topics := make([]string, 0, len(md.Topics))
	for _, t := range md.Topics {
		if t.Internal || t.Error != nil {
			continue
		}
		topics = append(topics, t.Name)
	}
	slices.Sort(topics)
	return topics, nil
}

// Partitions returns the partition count of each topic in the cluster,
// without Kafka's internal ones, for a listener that tells clients the
// cluster's layout (the Kafka-protocol listener's Metadata).
func (p *Producer) Partitions(ctx context.Context) (map[string]int, error) {
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		return nil, fmt.Errorf("kafka metadata: %w", err)
	}
	out := make(map[string]int, len(md.Topics))
	for _, t := range md.Topics {
		if t.Internal || t.Error != nil {
			continue
		}
		out[t.Name] = len(t.Partitions)
	}
	return out, nil
}

// TopicState is what Kafka answered for one topic: its partition count,
// or the Kafka error code it gave instead (UNKNOWN_TOPIC_OR_PARTITION,
// LEADER_NOT_AVAILABLE while a new topic is being created,
// INVALID_TOPIC_EXCEPTION, ...).
type TopicState struct {
	Partitions int
	ErrorCode  int16
}

// CreateTopics asks Kafka about topics the way a first produce to them
// does, and keeps their layouts for it: with allow.auto.create.topics set,
// the broker creates each one it does not have, if its own
// auto.create.topics.enable allows; without it, an unknown topic stays
// unknown.
func (p *Producer) CreateTopics(ctx context.Context, topics []string) (map[string]TopicState, error) {
	out := make(map[string]TopicState, len(topics))
	for _, t := range topics {
		l, err := p.readLayout(ctx, t)
		var code kafka.Error
		switch {
		case err == nil:
			out[t] = TopicState{Partitions: len(l.partitions)}
		case errors.As(err, &code):
			out[t] = TopicState{ErrorCode: int16(code)}
		default:
			return nil, fmt.Errorf("kafka metadata: %w", err)
		}
	}
	return out, nil
}

// Close sends the records still queued without lingering, waits for
// Kafka's answers, and refuses records produced after it.
func (p *Producer) Close() error {
	p.closeMu.Lock()
	if p.closing.CompareAndSwap(false, true) {
		close(p.closed)
	}
	p.closeMu.Unlock()
	p.running.Wait()
	if t, ok := p.client.Transport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
	return nil
}

// layout is a topic's partitions and their leaders, and its
// max.message.bytes.
type layout struct {
	partitions []int   // 0..n-1, for the balancer
	leaders    []int32 // by partition
	maxBytes   int     // the topic's max.message.bytes; 0: not known (topicMaxBytes)
}

// cachedLayout is a topic's layout as last read, or the error reading it
// gave, and when; and when its max.message.bytes was last read. used says
// a call used it since the last prune (kept from reading to reading).
type cachedLayout struct {
	layout  layout
	err     error
	at      time.Time
	limitAt time.Time
	used    *atomic.Bool
}

// topicConfigRefresh is how often a topic's max.message.bytes is read
// again: an operator may change it, but seldom, and each reading is a
// request to the cluster (a layout's is served from the transport's
// cache).
const topicConfigRefresh = time.Minute

// cachedLayout is the topic's layout as last read, and whether there is
// one.
func (p *Producer) cachedLayout(topic string) (cachedLayout, bool) {
	p.layoutMu.RLock()
	l, ok := p.layouts[topic]
	p.layoutMu.RUnlock()
	return l, ok
}

// topicLayout is the topic's layout. One read more than
// topic.metadata.refresh.interval.ms ago is still used while it is read
// again apart from the caller; a topic never read is read now, waiting up
// to the message timeout.
func (p *Producer) topicLayout(topic string) (layout, error) {
	if l, ok := p.cachedLayout(topic); ok {
		if l.used != nil && !l.used.Load() {
			l.used.Store(true)
		}
		if time.Since(l.at) >= p.metadataTTL {
			p.refreshLayout(topic)
		}
		return l.layout, l.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	return p.readLayout(ctx, topic)
}

// readLayout reads the topic's layout from the transport and keeps it,
// with its max.message.bytes, read from Kafka when the topic is first
// described and then every topicConfigRefresh.
func (p *Producer) readLayout(ctx context.Context, topic string) (layout, error) {
	l, err := p.layout(ctx, topic)
	prev, _ := p.cachedLayout(topic)
	var limitAt time.Time
	if err == nil {
		l.maxBytes, limitAt = prev.layout.maxBytes, prev.limitAt
		if limitAt.IsZero() || time.Since(limitAt) >= topicConfigRefresh {
			l.maxBytes, limitAt = p.topicMaxBytes(ctx, topic), time.Now()
		}
	}
	used := prev.used
	if used == nil {
		used = new(atomic.Bool)
		used.Store(true)
	}
	if err == nil {
		p.partitionCounts.Store(topic, len(l.partitions))
		if f := p.onPartitionCount.Load(); f != nil {
			(*f)(topic, len(l.partitions))
		}
	}
	p.layoutMu.Lock()
	p.layouts[topic] = cachedLayout{layout: l, err: err, at: time.Now(), limitAt: limitAt, used: used}
	delete(p.refreshing, topic)
	p.layoutMu.Unlock()
	if err == nil {
		p.rehome(topic, l)
	}
	return l, err
}

// refreshLayout reads the topic's layout again in the background, once at
// a time.
func (p *Producer) refreshLayout(topic string) {
	p.layoutMu.Lock()
	if p.refreshing[topic] {
		p.layoutMu.Unlock()
		return
	}
	p.refreshing[topic] = true
	p.layoutMu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
		defer cancel()
		_, _ = p.readLayout(ctx, topic)
	}()
}

// forgetLayout drops the topic's layout: the next call reads it again.
func (p *Producer) forgetLayout(topic string) {
	p.layoutMu.Lock()
	delete(p.layouts, topic)
	p.layoutMu.Unlock()
}

// layout reads a topic's partitions from the transport's cached
// metadata, asking Kafka to create the topic when allow.auto.create.topics
// is set (as kafka-go's Writer does).
func (p *Producer) layout(ctx context.Context, topic string) (layout, error) {
	resp, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, &metadataapi.Request{TopicNames: []string{topic}, AllowAutoTopicCreation: p.autoCreate})
	if err != nil {
		return layout{}, err
	}
	for _, t := range resp.(*metadataapi.Response).Topics {
		if t.Name != topic {
			continue
		}
		if t.ErrorCode != 0 {
			return layout{}, kafka.Error(t.ErrorCode)
		}
		l := layout{partitions: partitionList(len(t.Partitions)), leaders: make([]int32, len(t.Partitions))}
		for _, tp := range t.Partitions {
			if int(tp.PartitionIndex) < len(l.leaders) {
				l.leaders[tp.PartitionIndex] = tp.LeaderID
			}
		}
		return l, nil
	}
	return layout{}, kafka.UnknownTopicOrPartition
}

// topicMaxBytes is the topic's max.message.bytes as Kafka's
// DescribeConfigs gives it, or 0 when it cannot be read (the principal
// may not describe the topic's configs, or the broker does not answer):
// then batches are bounded by batch.size and what refusals taught
// (partitionQueue.taught).
func (p *Producer) topicMaxBytes(ctx context.Context, topic string) int {
	resp, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, &describeconfigsapi.Request{
		Resources: []describeconfigsapi.RequestResource{{ResourceType: topicResource, ResourceName: topic, ConfigNames: []string{"max.message.bytes"}}},
	})
	if err != nil {
		p.logger.Debug("kafka did not tell the topic's max.message.bytes", "topic", topic, "error", err)
		return 0
	}
	for _, r := range resp.(*describeconfigsapi.Response).Resources {
		if r.ResourceName != topic || r.ErrorCode != 0 {
			continue
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName != "max.message.bytes" {
				continue
			}
			if n, err := strconv.Atoi(e.ConfigValue); err == nil && n > batchOverhead {
				return n
			}
		}
	}
	return 0
}

// topicResource is DescribeConfigs' resource type of a topic.
const topicResource = 2

// partitionLists are shared lists 0..n-1, for the balancer.
var partitionLists sync.Map // int -> []int

func partitionList(n int) []int {
	if l, ok := partitionLists.Load(n); ok {
		return l.([]int)
	}
	l := make([]int, n)
	for i := range l {
		l[i] = i
	}
	partitionLists.Store(n, l)
	return l
}
