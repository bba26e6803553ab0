// Package policy holds the rules a record meets between its API and
// Kafka that a configuration reload may replace: the topics a principal
// may produce to, the rate limits, the validation rules and the topic
// mapping. A Policy is immutable once built; a reload builds a new one and
// swaps it in, so that a request sees one policy from start to end.
package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// The validation rules' names, as in the configuration and the metrics.
const (
	RuleMaxBytes        = "max_bytes"
	RuleKeyRequired     = "key_required"
	RuleHeadersRequired = "headers_required"
	RuleJSON            = "json"
	RuleSchema          = "schema"
)

// Policy is one version of the rules.
type Policy struct {
	allow []string
	deny  []string
	// acl holds security.acl by the kind its entry names ("key:NAME", ...),
	// and under "" the entries that name none.
	acl        map[identity.Kind]map[string][]string
	limits     *limits
	validation []rule
	exact      map[string]string
	prefixes   []config.TopicMapping // longest prefix first
}

type rule struct {
	config.ValidationRule
	name   string // validation.rules[i]
	schema *jsonschema.Schema
}

// New builds the policy of cfg. The rate-limit buckets of previous (nil at
// start) are kept when the limits did not change, so that a reload does
// not hand every client a full bucket. The error names the rule that is
// wrong, such as a schema that does not compile.
func New(cfg *config.Config, previous *Policy) (*Policy, error) {
	p := &Policy{allow: cfg.Security.AllowTopics, deny: cfg.Security.DenyTopics, acl: map[identity.Kind]map[string][]string{}, exact: map[string]string{}}
	for name, globs := range cfg.Security.ACL {
		kind, rest, _ := strings.Cut(name, ":")
		if !slices.Contains(identity.Kinds, identity.Kind(kind)) || rest == "" {
			kind, rest = "", name
		}
		if p.acl[identity.Kind(kind)] == nil {
			p.acl[identity.Kind(kind)] = map[string][]string{}
		}
		p.acl[identity.Kind(kind)][rest] = globs
	}
	if previous != nil && previous.limits.cfg == cfg.Security.RateLimit {
		p.limits = previous.limits
	} else {
		p.limits = newLimits(cfg.Security.RateLimit)
	}
	for i, vr := range cfg.Validation {
		r := rule{ValidationRule: vr, name: fmt.Sprintf("validation.rules[%d]", i)}
		if vr.Schema != "" {
			sch, err := compileSchema(vr.Schema)
			if err != nil {
				return nil, fmt.Errorf("%s.schema: %w", r.name, err)
			}
			r.schema = sch
		}
		p.validation = append(p.validation, r)
	}
	for _, m := range cfg.TopicMapping {
		if m.Exact != "" {
			p.exact[m.Exact] = m.To
		} else {
			p.prefixes = append(p.prefixes, m)
		}
	}
	slices.SortStableFunc(p.prefixes, func(a, b config.TopicMapping) int { return len(b.Prefix) - len(a.Prefix) })
	return p, nil
}

