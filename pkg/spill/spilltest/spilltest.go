// Package spilltest reads what the JetStream buffer holds, for tests. The
// stream is a work queue, where a second consumer of a subject is refused,
// so it reads messages directly by sequence.
package spilltest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Messages returns the stream's messages whose subject matches filter, in
// order, polling until there are at least want of them or 5 seconds pass.
func Messages(tb testing.TB, js jetstream.JetStream, stream, filter string, want int) []*jetstream.RawStreamMsg {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		tb.Fatalf("stream %s: %v", stream, err)
	}
	for {
		var out []*jetstream.RawStreamMsg
		for seq := uint64(1); ; {
			m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				tb.Fatalf("get message %d: %v", seq, err)
			}
			out = append(out, m)
			seq = m.Sequence + 1
		}
		if len(out) >= want || ctx.Err() != nil {
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Connect connects to the NATS server at url as the user whose nkey seed
// is in credentials (spill.EmbeddedCredentials of the embedded server's
// configuration), as a person with the credentials file would, and closes
// the connection when the test ends.
func Connect(tb testing.TB, url, credentials string) *nats.Conn {
	tb.Helper()
	opt, err := nats.NkeyOptionFromSeed(credentials)
	if err != nil {
		tb.Fatalf("NATS credentials: %v", err)
	}
	nc, err := nats.Connect(url, opt)
	if err != nil {
		tb.Fatalf("connect to NATS at %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}
