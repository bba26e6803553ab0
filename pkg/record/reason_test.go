package record

import "testing"

// TestReasonClasses pins which failures the ingest spills (Retriable) and
// which a drain dead-letters (InRecord). Every other reason leaves a
// buffered record buffered, to be tried again.
func TestReasonClasses(t *testing.T) {
	cases := []struct {
		reason             Reason
		retriable, deadLet bool
	}{
		{ReasonInvalid, false, true},
		{ReasonTooLarge, false, true},
		{ReasonRejected, false, true},
		// Conditions in Kafka that heal: never a dead letter.
		{ReasonUnknownTopic, false, false}, // the client's error at the ingest; created later, delivered
		{ReasonNotAuthorized, true, false}, // Spillway's own credentials: spill (and open the breaker, unless one topic's ACL)
		{ReasonUnavailable, true, false},   // broker or leader not available, throttled, unknown server error
		{ReasonTimeout, true, false},       // no answer in time
		{ReasonBufferFull, false, false},   // the ingest's answers, never a drain's
		{ReasonOverloaded, false, false},   //
		{ReasonForbidden, false, false},    //
		{ReasonRateLimited, false, false},  //
		{ReasonUnauthenticated, false, false},
	}
	for _, tc := range cases {
		t.Run(string(tc.reason), func(t *testing.T) {
			if got := tc.reason.Retriable(); got != tc.retriable {
				t.Errorf("%s.Retriable() = %v; want %v", tc.reason, got, tc.retriable)
			}
			if got := tc.reason.InRecord(); got != tc.deadLet {
				t.Errorf("%s.InRecord() = %v; want %v", tc.reason, got, tc.deadLet)
			}
		})
	}
}
