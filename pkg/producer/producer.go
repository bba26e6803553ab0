// Package producer writes records to Kafka and reports, for each record,
// whether Kafka acknowledged it with the configured acks, and where it
// went. Concurrent callers share produce batches: a caller waits only for
// the batch its records joined.
package producer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
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
type Producer struct {
	writer         *kafka.Writer
	client         *kafka.Client
	timeout        time.Duration
	maxRecordBytes int
	autoCreate     bool
}

// New builds a Producer from the Kafka configuration. It does not connect:
// the first produce does.
func New(cfg config.Kafka, logger *slog.Logger) (*Producer, error) {
	transport, err := newTransport(cfg)
	if err != nil {
		return nil, err
	}
	p := &Producer{
		timeout:        cfg.MessageTimeout,
		maxRecordBytes: cfg.MaxMessageBytes,
		autoCreate:     cfg.AutoCreateTopics,
	}
	p.writer = &kafka.Writer{
		Addr:                   kafka.TCP(cfg.Brokers...),
		Balancer:               partitionBalancer{fallback: newBalancer(cfg.Partitioner)},
		MaxAttempts:            cfg.MaxAttempts,
		WriteBackoffMin:        cfg.RetryBackoff,
		WriteBackoffMax:        cfg.RetryBackoffMax,
		BatchSize:              cfg.BatchSize,
		BatchBytes:             cfg.BatchBytes + 64<<10,           // room for kafka-go's per-record overhead; our own limit is checked first
		BatchTimeout:           max(cfg.Linger, time.Microsecond), // kafka-go reads 0 as its default, 1s
		ReadTimeout:            cfg.SocketTimeout,
		WriteTimeout:           cfg.SocketTimeout,
		RequiredAcks:           kafka.RequiredAcks(cfg.RequiredAcks),
		Async:                  true,
		Completion:             complete,
		Compression:            compression(cfg.Compression),
		Transport:              transport,
		AllowAutoTopicCreation: cfg.AutoCreateTopics,
		ErrorLogger: kafka.LoggerFunc(func(format string, args ...any) {
			logger.Debug("kafka writer", "detail", fmt.Sprintf(format, args...))
		}),
	}
	p.client = &kafka.Client{Addr: p.writer.Addr, Transport: transport, Timeout: cfg.SocketTimeout}
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

func compression(name string) kafka.Compression {
	switch name {
	case "gzip":
		return kafka.Gzip
	case "snappy":
		return kafka.Snappy
	case "lz4":
		return kafka.Lz4
	case "zstd":
		return kafka.Zstd
	default:
		return 0
	}
}

func newBalancer(name string) kafka.Balancer {
	switch name {
	case "murmur2":
		return kafka.Murmur2Balancer{Consistent: true}
	case "consistent_random":
		return kafka.CRC32Balancer{}
	case "consistent":
		return kafka.CRC32Balancer{Consistent: true}
	case "random":
		return &kafka.RoundRobin{}
	default:
		return kafka.Murmur2Balancer{}
	}
}

// partitionBalancer sends a record to the partition its client chose, and
// leaves the others to the configured partitioner.
type partitionBalancer struct{ fallback kafka.Balancer }

func (b partitionBalancer) Balance(msg kafka.Message, partitions ...int) int {
	if s, ok := msg.WriterData.(*slot); ok && s.partition != record.AnyPartition {
		if !slices.Contains(partitions, int(s.partition)) {
			s.partitions = len(partitions)
		}
		return int(s.partition)
	}
	return b.fallback.Balance(msg, partitions...)
}

// call is one Produce call: its records' results and how many are still
// waiting for Kafka.
type call struct {
	mu        sync.Mutex
	results   []record.Result
	remaining int
	abandoned bool // the caller stopped waiting; late completions are dropped
	done      chan struct{}
}

// slot ties one kafka.Message to its place in a call.
type slot struct {
	call      *call
	index     int
	partition int32
	// partitions is set when the chosen partition is not in the topic:
	// the topic's partition count.
	partitions int
}

// complete is the kafka.Writer's completion callback: it runs once per
// produced batch, on the writer's goroutine.
func complete(msgs []kafka.Message, err error) {
	for i := range msgs {
		s, ok := msgs[i].WriterData.(*slot)
		if !ok {
			continue
		}
		c := s.call
		c.mu.Lock()
		if !c.abandoned {
			r := &c.results[s.index]
			switch {
			case err != nil && s.partitions > 0:
				*r = record.Fail(msgs[i].Topic, &record.Error{
					Reason:  record.ReasonUnknownTopic,
					Message: fmt.Sprintf("partition %d does not exist: the topic has %d partitions", s.partition, s.partitions),
					Err:     err,
				})
			case err != nil:
				*r = record.Fail(msgs[i].Topic, classify(err))
			default:
				*r = record.Result{
					Outcome:   record.Delivered,
					Topic:     msgs[i].Topic,
					Partition: int32(msgs[i].Partition),
					Offset:    msgs[i].Offset,
					Timestamp: msgs[i].Time,
				}
			}
			c.remaining--
			if c.remaining == 0 {
				close(c.done)
			}
		}
		c.mu.Unlock()
	}
}

// Produce sends recs to Kafka and returns one result per record, in order,
// once Kafka acknowledged or failed each of them, or when ctx ends or the
// message timeout (message.timeout.ms) passes: records still unanswered
// then fail with record.ReasonTimeout. They may still reach Kafka later.
// A record without a timestamp gets the current time, as Kafka's own
// clients do, so that the answer can report it.
func (p *Producer) Produce(ctx context.Context, recs []record.Record) []record.Result {
	results := make([]record.Result, len(recs))
	c := &call{results: results, done: make(chan struct{})}
	slots := make([]slot, len(recs))
	msgs := make([]kafka.Message, 0, len(recs))
	now := time.Now()
	for i := range recs {
		r := &recs[i]
		if n := r.Size(); n > p.maxRecordBytes+ownHeadersAllowance {
			results[i] = record.Fail(r.Topic, record.Errorf(record.ReasonTooLarge,
				"record of %d bytes is over the limit of %d bytes (kafka.message.max.bytes)", n, p.maxRecordBytes))
			continue
		}
		if r.Timestamp.IsZero() {
			r.Timestamp = now
		}
		slots[i] = slot{call: c, index: i, partition: r.Partition}
		msgs = append(msgs, kafka.Message{
			Topic:      r.Topic,
			Key:        r.Key,
			Value:      r.Value,
			Headers:    kafkaHeaders(r.ID, r.Headers),
			Time:       r.Timestamp,
			WriterData: &slots[i],
		})
	}
	if len(msgs) == 0 {
		return results
	}
	c.remaining = len(msgs)

	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	// WriteMessages checks every record's topic before it queues any, and
	// fails them all for the first bad one: one call per topic, so that a
	// bad topic fails only its own records.
	for _, group := range byTopic(msgs) {
		if err := p.writer.WriteMessages(ctx, group...); err != nil {
			c.mu.Lock()
			for _, m := range group {
				s := m.WriterData.(*slot)
				results[s.index] = record.Fail(m.Topic, classify(err))
				c.remaining--
			}
			if c.remaining == 0 {
				close(c.done)
			}
			c.mu.Unlock()
		}
	}

	select {
	case <-c.done:
		return results
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.remaining == 0 {
		return results
	}
	c.abandoned = true
	out := slices.Clone(results)
	for _, m := range msgs {
		s := m.WriterData.(*slot)
		if out[s.index].Outcome == record.Failed && out[s.index].Err == nil {
			out[s.index] = record.Fail(m.Topic, &record.Error{
				Reason:  record.ReasonTimeout,
				Message: "Kafka did not acknowledge the record in time; it may still arrive",
				Err:     ctx.Err(),
			})
		}
	}
	return out
}

// kafkaHeaders is the record's headers, then its id as spillway-id.
// byTopic splits msgs by topic, keeping their order within a topic.
func byTopic(msgs []kafka.Message) [][]kafka.Message {
	if len(msgs) == 0 || !slices.ContainsFunc(msgs, func(m kafka.Message) bool { return m.Topic != msgs[0].Topic }) {
		return [][]kafka.Message{msgs}
	}
	index := map[string]int{}
	var groups [][]kafka.Message
	for _, m := range msgs {
		i, ok := index[m.Topic]
		if !ok {
			i = len(groups)
			index[m.Topic] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], m)
	}
	return groups
}

func kafkaHeaders(id string, hs []record.Header) []kafka.Header {
	if len(hs) == 0 && id == "" {
		return nil
	}
	out := make([]kafka.Header, 0, len(hs)+1)
	for _, h := range hs {
		out = append(out, kafka.Header{Key: h.Key, Value: h.Value})
	}
	if id != "" {
		out = append(out, kafka.Header{Key: record.IDHeader, Value: []byte(id)})
	}
	return out
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
	case errors.Is(err, kafka.UnknownTopicOrPartition), errors.Is(err, kafka.UnknownTopicID):
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

// unknownTopicOrPartition is Kafka's error code 3.
const unknownTopicOrPartition = 3

// CreateTopics asks Kafka about topics the way a first produce to them
// does: with allow.auto.create.topics set, the broker creates each one it
// does not have, if its own auto.create.topics.enable allows; without it,
// an unknown topic stays unknown and Kafka is not asked.
func (p *Producer) CreateTopics(ctx context.Context, topics []string) (map[string]TopicState, error) {
	out := make(map[string]TopicState, len(topics))
	if !p.autoCreate {
		for _, t := range topics {
			out[t] = TopicState{ErrorCode: unknownTopicOrPartition}
		}
		return out, nil
	}
	resp, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, &metadataapi.Request{TopicNames: topics, AllowAutoTopicCreation: true})
	if err != nil {
		return nil, fmt.Errorf("kafka metadata: %w", err)
	}
	md, ok := resp.(*metadataapi.Response)
	if !ok {
		return nil, fmt.Errorf("kafka metadata: unexpected answer %T", resp)
	}
	for _, t := range md.Topics {
		out[t.Name] = TopicState{Partitions: len(t.Partitions), ErrorCode: t.ErrorCode}
	}
	return out, nil
}

// Close flushes the records still queued and waits for Kafka's answers.
func (p *Producer) Close() error {
	return p.writer.Close()
}
