package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

func build(t *testing.T, yaml string) *Policy {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), nil)
	require.NoError(t, err)
	p, err := New(cfg, nil)
	require.NoError(t, err)
	return p
}

func TestMapLongestPrefixWins(t *testing.T) {
	p := build(t, `
topic_mapping:
  - {prefix: "team.", to: "t."}
  - {prefix: "team.billing.", to: "billing."}
  - {exact: "team.billing.legacy", to: "legacy"}
  - {prefix: "strip.", to: ""}
`)
	for in, want := range map[string]string{
		"team.orders":         "t.orders",
		"team.billing.orders": "billing.orders", // longer prefix, though listed second
		"team.billing.legacy": "legacy",         // exact beats any prefix
		"strip.me":            "me",
		"other":               "other",
		"team":                "team",
	} {
		assert.Equal(t, want, p.Map(in), in)
	}
}

func TestValidate(t *testing.T) {
	schema := filepath.Join(t.TempDir(), "order.json")
	require.NoError(t, os.WriteFile(schema, []byte(`{
  "type": "object",
  "required": ["id", "amount"],
  "properties": {"id": {"type": "string"}, "amount": {"type": "number", "minimum": 0}}
}`), 0o600))
	p := build(t, `
validation:
  rules:
    - topics: ["orders*"]
      key_required: true
      headers_required: [source, tenant]
    - topics: ["orders"]
      max_bytes: 200
      schema: `+schema+`
    - topics: ["logs.*"]
      json: true
`)
	good := record.Record{Key: []byte("k"), Value: []byte(`{"id":"a","amount":3}`), Headers: []record.Header{{Key: "source", Value: []byte("x")}, {Key: "tenant", Value: []byte("y")}}}
	rule, err := p.Validate("orders", &good)
	require.NoError(t, err)
	assert.Empty(t, rule)

	for _, tc := range []struct {
		name, topic string
		change      func(r *record.Record)
		rule, msg   string
	}{
		{"no key", "orders", func(r *record.Record) { r.Key = nil }, RuleKeyRequired,
			"validation rule key_required (validation.rules[0]) failed: the record has no key"},
		{"missing header", "orders-eu", func(r *record.Record) { r.Headers = r.Headers[:1] }, RuleHeadersRequired,
			"validation rule headers_required (validation.rules[0]) failed: the record lacks the header(s) tenant"},
		{"too large", "orders", func(r *record.Record) { r.Value = []byte(`{"id":"` + string(make([]byte, 300)) + `"}`) }, RuleMaxBytes,
			"validation rule max_bytes (validation.rules[1]) failed: the record is"},
		{"not json", "orders", func(r *record.Record) { r.Value = []byte("{nope") }, RuleSchema,
			"validation rule schema (validation.rules[1]) failed: the value is not valid JSON"},
		{"schema", "orders", func(r *record.Record) { r.Value = []byte(`{"id":"a","amount":"3"}`) }, RuleSchema,
			"validation rule schema (validation.rules[1]) failed: the value does not satisfy the schema: at '/amount': got string, want number"},
		{"schema required", "orders", func(r *record.Record) { r.Value = []byte(`{"id":"a"}`) }, RuleSchema,
			"missing property 'amount'"},
		{"json", "logs.app", func(r *record.Record) { r.Value = []byte("plain text") }, RuleJSON,
			"validation rule json (validation.rules[2]) failed: the value is not valid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			r.Headers = append([]record.Header(nil), good.Headers...)
			tc.change(&r)
			rule, err := p.Validate(tc.topic, &r)
			require.Error(t, err)
			assert.Equal(t, tc.rule, rule)
			assert.Equal(t, record.ReasonRejected, record.ReasonOf(err))
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
	plain := record.Record{Value: []byte("anything")}
	_, err = p.Validate("elsewhere", &plain)
	assert.NoError(t, err, "no rule for the topic")
}

func TestBadSchemaIsRejected(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(dir+"/bad.json", []byte(`{"type": "no-such-type"}`), 0o600))
	require.NoError(t, os.WriteFile(dir+"/notjson.json", []byte(`{`), 0o600))
	for file, want := range map[string]string{
		dir + "/bad.json":     "validation.rules[0].schema: " + dir + "/bad.json is not a valid JSON Schema",
		dir + "/notjson.json": "validation.rules[0].schema: " + dir + "/notjson.json is not JSON",
		dir + "/missing.json": "validation.rules[0].schema: open " + dir + "/missing.json: no such file or directory",
	} {
		cfg, err := config.Parse([]byte("validation: {rules: [{topics: [a], schema: "+file+"}]}"), nil)
		require.NoError(t, err)
		_, err = New(cfg, nil)
		require.Error(t, err)
		assert.Contains(t, err.Error(), want)
	}
}

func TestReloadKeepsUnchangedBuckets(t *testing.T) {
	cfg, err := config.Parse([]byte("security: {rate_limit: {records_per_second: 1}}"), nil)
	require.NoError(t, err)
	first, err := New(cfg, nil)
	require.NoError(t, err)
	alice := identity.Client{Principal: "alice", Kind: identity.APIKey, Name: "alice"}
	require.NoError(t, first.TakeRate(alice, 1, 1))
	same, err := New(cfg, first)
	require.NoError(t, err)
	assert.Error(t, same.TakeRate(alice, 1, 1), "the bucket alice emptied is still empty after a reload")
	cfg.Security.RateLimit.RecordsPerSecond = 5
	changed, err := New(cfg, same)
	require.NoError(t, err)
	assert.NoError(t, changed.TakeRate(alice, 1, 1), "new limits, new buckets")
}

// The README's example: a rule on orders, and legacy-orders mapped to it.
const readmeExample = `
security:
  allow_topics: ["orders", "legacy-orders", "logs.*"]
  acl:
    billing: ["legacy-orders", "logs.*"]
validation:
  rules:
    - topics: ["orders"]
      key_required: true
      json: true
topic_mapping:
  - {exact: legacy-orders, to: orders}
  - {prefix: "logs.", to: "__"}
`

var billing = identity.Client{Principal: "billing", Kind: identity.APIKey, Name: "billing"}

// TestRulesFollowTheRecord: a record that reaches orders under another
// name meets the rules of orders: its validation, and the ACL and
// allow-list of the topic it lands in.
func TestRulesFollowTheRecord(t *testing.T) {
	p := build(t, readmeExample)
	bad := record.Record{Value: []byte("not json")}
	rule, err := p.Validate("legacy-orders", &bad)
	assert.Equal(t, RuleKeyRequired, rule, "the rule of orders, through its alias")
	assert.ErrorContains(t, err, "validation rule key_required (validation.rules[0]) failed: the record has no key")

	err = p.Authorize(billing, "legacy-orders")
	assert.Equal(t, record.ReasonForbidden, record.ReasonOf(err))
	assert.EqualError(t, err, `billing may not produce to topic "orders", which topic_mapping maps "legacy-orders" to (security.allow_topics, security.acl)`)
	err = p.Authorize(billing, "logs.app")
	assert.EqualError(t, err, `billing may not produce to topic "__app", which topic_mapping maps "logs.app" to (security.deny_topics: an internal topic)`)
	assert.NoError(t, p.Authorize(identity.Client{Principal: "other", Kind: identity.APIKey, Name: "other"}, "legacy-orders"), "no ACL: orders is allowed")
	assert.EqualError(t, p.Authorize(billing, "orders"), `billing may not produce to topic "orders" (security.allow_topics, security.acl)`)
}

// TestACLKinds: an ACL entry names a principal with its kind (key:, jwt:,
// cert:, id:) or without one; an entry without a kind names a verified
// principal, or a claimed id only where no credential is configured (its
// principal is then the id itself, else unverified:ID).
func TestACLKinds(t *testing.T) {
	p := build(t, `
security:
  acl:
    billing: ["orders"]
    "jwt:billing": ["jwt-only"]
    "id:billing": ["sandbox"]
    "key:ops": ["ops"]
    anonymous: ["public"]
`)
	claimed := func(principal, name string) identity.Client {
		return identity.Client{Principal: principal, Kind: identity.Claimed, Name: name}
	}
	for _, tc := range []struct {
		name   string
		c      identity.Client
		may    []string
		mayNot []string
	}{
		{"API key, no kind in its entry", billing, []string{"orders"}, []string{"jwt-only", "sandbox"}},
		{"certificate, no kind in its entry", identity.Client{Principal: "billing", Kind: identity.Certificate, Name: "billing"}, []string{"orders"}, []string{"jwt-only"}},
		{"JWT, its own entry wins", identity.Client{Principal: "billing", Kind: identity.JWT, Name: "billing"}, []string{"jwt-only"}, []string{"orders"}},
		{"claimed id, credentials configured", claimed("unverified:billing", "billing"), []string{"sandbox"}, []string{"orders"}},
		{"claimed id, no credentials configured", claimed("billing", "billing"), []string{"sandbox"}, []string{"orders"}},
		{"claimed id spelled like a key", claimed("key:ops", "key:ops"), []string{"anything"}, nil},
		{"API key ops", identity.Client{Principal: "ops", Kind: identity.APIKey, Name: "ops"}, []string{"ops"}, []string{"anything"}},
		{"JWT ops: not key:ops", identity.Client{Principal: "ops", Kind: identity.JWT, Name: "ops"}, []string{"anything"}, nil},
		{"anonymous", claimed(identity.Anonymous, ""), []string{"public"}, []string{"orders"}},
		{"claimed id without entry, no credentials configured", claimed("carol", "carol"), []string{"anything"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, topic := range tc.may {
				assert.NoError(t, p.Authorize(tc.c, topic), topic)
			}
			for _, topic := range tc.mayNot {
				assert.Error(t, p.Authorize(tc.c, topic), topic)
			}
		})
	}
	plain := build(t, "security: {acl: {carol: [mine]}}")
	assert.Error(t, plain.Authorize(claimed("carol", "carol"), "yours"), "no credential configured: an entry without a kind holds the client id, as before")
	assert.NoError(t, plain.Authorize(claimed("unverified:carol", "carol"), "yours"), "credentials configured: it does not")
}

// TestDenyTopics: Kafka's and its tools' internal topics are denied by
// default, whatever the ACL; security.deny_topics changes the list.
func TestDenyTopics(t *testing.T) {
	p := build(t, "security: {acl: {billing: ['*']}}")
	for _, topic := range []string{"__consumer_offsets", "__transaction_state", "_schemas", "_confluent-metrics", "connect-offsets"} {
		err := p.Authorize(billing, topic)
		assert.EqualError(t, err, `billing may not produce to topic "`+topic+`" (security.deny_topics: an internal topic)`)
	}
	for _, topic := range []string{"orders", "_private", "schemas"} {
		assert.NoError(t, p.Authorize(billing, topic), topic)
	}
	open := build(t, "security: {deny_topics: ['secret.*']}")
	assert.NoError(t, open.Authorize(billing, "_schemas"), "the configured list replaces the default")
	assert.Error(t, open.Authorize(billing, "secret.x"))
}

// TestBucketsByPrincipal: buckets are kept per principal with its kind;
// every client without a credential shares one, whatever id it claims.
func TestBucketsByPrincipal(t *testing.T) {
	p := build(t, "security: {rate_limit: {records_per_second: 1}}")
	require.NoError(t, p.TakeRate(identity.Client{Principal: "unverified:a", Kind: identity.Claimed, Name: "a"}, 1, 1))
	for _, id := range []string{"b", "c", "billing", "key:billing"} {
		err := p.TakeRate(identity.Client{Principal: "unverified:" + id, Kind: identity.Claimed, Name: id}, 1, 1)
		assert.EqualError(t, err, "unverified:"+id+" is over its rate limit (records per second, security.rate_limit; clients without credentials share one bucket): retry later")
	}
	assert.Error(t, p.TakeRate(identity.Client{Principal: identity.Anonymous, Kind: identity.Claimed}, 1, 1), "anonymous shares it too")
	require.NoError(t, p.TakeRate(billing, 1, 1), "a verified principal has its own")
	require.NoError(t, p.TakeRate(identity.Client{Principal: "billing", Kind: identity.JWT, Name: "billing"}, 1, 1), "a JWT's sub is not an API key's name")
	require.NoError(t, p.TakeRate(identity.Client{Principal: "billing", Kind: identity.Certificate, Name: "billing"}, 1, 1), "nor a certificate's CN")
	assert.Error(t, p.TakeRate(billing, 1, 1))

	// Bounded: the least recently seen principal is forgotten.
	for i := range MaxBuckets {
		require.NoError(t, p.TakeRate(identity.Client{Principal: "p", Kind: identity.APIKey, Name: fmt.Sprint(i)}, 1, 1))
	}
	assert.Equal(t, MaxBuckets, p.limits.byPrincipal.Len())
	assert.NoError(t, p.TakeRate(billing, 1, 1), "billing was forgotten: a full bucket")
}

// FuzzPolicy: whatever the rules and mappings, the policy is either
// refused with an error or maps and validates without panicking, and a
// mapped topic is never empty for a non-empty one unless a prefix strips
// it whole (which delivery refuses). The rules follow the record: a record
// that delivery lets through under the name the client gave (Authorize,
// Validate) also passes the ACLs, allow and deny lists and validation
// rules of the Kafka topic it lands in.
func FuzzPolicy(f *testing.F) {
	f.Add("topic_mapping: [{prefix: a., to: b.}]\nvalidation: {rules: [{topics: [a*], json: true}]}", "a.x", []byte(`{"k":1}`), uint8(0), "p")
	f.Add("topic_mapping: [{exact: x, to: y}, {prefix: x, to: z}]", "x", []byte("v"), uint8(1), "p")
	f.Add("validation: {rules: [{topics: ['*'], max_bytes: 3, key_required: true, headers_required: [h]}]}", "t", []byte("long value"), uint8(2), "p")
	f.Add("topic_mapping: [{prefix: s., to: ''}]", "s.", []byte{}, uint8(3), "p")
	f.Add(readmeExample, "legacy-orders", []byte("not json"), uint8(0), "billing")
	f.Add(readmeExample, "logs.app", []byte("{}"), uint8(1), "billing")
	f.Add("security: {acl: {'jwt:a': [x]}}\ntopic_mapping: [{prefix: y, to: x}]", "yz", []byte("v"), uint8(2), "a")
	f.Fuzz(func(t *testing.T, yaml, topic string, value []byte, kind uint8, name string) {
		cfg, err := config.Parse([]byte(yaml), nil)
		if err != nil {
			return
		}
		p, err := New(cfg, nil)
		if err != nil {
			return
		}
		mapped := p.Map(topic)
		if topic != "" && mapped == "" {
			for _, m := range cfg.TopicMapping {
				if m.Prefix == topic && m.To == "" {
					return
				}
			}
			t.Fatalf("%q mapped to nothing", topic)
		}
		r := record.Record{Topic: topic, Value: value}
		rule, err := p.Validate(topic, &r)
		if (rule == "") != (err == nil) {
			t.Fatalf("rule %q with error %v", rule, err)
		}
		if err == nil {
			if rule, err := p.validate(&r, mapped); err != nil {
				t.Fatalf("valid under %q, but it lands in %q, whose rule %s refuses it: %v", topic, mapped, rule, err)
			}
		}
		kinds := identity.Kinds
		c := identity.Client{Kind: kinds[int(kind)%len(kinds)], Name: name, Principal: name}
		if err := p.Authorize(c, topic); err == nil {
			if why := p.refuses(c, topic); why != "" {
				t.Fatalf("authorized, but %s refuses %q", why, topic)
			}
			if why := p.refuses(c, mapped); why != "" && record.ValidateTopic(mapped) == nil {
				t.Fatalf("%s authorized for %q, but it lands in %q, which %s refuses", c.Key(), topic, mapped, why)
			}
		} else if record.ReasonOf(err) != record.ReasonForbidden {
			t.Fatalf("refused with %v", err)
		}
	})
}
