package kafkaapi_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// kafkaConn is one raw connection to the listener.
type kafkaConn struct {
	t    *testing.T
	c    net.Conn
	corr int32
}

func dialKafka(t *testing.T, addr string) *kafkaConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &kafkaConn{t: t, c: c}
}

// send writes req; it fails the test if the write fails.
func (k *kafkaConn) send(req kmsg.Request) {
	k.t.Helper()
	k.corr++
	_, err := k.c.Write(kmsg.NewRequestFormatter(kmsg.FormatterClientID("raw")).AppendRequest(nil, req, k.corr))
	require.NoError(k.t, err)
}

// ask sends req and reads its answer into resp.
func (k *kafkaConn) ask(req kmsg.Request, resp kmsg.Response) {
	k.t.Helper()
	k.send(req)
	require.NoError(k.t, k.c.SetReadDeadline(time.Now().Add(5*time.Second)))
	size := make([]byte, 4)
	_, err := k.c.Read(size[:1])
	require.NoError(k.t, err, "the connection closed instead of answering %s", kmsg.NameForKey(req.Key()))
	_, err = fullRead(k.c, size[1:])
	require.NoError(k.t, err)
	body := make([]byte, int(size[0])<<24|int(size[1])<<16|int(size[2])<<8|int(size[3]))
	_, err = fullRead(k.c, body)
	require.NoError(k.t, err)
	body = body[4:]
	if resp.IsFlexible() && resp.Key() != kmsg.ApiVersions.Int16() {
		body = body[1:]
	}
	require.NoError(k.t, resp.ReadFrom(body))
}

