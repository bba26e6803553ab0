package app_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
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

// Keys of the tests below: no log may contain them.
const (
	victimKey  = "sk-victim-5551234567"
	billingKey = "sk-billing-5557654321"
)

func keyYAML(t *testing.T, principal, key string) string {
	t.Helper()
	securitytest.Secret(t, key)
	sum := sha256.Sum256([]byte(key))
	return "    - principal: " + principal + "\n      sha256: " + hex.EncodeToString(sum[:]) + "\n"
}

// errorAnswer is an HTTP error answer.
type errorAnswer struct {
	ErrorCode int    `json:"error_code"`
	Message   string `json:"message"`
}

func postAs(t *testing.T, url, value string, headers ...string) (int, errorAnswer) {
	t.Helper()
	code, body := ingesttest.Post(t, url, "text/plain", value, headers...)
	var a errorAnswer
	if code != http.StatusOK {
		require.NoError(t, json.Unmarshal([]byte(body), &a), body)
	}
	return code, a
}

// TestAliasesMeetTheRulesOfTheirTopic: the README's example, a rule on
// orders and legacy-orders mapped to it, attacked through the alias. A
// non-JSON keyless record posted to legacy-orders is refused with 422 (gRPC
// InvalidArgument) as it would be on orders; a principal whose ACL allows
// legacy-orders but not orders gets 403, and so does a client writing
// through an alias to a topic outside security.allow_topics. Kafka holds
// only the one good record sent through the alias.
func TestAliasesMeetTheRulesOfTheirTopic(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.StartYAML(t, addr, `
security:
  api_keys:
`+keyYAML(t, "billing", billingKey)+`
  allow_topics: ["orders", "legacy-orders", "public"]
  acl:
    billing: ["legacy-orders"]
validation:
  rules:
    - topics: ["orders"]
      key_required: true
      json: true
topic_mapping:
  - {exact: legacy-orders, to: orders}
  - {exact: public, to: secret}
`)
	url := func(topic string) string { return in.URL + "/topics/" + topic + "/messages" }

	code, a := postAs(t, url("legacy-orders"), "not json")
	assert.Equal(t, http.StatusUnprocessableEntity, code, a.Message)
	assert.Equal(t, "validation rule key_required (validation.rules[0]) failed: the record has no key", a.Message)
	code, a = postAs(t, url("legacy-orders"), "not json", "X-Kafka-Key", "k1")
	assert.Equal(t, http.StatusUnprocessableEntity, code, a.Message)
	assert.Equal(t, "validation rule json (validation.rules[0]) failed: the value is not valid JSON", a.Message)

	code, a = postAs(t, url("legacy-orders"), `{"n":1}`, "X-Kafka-Key", "k2", "Authorization", "Bearer "+billingKey)
	assert.Equal(t, http.StatusForbidden, code, a.Message)
	assert.Equal(t, 40302, a.ErrorCode)
	assert.Equal(t, `billing may not produce to topic "orders", which topic_mapping maps "legacy-orders" to (security.allow_topics, security.acl)`, a.Message)

	code, a = postAs(t, url("public"), `{"n":1}`)
	assert.Equal(t, http.StatusForbidden, code, a.Message)
	assert.Equal(t, `anonymous may not produce to topic "secret", which topic_mapping maps "public" to (security.allow_topics, security.acl)`, a.Message)

	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := ingestv1.NewIngestServiceClient(conn)
	_, err = client.Produce(t.Context(), &ingestv1.ProduceRequest{Topic: "legacy-orders", Records: []*ingestv1.Record{{Value: []byte("not json")}}})
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), "validation rule key_required (validation.rules[0]) failed")
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+billingKey)
	_, err = client.Produce(ctx, &ingestv1.ProduceRequest{Topic: "legacy-orders", Records: []*ingestv1.Record{{Key: []byte("k3"), Value: []byte(`{"n":3}`)}}})
	assert.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)

	// The good record, through the alias: the only one in orders.
	code, a = postAs(t, url("legacy-orders"), `{"n":4}`, "X-Kafka-Key", "k4")
	require.Equal(t, http.StatusOK, code, a.Message)
	recs := kafkatest.Consume(t, addr, "orders", 1, 10*time.Second)
	require.Len(t, recs, 1)
	assert.Equal(t, "k4", string(recs[0].Key))
	assert.Equal(t, `{"n":4}`, string(recs[0].Value))
	assert.Empty(t, kafkatest.Consume(t, addr, "secret", 0, time.Second))

	m := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	assert.Equal(t, 2.0, m(`spillway_denied_total{principal="billing",reason="forbidden"}`), "one over HTTP, one over gRPC")
	assert.Equal(t, 2.0, m(`spillway_validation_failures_total{rule="key_required",topic="legacy-orders"}`), "counted under the name the client gave")
	assert.Equal(t, 1.0, m(`spillway_validation_failures_total{rule="json",topic="legacy-orders"}`))
}

