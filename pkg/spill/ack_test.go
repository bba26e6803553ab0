package spill

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
)

// TestParseAck: an acknowledgement as the server writes it is nil without
// encoding/json; anything else is read as jetstream reads it.
func TestParseAck(t *testing.T) {
	for _, c := range []struct {
		ack  string
		want error
	}{
		{`{"stream":"SPILLWAY","seq":12}`, nil},
		{`{"stream":"SPILLWAY","domain":"hub","seq":12}`, nil},
		{`{"stream":"SPILLWAY","seq":12,"duplicate":true}`, nil},
		{`{"stream":"error","seq":3}`, nil},
		{`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"SPILLWAY","seq":0}`,
			&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum messages exceeded"}},
		{`{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}`,
			&jetstream.APIError{Code: 400, ErrorCode: 10060, Description: "expected stream does not match"}},
		{`{"stream":"","seq":1}`, jetstream.ErrInvalidJSAck},
		{`{"seq":1}`, jetstream.ErrInvalidJSAck},
		{`{"stream":"S"`, jetstream.ErrInvalidJSAck},
		{`not json`, jetstream.ErrInvalidJSAck},
		{``, jetstream.ErrInvalidJSAck},
	} {
		assert.Equal(t, c.want, parseAck([]byte(c.ack)), c.ack)
	}
}
