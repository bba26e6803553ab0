package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
)

// randomSecret is a registered secret no log may contain: prefix and 32
// random hex digits.
func randomSecret(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return securitytest.Secret(t, prefix+hex.EncodeToString(b))
}

// post sends value to topic with an Authorization header and returns the
// status and body.
func postBearer(t *testing.T, addr, topic, bearer, key, value string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/topics/"+topic+"/messages", strings.NewReader(value))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("X-Kafka-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSecretsStayOutOfLogs runs the ingest binary with secrets of every
// kind it handles, at log level debug, and uses each: a SASL password to
// Kafka (from the environment), an API key and a JWT that clients send,
// and wrong ones of each, which take the error paths where a leak is most
// likely. Every secret is registered (pkg/securitytest), so that make
// test's secretscan checks the binary's log for it; the test also checks
// that log itself, so that it fails without make too.
func TestSecretsStayOutOfLogs(t *testing.T) {
	parallel(t, waits)
	password := randomSecret(t, "sasl-password-")
	apiKey := randomSecret(t, "sk-test-")
	unknownKey := randomSecret(t, "sk-unknown-")
	iss := securitytest.NewIssuer(t, "https://auth.e2e.test/")
	token := iss.Token(t, "svc-e2e", "spillway", time.Hour, nil)
	expired := iss.Token(t, "svc-e2e", "spillway", -time.Hour, nil)
	secrets := map[string]string{"SASL password": password, "API key": apiKey, "unknown API key": unknownKey, "JWT": token, "expired JWT": expired}

	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "spillway", password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	broker := c.ListenAddrs()[0]

	sum := sha256.Sum256([]byte(apiKey))
	config := filepath.Join(t.TempDir(), "spillway.yaml")
	if err := os.WriteFile(config, []byte(`
global: {log: {level: debug}}
security:
  require_credentials: true
  api_keys:
    - {principal: billing, sha256: `+hex.EncodeToString(sum[:])+`}
  jwt:
    jwks_file: `+iss.JWKSFile+`
    issuer: https://auth.e2e.test/
    audience: spillway
kafka:
  security.protocol: sasl_plaintext
  sasl.mechanism: SCRAM-SHA-256
  sasl.username: spillway
`), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startIngest(t, broker, "-config="+config, "SPILLWAY_KAFKA_SASL_PASSWORD="+password)

	cases := []struct {
		name, bearer string
		status       int
		message      string
	}{
		{"API key", apiKey, http.StatusOK, `"outcome":"delivered"`},
		{"JWT", token, http.StatusOK, `"outcome":"delivered"`},
		{"unknown API key", unknownKey, http.StatusUnauthorized, "invalid credentials: the API key is not known"},
		{"expired JWT", expired, http.StatusUnauthorized, "invalid credentials: the token has expired"},
	}
	for _, tc := range cases {
		status, body := postBearer(t, in.httpAddr, "secret", tc.bearer, "key-"+tc.name, "value-"+tc.name)
		if status != tc.status || !strings.Contains(body, tc.message) {
			t.Errorf("%s: %d %s; want %d with %q", tc.name, status, body, tc.status, tc.message)
		}
		if strings.Contains(body, tc.bearer) {
			t.Errorf("%s: the answer repeats the credential", tc.name)
		}
	}

	// Both delivered records are in Kafka, read over SASL with the same
	// password by franz-go (kcat 1.7.1 cannot authenticate to kfake: it
	// wants a SASL handshake that kfake does not advertise).
	recs := kafkatest.ConsumeWith(t, broker, "secret", 2, 10*time.Second,
		kgo.SASL(scram.Auth{User: "spillway", Pass: password}.AsSha256Mechanism()))
	got := map[string]string{}
	for _, r := range recs {
		got[string(r.Key)] = string(r.Value)
	}
	if len(recs) != 2 || got["key-API key"] != "value-API key" || got["key-JWT"] != "value-JWT" {
		t.Errorf("records in Kafka: %v; want the API key's and the JWT's", got)
	}

	// A wrong SASL password: Kafka refuses the ingest, and the record is
	// not delivered; whatever the ingest says about it must not hold the
	// password.
	wrongPassword := randomSecret(t, "wrong-password-")
	secrets["wrong SASL password"] = wrongPassword
	wrong := startIngest(t, broker, "-config="+config, "SPILLWAY_KAFKA_SASL_PASSWORD="+wrongPassword)
	if status, body := postBearer(t, wrong.httpAddr, "secret", apiKey, "k", "v"); status == http.StatusOK {
		t.Errorf("with a wrong SASL password the record was delivered: %d %s", status, body)
	}

	// The secrets were in use and are registered, so that secretscan
	// looks for them in these logs; and they are not there.
	for name, s := range secrets {
		for _, p := range []*ingestProcess{in, wrong} {
			if strings.Contains(p.out.String(), s) {
				t.Errorf("the ingest logged the %s", name)
			}
		}
	}
	if dir := os.Getenv(securitytest.LogDirEnv); dir != "" {
		registered := registeredSecrets(t, dir)
		for name, s := range secrets {
			if !registered[s] {
				t.Errorf("the %s is not registered under %s: secretscan would not look for it", name, dir)
			}
		}
	} else {
		t.Logf("%s is not set: only this test checks the logs (make test also runs secretscan)", securitytest.LogDirEnv)
	}
}

// registeredSecrets reads the secrets registered under dir, as secretscan
// does.
func registeredSecrets(t *testing.T, dir string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, securitytest.SecretsDir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Fields(string(b)) {
			s, err := hex.DecodeString(line)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out[string(s)] = true
		}
	}
	return out
}
