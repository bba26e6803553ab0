// Package spill is Spillway's JetStream buffer: the stream that holds
// records on their way to Kafka (written ahead, or spilled when Kafka could
// not take them), its subjects, how a record is stored, and the embedded
// server the ingest runs on a single node.
package spill

import (
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// Kind is what a buffered record is waiting for; it is the second token of
// its subject.
type Kind string

// The kinds of buffered messages.
const (
	// WriteAhead records were written to JetStream first, by mode or topic;
	// the forwarder carries them to Kafka.
	WriteAhead Kind = "wal"
	// Spilled records could not go to Kafka when they came; the resender
	// carries them once Kafka is healthy.
	Spilled Kind = "spill"
	// DeadLetter records will never be accepted by Kafka; they wait here
	// for a person, with the reason in a header.
	DeadLetter Kind = "dlq"
)

// Mirror is the kind of the records a mirror (the cluster named name)
// could not take when they came; the resender carries them to it. Their
// subjects are PREFIX.mirror.NAME.TOPIC.
func Mirror(name string) Kind { return Kind("mirror." + name) }

// MirrorDeadLetter is the kind of the copies a mirror will never accept:
// PREFIX.dlq.mirror.NAME.TOPIC, among the dead letters, and apart from
// the primary cluster's (replaying them to the primary would duplicate
// records it has).
func MirrorDeadLetter(name string) Kind { return Kind("dlq.mirror." + name) }

// deadLetter says whether k is a kind of dead letter.
func (k Kind) deadLetter() bool {
	return k == DeadLetter || strings.HasPrefix(string(k), string(DeadLetter)+".")
}

// Headers of the JetStream messages.
const (
	HeaderReason = "Spillway-Reason" // why a record was dead-lettered
	HeaderTopic  = "Spillway-Topic"
)

// Subjects names the stream's subjects.
type Subjects struct{ Prefix string }

// For is the subject of a record of kind for topic. A topic's dots would
// make extra subject tokens, so they are written as "%2E"; the record
// itself keeps the real topic.
func (s Subjects) For(kind Kind, topic string) string {
	if topic == "" {
		topic = NoTopic
	}
	return s.Prefix + "." + string(kind) + "." + strings.ReplaceAll(topic, ".", "%2E")
}

// ForRecord is the subject of record r of kind. Records written ahead or
// spilled carry their lane as one more token, PREFIX.KIND.TOPIC.LANE
// (Lane), so that a lane's backlog is one subject: what the drains order
// by, and what every ingest looks up to know whether the lane still has
// buffered records. Other kinds keep PREFIX.KIND.TOPIC. Records buffered
// before the lane token (the older PREFIX.KIND.TOPIC) are matched by the
// same filters and drained the same way: the drains read a record's lane
// from the record.
func (s Subjects) ForRecord(kind Kind, r *record.Record) string {
	if kind != WriteAhead && kind != Spilled {
		return s.For(kind, r.Topic)
	}
	return s.For(kind, r.Topic) + "." + Lane(r)
}

// KeyLanes is how many lanes the records of one topic whose partition is
// chosen at delivery are spread over, by their key's hash.
const KeyLanes = 256

// Lane is the token of the lane a record keeps its order in: its
// partition ("3") when it has one, else "k" and its key's FNV-1a hash
// modulo KeyLanes ("k17"), so that the records of one key share a lane
// (the partitioner places a key by its hash, so its records share a
// partition). Records without a key share one lane per topic.
func Lane(r *record.Record) string {
	if r.Partition >= 0 {
		return strconv.FormatInt(int64(r.Partition), 10)
	}
	h := uint32(2166136261)
	for _, c := range r.Key {
		h ^= uint32(c)
		h *= 16777619
	}
	return "k" + strconv.FormatUint(uint64(h%KeyLanes), 10)
}

// NoTopic is the last subject token of a message whose topic is unknown
// (a dead letter that could not be decoded): an empty token is not a valid
// subject.
const NoTopic = "_unknown"

// All is the filter of every subject of kind.
func (s Subjects) All(kind Kind) string { return s.Prefix + "." + string(kind) + ".>" }

// StreamConfig is the stream Spillway creates or updates at start.
func StreamConfig(c config.WAL) jetstream.StreamConfig {
	storage := jetstream.FileStorage
	if c.InMemory {
		storage = jetstream.MemoryStorage
	}
	return jetstream.StreamConfig{
		Name:        c.Stream,
		Description: "Spillway: records on their way to Kafka",
		Subjects:    []string{c.SubjectPrefix + ".>"},
		Storage:     storage,
		Replicas:    c.Replicas,
		MaxBytes:    c.MaxBytes,
		MaxAge:      c.MaxAge,
		Discard:     jetstream.DiscardNew, // a full stream refuses new records; it never drops stored ones
		// A work queue removes a record once the forwarder or resender
		// acknowledged it (after Kafka did), so that the limits count only
		// records still on their way. Dead letters stay until a person
		// removes them, or max_age.
		Retention:  jetstream.WorkQueuePolicy,
		Duplicates: 2 * time.Minute,
	}
}
