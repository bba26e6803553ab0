// Package record is the model of one Kafka record as it travels through
// Spillway, and of what became of it: delivered to Kafka, buffered in
// JetStream on its way there, or failed with a reason.
package record

import (
	"errors"
	"fmt"
	"time"
)

// IDHeader is the Kafka record header with the record's Spillway id, so
// that consumers downstream can de-duplicate.
const IDHeader = "spillway-id"

// AnyPartition lets the partitioner choose: by the key's murmur2 hash when
// there is a key, at random when there is none.
const AnyPartition int32 = -1

// Header is one Kafka record header. Names may repeat.
type Header struct {
	Key   string
	Value []byte
}

// Record is one record to produce. A nil Key means "no key", which Kafka
// and its partitioners treat differently from an empty key.
type Record struct {
	// ID is given at ingest and travels with the record: the JetStream
	// message id and the spillway-id Kafka header (IDHeader).
	ID        string
	Topic     string
	Key       []byte
	Value     []byte
	Headers   []Header
	Partition int32     // AnyPartition unless the client chose one
	Timestamp time.Time // zero: the broker's time
}

// Size is the record's size as Kafka's record size limits count it, near
// enough: key, value and headers.
func (r *Record) Size() int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// Outcome says which durable step a record reached.
type Outcome uint8

const (
	// Failed: the record is in neither Kafka nor JetStream; Err says why.
	Failed Outcome = iota
	// Delivered: Kafka acknowledged the record with the configured acks.
	Delivered
	// Buffered: JetStream acknowledged the record; Spillway will carry it
	// to Kafka.
	Buffered
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Buffered:
		return "buffered"
	default:
		return "failed"
	}
}

// Result is what became of one record.
type Result struct {
	ID        string // the record's id (Record.ID)
	Outcome   Outcome
	Topic     string
	Partition int32
	Offset    int64
	Timestamp time.Time
	Err       error // set when Outcome is Failed; a *Error when the reason is known
}

// Reason classifies a failure. It is a metric label and decides the status
// code a client sees, so the set is small and fixed.
type Reason string

// The reasons a record can fail for.
const (
	ReasonInvalid       Reason = "invalid"        // the record or its topic is malformed
	ReasonTooLarge      Reason = "too_large"      // over the record size limit
	ReasonUnknownTopic  Reason = "unknown_topic"  // the topic or partition does not exist
	ReasonNotAuthorized Reason = "not_authorized" // Kafka refused Spillway's own credentials (SASL, ACLs)
	ReasonUnavailable   Reason = "unavailable"    // Kafka could not take the record now
	ReasonTimeout       Reason = "timeout"        // Kafka did not answer in time
	ReasonBufferFull    Reason = "buffer_full"    // the JetStream buffer is at its size limit
	ReasonOverloaded    Reason = "overloaded"     // too many records in flight in this ingest: retry later
	ReasonForbidden     Reason = "forbidden"      // the client may not produce to the topic
	ReasonRateLimited   Reason = "rate_limited"   // the client (or all clients) are over their rate limit
	ReasonRejected      Reason = "rejected"       // the record breaks a validation rule (validation.rules)
	// ReasonUnauthenticated: the request's credentials are missing or
	// invalid. It refuses requests, never a record of an accepted one.
	ReasonUnauthenticated Reason = "unauthenticated"
)

// Reasons is every Reason, in the order of their constants. Each API
// answers a reason from a table with a row for every one of them, and its
// tests walk this list: a new reason goes here (TestReasonsHoldsEveryReason
// fails until it does), and then needs a row in every API's table.
func Reasons() []Reason {
	return []Reason{
		ReasonInvalid,
		ReasonTooLarge,
		ReasonUnknownTopic,
		ReasonNotAuthorized,
		ReasonUnavailable,
		ReasonTimeout,
		ReasonBufferFull,
		ReasonOverloaded,
		ReasonForbidden,
		ReasonRateLimited,
		ReasonRejected,
		ReasonUnauthenticated,
	}
}

// Retriable says whether the failure is Kafka's, not the record's nor the
// client's, so that trying again later may succeed: Kafka was unavailable
// or slow, or refused Spillway's own credentials (a rotated SASL password,
// a changed ACL). The ingest spills such records and its breaker counts
// them as failures (but for one topic's ACL, and records withdrawn unsent:
// see breaker); the client is not told it did wrong.
func (r Reason) Retriable() bool {
	return r == ReasonUnavailable || r == ReasonTimeout || r == ReasonNotAuthorized
}

// InRecord says whether the failure lies in the record itself (too large
// for the topic, invalid, corrupt, against a validation rule), so that no
// change in Kafka can make it succeed. A drain dead-letters only such
// records; for any other reason a buffered record stays buffered and is
// tried again, since the condition may heal: credentials fixed, a missing
// topic created, a leader elected.
func (r Reason) InRecord() bool {
	return r == ReasonInvalid || r == ReasonTooLarge || r == ReasonRejected
}

// Error is a failed record's reason and a message for the client.
type Error struct {
	Reason  Reason
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Message, e.Err)
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// ClientMessage is the text a client reads for a failed record: an Error's
// message, with the underlying error where it helps (not for invalid input,
// where the message says it all).
func ClientMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		if e.Err != nil && e.Reason != ReasonInvalid {
			return e.Message + ": " + e.Err.Error()
		}
		return e.Message
	}
	return err.Error()
}

// Errorf returns an *Error with the reason and a formatted message.
func Errorf(reason Reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the reason of err, or ReasonUnavailable for an error
// that carries none.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonUnavailable
}

// Fail returns a failed Result.
func Fail(topic string, err error) Result {
	return Result{Outcome: Failed, Topic: topic, Partition: AnyPartition, Offset: -1, Err: err}
}

// ErrWithdrawn is the cause of a record's failure when its producer took it
// back before sending it, because its caller stopped waiting (its client
// left, producer.cb.max_wait passed, the breaker opened): Kafka never had
// it, so a copy spilled to the buffer is not a duplicate.
var ErrWithdrawn = errors.New("withdrawn before it was sent to Kafka")