// TestRateLimitBucketsByPrincipal: an attacker rotating X-Client-Id values
// without a credential is limited as one client, and past the metric
// label cap a victim with its own API key is not starved: the attacker
// gets 429, the victim 200. A client id equal to the victim's principal
// does not take from the victim's bucket.
func TestRateLimitBucketsByPrincipal(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.StartYAML(t, addr, `
server:
  monitoring:
    max_principal_labels: 2
security:
  api_keys:
`+keyYAML(t, "victim", victimKey)+`
  rate_limit:
    records_per_second: 0.01
`)
	url := in.URL + "/topics/limited/messages"
	statuses := map[int]int{}
	for i := range 20 {
		code, a := postAs(t, url, "x", "X-Client-Id", fmt.Sprintf("attacker-%d", i))
		statuses[code]++
		if code == http.StatusTooManyRequests {
			assert.Equal(t, fmt.Sprintf("unverified:attacker-%d is over its rate limit (records per second, security.rate_limit; clients without credentials share one bucket): retry later", i), a.Message)
		}
	}
	assert.Equal(t, map[int]int{200: 1, 429: 19}, statuses, "one record per 100 s for all the attacker's ids together")
	code, a := postAs(t, url, "x", "X-Client-Id", "victim")
	assert.Equal(t, http.StatusTooManyRequests, code, "a claimed id is not the API key's principal: %s", a.Message)

	code, a = postAs(t, url, "v", "Authorization", "Bearer "+victimKey)
	assert.Equal(t, http.StatusOK, code, "the victim has its own bucket: %s", a.Message)
	code, _ = postAs(t, url, "v", "Authorization", "Bearer "+victimKey)
	assert.Equal(t, http.StatusTooManyRequests, code, "and its own limit")
	assert.Len(t, kafkatest.Consume(t, addr, "limited", 2, 10*time.Second), 2)
}

// TestPrincipalKindsDoNotCollide: a client id without a credential that
// equals an API key's principal gets neither that key's ACL nor its
// bucket, and a JWT whose sub equals the key's principal gets the ACL of
// its kind (security.acl."jwt:NAME"), not the key's.
func TestPrincipalKindsDoNotCollide(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	iss := securitytest.NewIssuer(t, "https://auth.example.test/")
	in := ingesttest.StartYAML(t, addr, `
security:
  api_keys:
`+keyYAML(t, "billing", billingKey)+`
  jwt:
    jwks_file: `+iss.JWKSFile+`
    issuer: https://auth.example.test/
    audience: spillway
  acl:
    billing: ["orders"]
    "jwt:billing": ["invoices"]
    "id:billing": ["sandbox"]
`)
	token := iss.Token(t, "billing", "spillway", time.Hour, nil)
	securitytest.Secret(t, token)
	url := func(topic string) string { return in.URL + "/topics/" + topic + "/messages" }
	for _, tc := range []struct {
		name    string
		headers []string
		topic   string
		status  int
		message string
	}{
		{"API key, its topic", []string{"Authorization", "Bearer " + billingKey}, "orders", 200, ""},
		{"API key, the JWT's topic", []string{"Authorization", "Bearer " + billingKey}, "invoices", 403, `billing may not produce to topic "invoices"`},
		{"JWT, its topic", []string{"Authorization", "Bearer " + token}, "invoices", 200, ""},
		{"JWT, the key's topic", []string{"Authorization", "Bearer " + token}, "orders", 403, `billing may not produce to topic "orders"`},
		{"claimed id, the key's topic", []string{"X-Client-Id", "billing"}, "orders", 403, `unverified:billing may not produce to topic "orders"`},
		{"claimed id, its own topic", []string{"X-Client-Id", "billing"}, "sandbox", 200, ""},
		{"claimed id spelled as the key", []string{"X-Client-Id", "key:billing"}, "invoices", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, a := postAs(t, url(tc.topic), "x", tc.headers...)
			assert.Equal(t, tc.status, code, a.Message)
			if tc.message != "" {
				assert.Contains(t, a.Message, tc.message)
			}
		})
	}
	assert.Len(t, kafkatest.Consume(t, addr, "orders", 1, 10*time.Second), 1)
	assert.Len(t, kafkatest.Consume(t, addr, "invoices", 2, 10*time.Second), 2, "the JWT's and the client id key:billing's (no ACL of its own)")
}

// TestTopicListingShowsWhatThePrincipalMayWrite: GET /topics and gRPC
// ListTopics list only the topics the principal may produce to; Kafka's
// and its tools' internal topics are never listed, and a produce to one
// is 403, whatever the ACL.
func TestTopicListingShowsWhatThePrincipalMayWrite(t *testing.T) {
	_, addr := kafkatest.NewCluster(t, kfake.SeedTopics(1, "orders", "logs.app", "__consumer_offsets", "_schemas", "connect-offsets"))
	in := ingesttest.StartYAML(t, addr, `
security:
  api_keys:
`+keyYAML(t, "billing", billingKey)+`
  acl:
    billing: ["orders", "__consumer_offsets"]
`)
	list := func(authorization string) []string {
		req, _ := http.NewRequest(http.MethodGet, in.URL+"/topics", nil)
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var topics []string
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&topics))
		return topics
	}
	assert.Equal(t, []string{"orders"}, list("Bearer "+billingKey))
	assert.Equal(t, []string{"logs.app", "orders"}, list(""), "no ACL: every topic but the internal ones")

	conn, err := grpc.NewClient(in.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+billingKey)
	resp, err := ingestv1.NewIngestServiceClient(conn).ListTopics(ctx, &ingestv1.ListTopicsRequest{})
	require.NoError(t, err)
	assert.Equal(t, []string{"orders"}, resp.Topics)

	for _, auth := range []string{"", "Bearer " + billingKey} {
		code, a := postAs(t, in.URL+"/topics/__consumer_offsets/messages", "x", "Authorization", auth)
		assert.Equal(t, http.StatusForbidden, code, a.Message)
		assert.True(t, strings.HasSuffix(a.Message, `may not produce to topic "__consumer_offsets" (security.deny_topics: an internal topic)`), a.Message)
	}
	code, a := postAs(t, in.URL+"/topics/_schemas/messages", "x")
	assert.Equal(t, http.StatusForbidden, code, a.Message)
	assert.Empty(t, kafkatest.Consume(t, addr, "__consumer_offsets", 0, time.Second))
}
