package record

import "errors"

// Request is one client request as an API parsed it, for the delivery
// path's one call: the records it holds, what of it could not be parsed,
// and the topic it names for all of them. The API translates the call's
// answer into its protocol's; the delivery path validates, refuses or
// sends, and counts, whatever the API.
type Request struct {
	// API is the protocol the request came over (http, grpc, kafka): a
	// metric label.
	API string
	// Topic is the topic the whole request names, "" when each record
	// names its own. The delivery path checks it first, and refuses the
	// whole request when it is not a valid topic name. A request of a
	// topic alone (no record, refusal or error) only asks that, even of
	// "": a stream checks its topic so before it takes records.
	Topic string
	// Err refuses the whole request: its client could not be signed in
	// (reason unauthenticated), or it could not be read (too_large,
	// invalid). It counts as one record refused under Topic; an
	// unauthenticated one as a denial of its client, and no record.
	Err error
	// Records are the records parsed, in order.
	Records []Record
	// Units, when set, has one entry per record of Records: the batch it
	// belongs to (a Kafka partition's), stored all or none. A record
	// refused before it is sent (a header, a rule, its size, its mapped
	// topic) refuses the other records of its batch, with ErrBatchRefused.
	Units []int
	// Refused are the records the API could not parse. Each answer has
	// its place: the records of Records fill the places that no Refusal
	// takes, in order.
	Refused []Refusal
}

// ErrBatchRefused is the cause of a record's failure when another record
// of its batch was refused before any was sent (Request.Units): it was
// not stored, and is not at fault itself.
var ErrBatchRefused = errors.New("another record of its batch was refused; none of the batch was stored")

// FailedAlike says whether every one of results failed, all with errors
// that answer maps to the same protocol answer (an HTTP status, a gRPC
// code): every API answers such a request with that failure, as a whole.
func FailedAlike[K comparable](results []Result, answer func(error) K) bool {
	if len(results) == 0 {
		return false
	}
	var first K
	for i, r := range results {
		if r.Outcome != Failed {
			return false
		}
		if k := answer(r.Err); i == 0 {
			first = k
		} else if k != first {
			return false
		}
	}
	return true
}

// Refusal is a record, or a run of records such as a Kafka partition's
// batch, that an API could not parse.
type Refusal struct {
	// Index is its place among the request's answers.
	Index int
	// Topic is the topic the client named for it.
	Topic string
	// Err says why, with its reason (an *Error).
	Err error
	// N is the records it stands for, for the metrics; 0 counts as one,
	// as a refused body does.
	N int
}
