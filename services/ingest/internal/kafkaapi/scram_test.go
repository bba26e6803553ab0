package kafkaapi_test

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"hash"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// scramUser is a security.scram_users entry for password, made as
// docs/security.md says (RFC 5802: the stored key and the server key of
// the salted password), independently of the server's SCRAM library.
func scramUser(t *testing.T, principal, mechanism, password string) string {
	t.Helper()
	h, size := sha256.New, 32
	if mechanism == "SCRAM-SHA-512" {
		h, size = sha512.New, 64
	}
	salt, iters := []byte("salt of "+principal), 4096
	salted, err := pbkdf2.Key(h, password, salt, iters, size)
	require.NoError(t, err)
	mac := func(msg string) []byte {
		m := hmac.New(h, salted)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	stored := func(b []byte) []byte { var d hash.Hash = h(); d.Write(b); return d.Sum(nil) }(mac("Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("    - {principal: %s, mechanism: %s, salt: %s, iterations: %d, stored_key: %s, server_key: %s}\n",
		principal, mechanism, b64(salt), iters, b64(stored), b64(mac("Server Key")))
}

// TestSASLSCRAM: with credentials required and SCRAM users configured
// (their stored and server keys, not their passwords), kgo signs in with
// SCRAM-SHA-256 and SCRAM-SHA-512 and the right password: its records
// are in Kafka and counted under the SCRAM user's principal. A wrong
// password, or a user of the other mechanism, fails the sign-in.
func TestSASLSCRAM(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "orders", 1)
	pass256 := securitytest.Secret(t, "scram-256-password-0123")
	pass512 := securitytest.Secret(t, "scram-512-password-4567")
	in := ingesttest.StartYAML(t, addr, `
security:
  require_credentials: true
  scram_users:
`+scramUser(t, "billing", "SCRAM-SHA-256", pass256)+scramUser(t, "audit", "SCRAM-SHA-512", pass512))

	for _, c := range []struct {
		user string
		mech func(scram.Auth) sasl.Mechanism
		pass string
	}{
		{"billing", func(a scram.Auth) sasl.Mechanism { return a.AsSha256Mechanism() }, pass256},
		{"audit", func(a scram.Auth) sasl.Mechanism { return a.AsSha512Mechanism() }, pass512},
	} {
		cl := kgoClient(t, in.Kafka, kgo.SASL(c.mech(scram.Auth{User: c.user, Pass: c.pass})),
			kgo.SoftwareNameAndVersion("scram-producer", "1.0.0"))
		require.NoError(t, cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Key: []byte(c.user), Value: []byte("signed in as " + c.user)}).FirstErr(), c.user)
		assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor,
			`spillway_client_requests_total{library="scram-producer",principal="`+c.user+`",version="1.0.0"}`), c.user)
	}
	got := kafkatest.Consume(t, addr, "orders", 2, 10*time.Second)
	values := map[string]string{}
	for _, r := range got {
		values[string(r.Key)] = string(r.Value)
	}
	assert.Equal(t, map[string]string{"billing": "signed in as billing", "audit": "signed in as audit"}, values)

	for name, mech := range map[string]sasl.Mechanism{
		"wrong password":       scram.Auth{User: "billing", Pass: "wrong"}.AsSha256Mechanism(),
		"other mechanism":      scram.Auth{User: "billing", Pass: pass256}.AsSha512Mechanism(),
		"unknown user":         scram.Auth{User: "nobody", Pass: pass256}.AsSha256Mechanism(),
		"another user's proof": scram.Auth{User: "audit", Pass: pass256}.AsSha512Mechanism(),
	} {
		bad := kgoClient(t, in.Kafka, kgo.SASL(mech), kgo.RecordRetries(0))
		err := bad.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("x")}).FirstErr()
		require.ErrorIs(t, err, kerr.SaslAuthenticationFailed, name)
	}
}
