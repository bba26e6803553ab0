package policy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
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
	require.NoError(t, first.TakeRate("alice", 1, 1))
	same, err := New(cfg, first)
	require.NoError(t, err)
	assert.Error(t, same.TakeRate("alice", 1, 1), "the bucket alice emptied is still empty after a reload")
	cfg.Security.RateLimit.RecordsPerSecond = 5
	changed, err := New(cfg, same)
	require.NoError(t, err)
	assert.NoError(t, changed.TakeRate("alice", 1, 1), "new limits, new buckets")
}

// FuzzPolicy: whatever the rules and mappings, the policy is either
// refused with an error or maps and validates without panicking, and a
// mapped topic is never empty for a non-empty one unless a prefix strips
// it whole (which delivery refuses).
func FuzzPolicy(f *testing.F) {
	f.Add("topic_mapping: [{prefix: a., to: b.}]\nvalidation: {rules: [{topics: [a*], json: true}]}", "a.x", []byte(`{"k":1}`))
	f.Add("topic_mapping: [{exact: x, to: y}, {prefix: x, to: z}]", "x", []byte("v"))
	f.Add("validation: {rules: [{topics: ['*'], max_bytes: 3, key_required: true, headers_required: [h]}]}", "t", []byte("long value"))
	f.Add("topic_mapping: [{prefix: s., to: ''}]", "s.", []byte{})
	f.Fuzz(func(t *testing.T, yaml, topic string, value []byte) {
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
		if rule, err := p.Validate(topic, &r); (rule == "") != (err == nil) {
			t.Fatalf("rule %q with error %v", rule, err)
		}
	})
}
