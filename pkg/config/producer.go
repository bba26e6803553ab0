package config

import "time"

// WALMode is producer.wal.mode: when records go to the buffer.
type WALMode string

// The producer.wal.mode values.
const (
	ModeFallback WALMode = "fallback" // Kafka first; the buffer when Kafka cannot take a record
	ModeAlways   WALMode = "always"   // the buffer first (write-ahead); the forwarder delivers
	ModeDisable  WALMode = "disable"  // never the buffer; Kafka's failure reaches the client
)

// Order is producer.order: what Spillway keeps of a partition's order
// when records pass through the buffer.
type Order string

// The producer.order values.
const (
	// OrderPartition keeps each partition's order (so each key's): a
	// partition that spilled stays behind its buffered records until they
	// are delivered, and the drains deliver a partition's records in buffer
	// order, one batch per partition in flight.
	OrderPartition Order = "partition"
	// OrderNone is the lowest latency after an outage: records go straight
	// to Kafka as soon as it answers, while the buffered ones are drained
	// beside them, by concurrent workers; a key's records may be reordered.
	OrderNone Order = "none"
)

// Producer holds kafka-ambassador's producer section: the breaker, the
// resend loop and the buffer's settings. Its old_producer_kill_timeout is
// accepted and has no effect (see the key table).
type Producer struct {
	CB     Breaker
	Resend Resend
	WAL    WAL
	Order  Order // what is kept of a partition's order through the buffer
}

// Breaker configures the circuit breaker in front of Kafka (see
// pkg/breaker): it opens on Fails failed produces in a row, or on
// FailureRate of the produces in its window (Interval) once MinCalls of
// them ended; a produce Kafka has not answered within SlowCall counts as
// failed.
type Breaker struct {
	Interval    time.Duration // the window of the counts, rolled in 10 steps (0: counts kept until the state changes)
	Timeout     time.Duration // time open before probes
	Fails       uint32        // failures in a row that open it
	Requests    uint32        // probes when half-open; as many successes close it
	SlowCall    time.Duration // a produce not answered within this counts as failed
	FailureRate float64       // share of failed or slow produces in the window that opens it (0: off)
	MinCalls    uint32        // produces in the window before FailureRate applies
	MaxWait     time.Duration // how long a client's record waits for Kafka before it is spilled
}

// Resend configures how spilled records are carried back to Kafka.
type Resend struct {
	Period    time.Duration
	RateLimit float64
}

// WAL configures the buffer: when records are written ahead to it or
// spilled to it, and the JetStream stream that holds them. It keeps the
// name of its keys, producer.wal.* (kafka-ambassador's, where the buffer
// was a write-ahead log); everywhere else the store is "the buffer".
type WAL struct {
	Mode          WALMode
	InMemory      bool
	Path          string
	AlwaysTopics  []string
	DisableTopics []string

	Stream         string        // the JetStream stream's name
	SubjectPrefix  string        // subjects are PREFIX.wal.TOPIC.PARTITION, PREFIX.spill.TOPIC.PARTITION, PREFIX.dlq.TOPIC
	Listen         string        // the embedded server's client listener
	NATS           NATS          // an external JetStream; no embedded server when URLs are set
	Replicas       int           // stream replicas (3 on an external cluster)
	MaxBytes       int64         // the stream's size limit; a full stream refuses records (507)
	MaxAge         time.Duration // records older than this are removed, delivered or not (0: never)
	PublishTimeout time.Duration // how long a publish may wait for JetStream's acknowledgement
	AckWait        time.Duration // how long a drain consumer may hold a message before JetStream redelivers it
}

// NATS is the connection to an external JetStream.
type NATS struct {
	URLs        []string
	Credentials string // a .creds file
	TLS         TLS
}