func fullRead(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// signIn signs in with SASL PLAIN (SaslAuthenticate v1) and returns the
// answer.
func (k *kafkaConn) signIn(user, password string) *kmsg.SASLAuthenticateResponse {
	k.t.Helper()
	hs := kmsg.NewPtrSASLHandshakeRequest()
	hs.Version, hs.Mechanism = 1, "PLAIN"
	hsResp := &kmsg.SASLHandshakeResponse{Version: 1}
	k.ask(hs, hsResp)
	require.Zero(k.t, hsResp.ErrorCode)
	auth := kmsg.NewPtrSASLAuthenticateRequest()
	auth.Version = 1
	auth.SASLAuthBytes = []byte("\x00" + user + "\x00" + password)
	resp := &kmsg.SASLAuthenticateResponse{Version: 1}
	k.ask(auth, resp)
	return resp
}

// metadataAnswered says whether a Metadata request is answered, its
// answer read whole, or the connection closed instead.
func (k *kafkaConn) metadataAnswered() bool {
	k.t.Helper()
	req := kmsg.NewPtrMetadataRequest()
	req.Version = 4
	k.send(req)
	if closedWithoutAnswer(k.t, k.c) {
		return false
	}
	rest := make([]byte, 3)
	_, err := fullRead(k.c, rest)
	require.NoError(k.t, err)
	_, err = fullRead(k.c, make([]byte, int(rest[0])<<16|int(rest[1])<<8|int(rest[2])))
	require.NoError(k.t, err)
	return true
}

// apiKeysYAML is a security section requiring credentials with an API key
// for each principal, and the extra lines.
func apiKeysYAML(t *testing.T, extra string, principals ...string) (string, map[string]string) {
	t.Helper()
	keys := map[string]string{}
	yaml := "security:\n  require_credentials: true\n" + extra + "  api_keys:\n"
	for _, p := range principals {
		keys[p] = securitytest.Secret(t, "kafka-session-key-of-"+p+"-0123456789")
		sum := sha256.Sum256([]byte(keys[p]))
		yaml += fmt.Sprintf("    - {principal: %s, sha256: %s}\n", p, hex.EncodeToString(sum[:]))
	}
	return yaml, keys
}

// TestSASLSessionEnds (KIP-368): SaslAuthenticate v1 answers the session's
// lifetime, security.sasl.max_session_lifetime for an API key; past it,
// a request other than signing in again closes the connection. A client
// that signs in again within it, as the same principal, goes on past the
// first session's end; signing in again as another principal fails and
// closes the connection.
func TestSASLSessionEnds(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	yaml, keys := apiKeysYAML(t, "  sasl:\n    max_session_lifetime: 1500ms\n", "billing", "audit")
	in := ingesttest.StartYAML(t, addr, yaml)

	lapsing := dialKafka(t, in.Kafka)
	again := dialKafka(t, in.Kafka)
	resp := lapsing.signIn("billing", keys["billing"])
	signedAt := time.Now() // after the session began: it ends by signedAt+1.5s
	require.Zero(t, resp.ErrorCode)
	assert.InDelta(t, 1500, resp.SessionLifetimeMillis, 100, "the session's lifetime: security.sasl.max_session_lifetime")
	require.Zero(t, again.signIn("billing", keys["billing"]).ErrorCode)
	assert.True(t, lapsing.metadataAnswered(), "within the session")

	// Signed in again before its first session ends (it began after
	// signedAt): a new session.
	time.Sleep(time.Until(signedAt.Add(time.Second)))
	resp = again.signIn("billing", keys["billing"])
	require.Zero(t, resp.ErrorCode)
	assert.Positive(t, resp.SessionLifetimeMillis)

	time.Sleep(time.Until(signedAt.Add(1550 * time.Millisecond))) // lapsing's session is over
	assert.False(t, lapsing.metadataAnswered(), "a request after the session ended closes the connection")
	assert.True(t, again.metadataAnswered(), "a connection that signed in again goes on")

	other := again.signIn("audit", keys["audit"])
	assert.Equal(t, kerr.SaslAuthenticationFailed.Code, other.ErrorCode, "signing in again as another principal")
	assert.True(t, closedWithoutAnswer(t, again.c), "and the connection is closed")
}

// TestSASLSessionEndsWithTheToken: a session signed in with a JWT lasts
// until the token expires, when that is sooner than
// security.sasl.max_session_lifetime (1 h by default).
func TestSASLSessionEndsWithTheToken(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	iss := securitytest.NewIssuer(t, "https://auth.example.test/")
	in := ingesttest.StartYAML(t, addr, `
security:
  require_credentials: true
  jwt:
    jwks_file: `+iss.JWKSFile+`
    issuer: https://auth.example.test/
    audience: spillway
    leeway: 0s
`)
	token := iss.Token(t, "svc-1", "spillway", 30*time.Second, nil)
	resp := dialKafka(t, in.Kafka).signIn("svc-1", token)
	require.Zero(t, resp.ErrorCode)
	assert.InDelta(t, 30_000, resp.SessionLifetimeMillis, 2_000, "the token's remaining life")
}

// TestKgoSignsInAgain: kgo, told a session lifetime of 2 s, signs in
// again on its connections before each session ends and keeps producing
// across several lifetimes, its connections never closed.
func TestKgoSignsInAgain(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	yaml, keys := apiKeysYAML(t, "  sasl:\n    max_session_lifetime: 2s\n", "billing")
	in := ingesttest.StartYAML(t, addr, yaml)

	var h saslHooks
	cl := kgoClient(t, in.Kafka, kgo.SASL(plain.Auth{User: "billing", Pass: keys["billing"]}.AsMechanism()), kgo.WithHooks(&h))
	n := 0
	for start := time.Now(); time.Since(start) < 5*time.Second; n++ {
		require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: fmt.Appendf(nil, "%d", n)}).FirstErr(), "record %d", n)
		time.Sleep(100 * time.Millisecond) // paced over several sessions
	}
	assert.Zero(t, h.disconnects.Load(), "no connection closed")
	assert.GreaterOrEqual(t, h.authenticates.Load()-h.connects.Load(), int64(2), "sign-ins again on open connections")
	assert.Len(t, kafkatest.Consume(t, addr, "orders", n, 10*time.Second), n)
}

// saslHooks counts kgo's connections, disconnections and SaslAuthenticate
// requests.
type saslHooks struct{ connects, disconnects, authenticates atomic.Int64 }

func (h *saslHooks) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil {
		h.connects.Add(1)
	}
}

func (h *saslHooks) OnBrokerDisconnect(kgo.BrokerMetadata, net.Conn) { h.disconnects.Add(1) }

func (h *saslHooks) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == kmsg.SASLAuthenticate.Int16() && err == nil {
		h.authenticates.Add(1)
	}
}
