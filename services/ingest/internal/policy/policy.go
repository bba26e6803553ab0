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
	allow      []string
	acl        map[string][]string
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
	p := &Policy{allow: cfg.Security.AllowTopics, acl: cfg.Security.ACL, exact: map[string]string{}}
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

// Allowed says whether principal may produce to topic (the name the
// client gave): the topic is in the global allow-list (when there is one)
// and in the principal's ACL (when it has one).
func (p *Policy) Allowed(principal, topic string) bool {
	if len(p.allow) > 0 && !config.MatchTopic(p.allow, topic) {
		return false
	}
	if patterns, ok := p.acl[principal]; ok {
		return config.MatchTopic(patterns, topic)
	}
	return true
}

// TakeRate takes n records of size bytes from the principal's buckets and
// the global ones, all or none; a record.Error when a bucket is short.
func (p *Policy) TakeRate(principal string, n, size int) error {
	return p.limits.take(principal, n, size)
}

// Validate checks rec against every rule for topic (the name the client
// gave). It returns the name of the first rule broken and a
// record.Error (record.ReasonRejected) that names it; "" and nil when the
// record passes.
func (p *Policy) Validate(topic string, rec *record.Record) (string, error) {
	for i := range p.validation {
		r := &p.validation[i]
		if !config.MatchTopic(r.Topics, topic) {
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
