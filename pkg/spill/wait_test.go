package spill_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/securitytest"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
	"github.com/spillway/spillway/pkg/spill/spilltest"
)

// TestConnectWaitsForJetStream: while JetStream does not answer, Connect
// tries again with short tries instead of waiting out one deadline, and
// succeeds soon after JetStream answers; every try cut short by the
// deadline is reported.
func TestConnectWaitsForJetStream(t *testing.T) {
	held := spilltest.NewHeldJetStream(t, "spillway")
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+held.URL)
	time.AfterFunc(spill.TryTimeout+2*time.Second, held.Release)
	start := time.Now()
	nc, _, err := spill.Connect(t.Context(), c, nil, "test", discard)
	require.NoError(t, err)
	nc.Close()
	// One try of TryTimeout, held; the next after at most 2 s of pause,
	// answered once released.
	assert.Less(t, time.Since(start), 2*spill.TryTimeout+3*time.Second)
}

// TestConnectGivesUpWithItsContext: Connect waits until its context ends,
// and says what it waited for.
func TestConnectGivesUpWithItsContext(t *testing.T) {
	held := spilltest.NewHeldJetStream(t, "spillway")
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+held.URL)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancel()
	_, _, err := spill.Connect(ctx, c, nil, "test", discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gave up waiting for the buffer: create or update stream SPILLWAY: ")
}

// TestConnectStopsOnAConfigurationError: a stream that exists with another
// retention policy cannot be waited out: Connect fails at once.
func TestConnectStopsOnAConfigurationError(t *testing.T) {
	srv := spilltest.StartNATS(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "SPILLWAY", Subjects: []string{"spillway.>"}, Retention: jetstream.LimitsPolicy})
	require.NoError(t, err)

	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+srv.ClientURL())
	start := time.Now()
	_, _, err = spill.Connect(t.Context(), c, nil, "test", discard)
	require.Error(t, err)
	assert.True(t, spill.IsConfigError(err), "%v", err)
	assert.Contains(t, err.Error(), "exists with another retention policy")
	assert.Less(t, time.Since(start), time.Second)
}

// TestConnectWaitsForANATSServer: while no NATS server listens at the
// configured URL, Connect tries again (it does not fail), and succeeds
// soon after a server starts there.
func TestConnectWaitsForANATSServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close()) // nothing listens there now
	c := walConfig(t, fmt.Sprintf("SPILLWAY_PRODUCER_WAL_NATS_URLS=nats://127.0.0.1:%d", port))

	type connected struct {
		nc  *nats.Conn
		err error
	}
	result := make(chan connected, 1)
	go func() {
		nc, _, err := spill.Connect(t.Context(), c, nil, "test", discard)
		result <- connected{nc, err}
	}()
	select {
	case r := <-result:
		t.Fatalf("Connect returned while no server listened: %v", r.err)
	case <-time.After(2 * time.Second):
	}
	spilltest.StartNATS(t, &server.Options{Port: port, JetStream: true, StoreDir: t.TempDir()})
	started := time.Now()
	select {
	case r := <-result:
		require.NoError(t, r.err)
		defer r.nc.Close()
		t.Logf("connected %v after the server started", time.Since(started).Round(time.Millisecond))
		// The stream was made on the server that came.
		js, err := jetstream.New(r.nc)
		require.NoError(t, err)
		_, err = js.Stream(t.Context(), "SPILLWAY")
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("Connect did not return within 15s of the server starting")
	}
}

// TestConnectStopsOnRefusedCredentials: a NATS server that refuses the
// credentials is a configuration error: Connect fails at once and says
// why, instead of waiting.
func TestConnectStopsOnRefusedCredentials(t *testing.T) {
	c := walConfig(t)
	srv, err := embeddednats.Start(c, discard)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	other := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+srv.ClientURL(), "SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS="+writeSeed(t))
	start := time.Now()
	_, _, err = spill.Connect(t.Context(), other, nil, "test", discard)
	require.Error(t, err)
	assert.True(t, spill.IsConfigError(err), "%v", err)
	assert.Contains(t, err.Error(), "Authorization Violation")
	assert.Less(t, time.Since(start), 2*time.Second, "refused at once, not waited for")
}

// TestConnectStopsOnATLSMismatch: TLS that the two sides cannot agree on
// is a configuration error too: Connect fails at once and says why.
func TestConnectStopsOnATLSMismatch(t *testing.T) {
	serverCA, otherCA := securitytest.NewCA(t, "nats server CA"), securitytest.NewCA(t, "another CA")
	leaf := serverCA.Issue(t, "nats", securitytest.LeafOptions{})
	tlsServer := spilltest.StartNATS(t, &server.Options{JetStream: true, StoreDir: t.TempDir(),
		TLS: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, MinVersion: tls.VersionTLS12}})
	plain := spilltest.StartNATS(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	for _, tc := range []struct {
		name, url, ca, want string
	}{
		{"a server certificate the CA does not vouch for", tlsServer.ClientURL(), otherCA.CertFile, "certificate signed by unknown authority"},
		{"TLS asked of a server without it", plain.ClientURL(), serverCA.CertFile, "secure connection not available"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+tc.url, "SPILLWAY_PRODUCER_WAL_NATS_TLS_CA="+tc.ca)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second) // a wait would end here
			defer cancel()
			start := time.Now()
			_, _, err := spill.Connect(ctx, c, nil, "test", discard)
			require.Error(t, err)
			assert.True(t, spill.IsConfigError(err), "%v", err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Less(t, time.Since(start), 2*time.Second, "refused at once, not waited for")
		})
	}
	t.Run("the CA that vouches for it", func(t *testing.T) {
		c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+tlsServer.ClientURL(), "SPILLWAY_PRODUCER_WAL_NATS_TLS_CA="+serverCA.CertFile)
		nc, _, err := spill.Connect(t.Context(), c, nil, "test", discard)
		require.NoError(t, err)
		nc.Close()
	})
}

// TestPendingBufferRefusesUntilSet: a record given to the buffer before it
// is connected is answered unavailable, never buffered.
func TestPendingBufferRefusesUntilSet(t *testing.T) {
	c := walConfig(t)
	b, _, _ := startBuffer(t, c)
	var p spill.PendingBuffer
	require.EqualError(t, p.Ready(), "buffer: not ready yet")
	p.SetReason(context.DeadlineExceeded)
	require.EqualError(t, p.Ready(), "buffer: context deadline exceeded")
	recs := []record.Record{{ID: "01J0000000000000000000000A", Topic: "t", Value: []byte("v")}}
	res := p.Publish(t.Context(), spill.Spilled, recs, "test")
	require.Len(t, res, 1)
	assert.Equal(t, record.Failed, res[0].Outcome)
	assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(res[0].Err))
	assert.Zero(t, p.Fill(t.Context()))

	p.Set(b)
	require.NoError(t, p.Ready())
	res = p.Publish(t.Context(), spill.Spilled, recs, "test")
	assert.Equal(t, record.Buffered, res[0].Outcome, "%v", res[0].Err)
}
