package spilltest

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// StartNATS runs a NATS server on loopback, on o.Port (a free port when
// 0), with o's other settings, until the test ends.
func StartNATS(tb testing.TB, o *server.Options) *server.Server {
	tb.Helper()
	if o.Port == 0 {
		o.Port = -1
	}
	o.Host, o.NoLog, o.NoSigs = "127.0.0.1", true, true
	s, err := server.NewServer(o)
	if err != nil {
		tb.Fatalf("nats: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats not ready")
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// HeldJetStream is a NATS server without JetStream, at URL, that holds
// every JetStream API request, and every message to subjects under prefix
// (records published to the stream), until Release; then it relays each to
// a real JetStream and its answer back. It is a JetStream that is
// reachable but does not answer, as a cluster without a meta leader or
// quorum, until it does.
type HeldJetStream struct {
	URL     string
	Behind  string // the real JetStream's client URL, for a test to set up streams
	release func()
}

// Release lets the held requests, and all later ones, through.
func (h *HeldJetStream) Release() { h.release() }

// NewHeldJetStream starts a HeldJetStream for the stream's subjects under
// prefix ("spillway") until the test ends.
func NewHeldJetStream(tb testing.TB, prefix string) *HeldJetStream {
	tb.Helper()
	front := StartNATS(tb, &server.Options{})
	js := StartNATS(tb, &server.Options{JetStream: true, StoreDir: tb.TempDir()})
	ncFront, err := nats.Connect(front.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(ncFront.Close)
	ncJS, err := nats.Connect(js.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(ncJS.Close)
	released := make(chan struct{})
	var once sync.Once
	h := &HeldJetStream{URL: front.ClientURL(), Behind: js.ClientURL(), release: func() { once.Do(func() { close(released) }) }}
	tb.Cleanup(h.Release) // before the connections close
	relay := func(m *nats.Msg) {
		<-released
		reply, err := ncJS.RequestMsg(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}, 5*time.Second)
		if err != nil {
			return
		}
		_ = m.RespondMsg(&nats.Msg{Header: reply.Header, Data: reply.Data})
	}
	for _, subject := range []string{"$JS.API.>", prefix + ".>"} {
		if _, err := ncFront.Subscribe(subject, relay); err != nil {
			tb.Fatal(err)
		}
	}
	return h
}
