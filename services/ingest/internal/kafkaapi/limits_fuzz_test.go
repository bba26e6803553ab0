package kafkaapi

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// FuzzOversizedProduce: the reader of a produce request over the request
// bound (handleOversized), which reads its fields from the connection as
// they arrive, never panics, never reads past the request, and answers
// every request it does not refuse. A client with no credentials is
// refused before any record is sent, so the fuzzer drives the parse, not
// Kafka.
func FuzzOversizedProduce(f *testing.F) {
	one := kmsg.Record{Key: []byte("k"), Value: []byte("a value longer than the bound of the fuzzed listener")}
	f.Add(produceRequest(3, batch(f, 0, one)))
	f.Add(produceRequest(8, batch(f, 0, one, one, one)))
	f.Add(produceRequest(7, nil))
	auth, err := identity.NewAuthenticator(context.Background(), config.Security{RequireCredentials: true}, config.ServerTLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	c := &conn{s: New(Options{Sender: refuseSender{}, Auth: auth, MaxRequestBytes: 64})}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := bytes.NewReader(body)
		resp, _, err := c.handleOversized(r, len(body))
		if r.Len() != 0 && err == nil {
			t.Fatalf("answered with %d bytes of the request unread", r.Len())
		}
		if err == nil && resp == nil {
			if req, perr := parseRequest(body); perr == nil {
				if p, ok := req.kreq.(*kmsg.ProduceRequest); ok && p.Acks != 0 {
					t.Fatalf("no answer to a produce with acks %d", p.Acks)
				}
			}
		}
	})
}
