package app_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// Test secrets: no log may contain them (make test checks the logs of the
// whole suite).
const (
	testKey  = "sk-test-0123456789"
	wrongKey = "sk-wrong-9876543210"
)

func authYAML(t *testing.T) string {
	securitytest.Secret(t, testKey)
	securitytest.Secret(t, wrongKey)
	sum := sha256.Sum256([]byte(testKey))
	return `
security:
  require_credentials: true
  api_keys:
    - principal: billing
      sha256: ` + hex.EncodeToString(sum[:]) + `
  allow_topics: ["orders", "logs.*"]
  acl:
    billing: ["orders"]
`
}

func postAuth(t *testing.T, url, authorization string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("x"))
	req.Header.Set("Content-Type", "text/plain")
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestAuthenticationAndTopicACL(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.StartYAML(t, addr, authYAML(t))

	tests := []struct {
		name, auth, topic string
		status, code      int
		message           string
	}{
		{"no credentials", "", "orders", 401, 40101, "credentials required"},
		{"wrong key", "Bearer " + wrongKey, "orders", 401, 40101, "invalid credentials: the API key is not known"},
		{"not bearer", "Basic Zm9vOmJhcg==", "orders", 401, 40101, "invalid credentials: want Authorization: Bearer TOKEN"},
		{"topic outside the ACL", "Bearer " + testKey, "logs.app", 403, 40302, `billing may not produce to topic "logs.app"`},
		{"topic outside the allow-list", "Bearer " + testKey, "secrets", 403, 40302, `billing may not produce to topic "secrets"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, h := postAuth(t, in.URL+"/topics/"+tt.topic+"/messages", tt.auth)
			assert.Equal(t, tt.status, code, body)
			var e struct {
				ErrorCode int    `json:"error_code"`
				Message   string `json:"message"`
			}
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			assert.Equal(t, tt.code, e.ErrorCode)
			assert.Contains(t, e.Message, tt.message)
			if code == 401 {
				assert.Equal(t, "Bearer", h.Get("WWW-Authenticate"))
			}
		})
	}
	code, body, _ := postAuth(t, in.URL+"/topics/orders/messages", "Bearer "+testKey)
	require.Equal(t, http.StatusOK, code, body)

	// gRPC, the same rules.
	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := ingestv1.NewIngestServiceClient(conn)
	produce := func(auth, topic string) error {
		ctx := t.Context()
		if auth != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
		}
		_, err := client.Produce(ctx, &ingestv1.ProduceRequest{Topic: topic, Records: []*ingestv1.Record{{Value: []byte("y")}}})
		return err
	}
	assert.Equal(t, codes.Unauthenticated, status.Code(produce("", "orders")))
	assert.Equal(t, codes.Unauthenticated, status.Code(produce("Bearer "+wrongKey, "orders")))
	err = produce("Bearer "+testKey, "logs.app")
	assert.Equal(t, codes.PermissionDenied, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), `billing may not produce to topic "logs.app"`)
	require.NoError(t, produce("Bearer "+testKey, "orders"))

	m := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	assert.Equal(t, 5.0, m(`spillway_denied_total{principal="anonymous",reason="unauthenticated"}`), "3 over HTTP, 2 over gRPC")
	assert.Equal(t, 3.0, m(`spillway_denied_total{principal="billing",reason="forbidden"}`))
	assert.Equal(t, 2.0, m(`spillway_client_records_total{outcome="delivered",principal="billing",topic="orders"}`))
	assert.NotContains(t, in.LogText(), testKey, "no secret in the logs")
}

// TestRateLimits: a burst over a principal's records/s limit is refused
// with 429 and Retry-After (gRPC RESOURCE_EXHAUSTED), counted; clients
// without credentials share one bucket (TestRateLimitBucketsByPrincipal:
// a verified principal has its own); one request over the global bytes/s
// limit is refused whatever the bucket. The limits are slow enough (one record per
// 100 s) that the test does not depend on the machine's speed.
func TestRateLimits(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.StartYAML(t, addr, `
security:
  rate_limit:
    records_per_second: 0.01
    global_bytes_per_second: 50
`)
	post := func(client, value string) (int, string, http.Header) {
		req, _ := http.NewRequest(http.MethodPost, in.URL+"/topics/limited/messages", strings.NewReader(value))
		req.Header.Set("Content-Type", "text/plain")
		req.Header.Set("X-Client-Id", client)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	s, body, _ := post("carol", strings.Repeat("z", 60))
	assert.Equal(t, http.StatusTooManyRequests, s)
	assert.Contains(t, body, "all clients' bytes per second: one request of 60 is more than a second's worth")

	statuses := map[int]int{}
	for range 5 {
		s, body, h := post("alice", "x")
		statuses[s]++
		if s == http.StatusTooManyRequests {
			assert.Equal(t, "1", h.Get("Retry-After"))
			assert.Contains(t, body, `"error_code":42901`)
			assert.Contains(t, body, "alice is over its rate limit (records per second, security.rate_limit; clients without credentials share one bucket)")
		}
	}
	assert.Equal(t, map[int]int{200: 1, 429: 4}, statuses, "one record per 100 s: the first passes, the burst is refused")
	s, body, _ = post("bob", "y")
	assert.Equal(t, http.StatusTooManyRequests, s, "without credentials, bob shares alice's bucket: %s", body)
	assert.Contains(t, body, "bob is over its rate limit (records per second, security.rate_limit; clients without credentials share one bucket)")

	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "client-id", "alice")
	_, err = ingestv1.NewIngestServiceClient(conn).Produce(ctx, &ingestv1.ProduceRequest{Topic: "limited", Records: []*ingestv1.Record{{Value: []byte("x")}}})
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)

	assert.Equal(t, 5.0, ingesttest.Metric(t, in.Monitor, `spillway_denied_total{principal="alice",reason="rate_limited"}`))
}

func jwtYAML(jwks string) string {
	return `
security:
  require_credentials: true
  jwt:
    ` + jwks + `
    issuer: https://auth.example.test/
    audience: spillway
    principal_claim: client_name
  acl:
    billing: ["orders"]
`
}

// TestJWT: bearer JWTs verified against a JWK Set file: the principal is
// the configured claim and its ACL applies; an expired token, one for
// another audience, one signed by another key and one without the claim
// are 401 with a message that says which; gRPC alike. A new key in the
// file is taken without a restart.
func TestJWT(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	iss := securitytest.NewIssuer(t, "https://auth.example.test/")
	forger := securitytest.NewIssuer(t, "https://auth.example.test/")
	dir := t.TempDir()
	copyFile(t, iss.JWKSFile, dir+"/jwks.json")
	in := ingesttest.StartYAML(t, addr, jwtYAML("jwks_file: "+dir+"/jwks.json"))
	named := map[string]any{"client_name": "billing"}

	tests := []struct {
		name, token string
		status      int
		message     string
	}{
		{"valid", iss.Token(t, "svc-1", "spillway", time.Hour, named), 200, ""},
		{"expired", iss.Token(t, "svc-1", "spillway", -time.Hour, named), 401, "invalid credentials: the token has expired"},
		{"wrong audience", iss.Token(t, "svc-1", "another-service", time.Hour, named), 401, "invalid credentials: the token is not for this audience"},
		{"another key", forger.Token(t, "svc-1", "spillway", time.Hour, named), 401, "invalid credentials: the token's signature cannot be verified"},
		{"no principal claim", iss.Token(t, "svc-1", "spillway", time.Hour, nil), 401, "invalid credentials: the token has no client_name claim"},
		{"not a JWT", securitytest.Secret(t, "eyJhbGciOi.not-a.jwt"), 401, "invalid credentials: the token is not a well-formed JWT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, _ := postAuth(t, in.URL+"/topics/orders/messages", "Bearer "+tt.token)
			assert.Equal(t, tt.status, code, body)
			assert.Contains(t, body, tt.message)
			assert.NotContains(t, body, tt.token)
		})
	}
	valid := tests[0].token
	code, body, _ := postAuth(t, in.URL+"/topics/logs/messages", "Bearer "+valid)
	assert.Equal(t, http.StatusForbidden, code, "the ACL of the token's principal: %s", body)

	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	produce := func(token string) error {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
		_, err := ingestv1.NewIngestServiceClient(conn).Produce(ctx, &ingestv1.ProduceRequest{Topic: "orders", Records: []*ingestv1.Record{{Value: []byte("y")}}})
		return err
	}
	require.NoError(t, produce(valid))
	err = produce(tests[1].token)
	assert.Equal(t, codes.Unauthenticated, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "the token has expired")
	err = produce(tests[2].token)
	assert.Equal(t, codes.Unauthenticated, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "the token is not for this audience")

	m := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	const delivered = `spillway_client_records_total{outcome="delivered",principal="billing",topic="orders"}`
	assert.Equal(t, 2.0, m(delivered), "one over HTTP, one over gRPC")
	assert.Equal(t, 7.0, m(`spillway_denied_total{principal="anonymous",reason="unauthenticated"}`), "5 over HTTP, 2 over gRPC")

	// The issuer rotates to the forger's key: its tokens pass, once the
	// file is read again (at most a second after it changes).
	copyFile(t, forger.JWKSFile, dir+"/jwks.json")
	rotated := forger.Token(t, "svc-1", "spillway", time.Hour, named)
	require.Eventually(t, func() bool {
		code, _, _ := postAuth(t, in.URL+"/topics/orders/messages", "Bearer "+rotated)
		return code == http.StatusOK
	}, 10*time.Second, 100*time.Millisecond)

	assert.Equal(t, 3.0, m(delivered), "after the rotation")
}

// TestJWKSURL: the JWK Set fetched from a URL.
func TestJWKSURL(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	iss := securitytest.NewIssuer(t, "https://auth.example.test/")
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(iss.JWKS)
	}))
	defer jwks.Close()
	in := ingesttest.StartYAML(t, addr, jwtYAML("jwks_url: "+jwks.URL))
	code, body, _ := postAuth(t, in.URL+"/topics/orders/messages", "Bearer "+iss.Token(t, "s", "spillway", time.Hour, map[string]any{"client_name": "billing"}))
	assert.Equal(t, http.StatusOK, code, body)
	code, body, _ = postAuth(t, in.URL+"/topics/orders/messages", "Bearer "+iss.Token(t, "s", "elsewhere", time.Hour, map[string]any{"client_name": "billing"}))
	assert.Equal(t, http.StatusUnauthorized, code, body)
}

// TestStreamEndsWhenTokenExpires: a gRPC stream opened with a JWT ends
// with UNAUTHENTICATED once the token expires.
func TestStreamEndsWhenTokenExpires(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	iss := securitytest.NewIssuer(t, "https://auth.example.test/")
	in := ingesttest.StartYAML(t, addr, strings.Replace(jwtYAML("jwks_file: "+iss.JWKSFile), "principal_claim: client_name", "principal_claim: client_name\n    leeway: 0s", 1))
	token := iss.Token(t, "svc", "spillway", 2*time.Second, map[string]any{"client_name": "billing"})
	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
	stream, err := ingestv1.NewIngestServiceClient(conn).ProduceStream(ctx)
	require.NoError(t, err)
	var last error
	seq := uint64(0)
	// Each poll sends a request on the stream: once the token has expired
	// the stream answers with its end.
	require.Eventually(t, func() bool {
		seq++
		if err := stream.Send(&ingestv1.ProduceStreamRequest{Sequence: seq, Topic: "orders", Records: []*ingestv1.Record{{Value: []byte("x")}}}); err != nil {
			_, last = stream.Recv()
			return true
		}
		_, last = stream.Recv()
		return last != nil
	}, 15*time.Second, 100*time.Millisecond)
	require.Greater(t, seq, uint64(2), "the stream carried requests before its token expired")
	require.Error(t, last, "the stream outlived its token")
	assert.Equal(t, codes.Unauthenticated, status.Code(last))
	assert.Contains(t, status.Convert(last).Message(), "the token has expired")
}