func compileSchema(file string) (*jsonschema.Schema, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("%s is not JSON: %w", file, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(file, doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	sch, err := c.Compile(file)
	if err != nil {
		return nil, fmt.Errorf("%s is not a valid JSON Schema: %w", file, err)
	}
	return sch, nil
}

// Authorize says whether c may produce to topic, the name the client
// gave: the rules follow the record, so both topic and the Kafka topic it
// maps to must pass the deny list, the allow-list and c's ACL. The error
// (record.ReasonForbidden) names the principal, the topic and the keys
// that refuse it.
func (p *Policy) Authorize(c identity.Client, topic string) error {
	if why := p.refuses(c, topic); why != "" {
		return record.Errorf(record.ReasonForbidden, "%s may not produce to topic %q (%s)", c.Principal, topic, why)
	}
	if mapped := p.Map(topic); mapped != topic && record.ValidateTopic(mapped) == nil { // an invalid one is refused when mapped
		if why := p.refuses(c, mapped); why != "" {
			return record.Errorf(record.ReasonForbidden, "%s may not produce to topic %q, which topic_mapping maps %q to (%s)", c.Principal, mapped, topic, why)
		}
	}
	return nil
}

// refuses names the keys that refuse c the one topic, or "": the deny
// list, the global allow-list (when there is one) and c's ACL (when it has
// one).
func (p *Policy) refuses(c identity.Client, topic string) string {
	if config.MatchTopic(p.deny, topic) {
		return "security.deny_topics: an internal topic"
	}
	if len(p.allow) > 0 && !config.MatchTopic(p.allow, topic) {
		return "security.allow_topics, security.acl"
	}
	if globs, ok := p.aclOf(c); ok && !config.MatchTopic(globs, topic) {
		return "security.allow_topics, security.acl"
	}
	return ""
}

// aclOf returns c's ACL entry: the one that names its kind and name
// ("key:billing", "id:client-1"), else one that names no kind. An entry
// without a kind matches a verified principal of that name, or the
// principal a claimed client id gets (the id itself when no credential is
// configured, "unverified:ID" when one is): so it never matches a client
// that merely claims a verified principal's name.
func (p *Policy) aclOf(c identity.Client) ([]string, bool) {
	kind := c.Kind
	if kind == "" {
		kind = identity.Claimed
	}
	if c.Name != "" {
		if globs, ok := p.acl[kind][c.Name]; ok {
			return globs, true
		}
	}
	globs, ok := p.acl[""][c.Principal]
	return globs, ok
}

// TakeRate takes n records of size bytes from c's buckets and the global
// ones, all or none; a record.Error when a bucket is short. A verified
// principal has buckets of its own, kept by its kind and name (Key)
// whatever the metric label cap; clients without a credential (a claimed
// id or none) share one pair of buckets, so that a client cannot get a
// fresh bucket by sending another id.
func (p *Policy) TakeRate(c identity.Client, n, size int) error {
	return p.limits.take(c, n, size)
}

// Validate checks rec against every rule for topic (the name the client
// gave) and for the Kafka topic it maps to: a record that reaches a topic
// under any name meets its rules. It returns the name of the first rule
// broken and a record.Error (record.ReasonRejected) that names it; "" and
// nil when the record passes.
func (p *Policy) Validate(topic string, rec *record.Record) (string, error) {
	return p.validate(rec, topic, p.Map(topic))
}

// validate checks rec against every rule for any of topics.
func (p *Policy) validate(rec *record.Record, topics ...string) (string, error) {
	for i := range p.validation {
		r := &p.validation[i]
		if !slices.ContainsFunc(topics, func(t string) bool { return config.MatchTopic(r.Topics, t) }) {
			continue
		}
		if name, why := r.check(rec); name != "" {
			return name, record.Errorf(record.ReasonRejected, "validation rule %s (%s) failed: %s", name, r.name, why)
		}
	}
	return "", nil
}

func (r *rule) check(rec *record.Record) (string, string) {
	if r.MaxBytes > 0 {
		if n := rec.Size(); n > r.MaxBytes {
			return RuleMaxBytes, fmt.Sprintf("the record is %d bytes (key, value and headers), the limit is %d", n, r.MaxBytes)
		}
	}
	if r.KeyRequired && len(rec.Key) == 0 {
		return RuleKeyRequired, "the record has no key"
	}
	if len(r.HeadersRequired) > 0 {
		var missing []string
		for _, h := range r.HeadersRequired {
			if !slices.ContainsFunc(rec.Headers, func(x record.Header) bool { return x.Key == h }) {
				missing = append(missing, h)
			}
		}
		if len(missing) > 0 {
			return RuleHeadersRequired, "the record lacks the header(s) " + strings.Join(missing, ", ")
		}
	}
	if (r.JSON || r.schema != nil) && !json.Valid(rec.Value) {
		name := RuleJSON
		if !r.JSON {
			name = RuleSchema
		}
		return name, "the value is not valid JSON"
	}
	if r.schema != nil {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(rec.Value))
		if err != nil {
			return RuleSchema, "the value is not valid JSON"
		}
		if err := r.schema.Validate(doc); err != nil {
			return RuleSchema, "the value does not satisfy the schema: " + schemaError(err)
		}
	}
	return "", ""
}

// schemaError is the validation error on one line, without the schema's
// location: "at '/amount': got string, want number; ...".
func schemaError(err error) string {
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	if len(lines) > 1 {
		lines = lines[1:]
	}
	for i, l := range lines {
		lines[i] = strings.TrimLeft(strings.TrimSpace(l), "- ")
	}
	return strings.Join(lines, "; ")
}

// Map returns the Kafka topic of topic (the name the client gave): an
// exact mapping, else the longest matching prefix rewritten, else topic.
func (p *Policy) Map(topic string) string {
	if to, ok := p.exact[topic]; ok {
		return to
	}
	for _, m := range p.prefixes {
		if rest, ok := strings.CutPrefix(topic, m.Prefix); ok {
			return m.To + rest
		}
	}
	return topic
}
