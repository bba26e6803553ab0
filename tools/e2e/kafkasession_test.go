package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
)

// connHooks counts kgo's connections, disconnections and sign-ins.
type connHooks struct{ connects, disconnects, signIns atomic.Int64 }

func (h *connHooks) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil {
		h.connects.Add(1)
	}
}

func (h *connHooks) OnBrokerDisconnect(kgo.BrokerMetadata, net.Conn) { h.disconnects.Add(1) }

func (h *connHooks) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == kmsg.SASLAuthenticate.Int16() && err == nil {
		h.signIns.Add(1)
	}
}

// TestKgoSignsInAgainWithShortJWTs (KIP-368): a kgo client signs in to
// the built ingest with SASL PLAIN and a JWT that expires in 3 s, taking
// a fresh token each time it signs in. The ingest answers each session's
// lifetime from the token's exp; kgo signs in again on its open
// connections before each ends, and keeps producing for 10 s: every
// record is taken, and is in Kafka.
func TestKgoSignsInAgainWithShortJWTs(t *testing.T) {
	parallel(t, waits)
	k := newFaultyKafka(t)
	kafkatest.CreateTopic(t, k.addr, "sessions", 1)
	iss := securitytest.NewIssuer(t, "https://auth.example.test/")
	cfg := filepath.Join(t.TempDir(), "spillway.yaml")
	if err := os.WriteFile(cfg, []byte(`security:
  require_credentials: true
  jwt:
    jwks_file: `+iss.JWKSFile+`
    issuer: https://auth.example.test/
    audience: spillway
    leeway: 0s
`), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startIngest(t, k.addr, "-config="+cfg)

	var tokens atomic.Int64
	var h connHooks
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.kafkaAddr), kgo.WithHooks(&h), kgo.RecordDeliveryTimeout(10*time.Second),
		kgo.SASL(plain.Plain(func(context.Context) (plain.Auth, error) {
			tokens.Add(1)
			return plain.Auth{User: "svc-1", Pass: iss.Token(t, "svc-1", "spillway", 3*time.Second, nil)}, nil
		})))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	n := 0
	for start := time.Now(); time.Since(start) < 10*time.Second; n++ {
		if err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: "sessions", Value: fmt.Appendf(nil, "%d", n)}).FirstErr(); err != nil {
			t.Fatalf("record %d, %v after the first: %v", n, time.Since(start).Round(time.Millisecond), err)
		}
		time.Sleep(100 * time.Millisecond) // paced over several sessions
	}
	if again := h.signIns.Load() - h.connects.Load(); again < 3 {
		t.Errorf("kgo signed in again %d times on open connections over 10 s of 3 s tokens, want 3 or more", again)
	}
	if d := h.disconnects.Load(); d != 0 {
		t.Errorf("%d connections closed: the sessions should have been renewed in place", d)
	}
	if got := len(kafkatest.Consume(t, k.addr, "sessions", n, 20*time.Second)); got != n {
		t.Errorf("%d records in Kafka, want %d", got, n)
	}
	t.Logf("%d records over 10 s, %d tokens, %d connections, %d sign-ins", n, tokens.Load(), h.connects.Load(), h.signIns.Load())
}
