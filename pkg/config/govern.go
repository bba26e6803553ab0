package config

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/v2"

	"github.com/spillway/spillway/pkg/record"
)

// ValidationRule is one entry of validation.rules: what the records of
// the topics it names must satisfy. Every rule whose patterns match a
// record's topic (as the client named it) applies.
type ValidationRule struct {
	Topics          []string // globs
	MaxBytes        int      // key, value and headers; 0: no rule
	KeyRequired     bool
	HeadersRequired []string
	JSON            bool   // the value is valid JSON
	Schema          string // a JSON Schema file the value must satisfy
}

// TopicMapping is one entry of topic_mapping: the topic a client names
// (Exact, or any topic starting with Prefix) is written to To (for a
// prefix, To replaces the prefix).
type TopicMapping struct {
	Exact  string
	Prefix string
	To     string
}

// Mirror is one entry of mirrors: the records of Topics (Kafka topic
// globs, after mapping) are also produced to a second Kafka cluster.
type Mirror struct {
	Name   string
	Topics []string
	Kafka  Kafka
}

// parseGovernance reads validation.rules, topic_mapping and mirrors.
func parseGovernance(g *getter) ([]ValidationRule, []TopicMapping, []Mirror) {
	var rules []ValidationRule
	for i, m := range g.maps("validation.rules") {
		key := fmt.Sprintf("validation.rules[%d]", i)
		r := ValidationRule{}
		sub := subGetter(g, key, m)
		allowed(sub, key, m, "topics", "max_bytes", "key_required", "headers_required", "json", "schema")
		r.Topics = sub.globs("topics")
		if len(r.Topics) == 0 {
			g.fail(key+".topics", errors.New("is empty; name the topics (globs) the rule applies to"))
		}
		if m["max_bytes"] != nil {
			r.MaxBytes = sub.positiveInt("max_bytes")
		}
		if m["key_required"] != nil {
			r.KeyRequired = sub.boolean("key_required")
		}
		r.HeadersRequired = sub.strings("headers_required")
		if m["json"] != nil {
			r.JSON = sub.boolean("json")
		}
		r.Schema = sub.str("schema")
		if r.MaxBytes == 0 && !r.KeyRequired && len(r.HeadersRequired) == 0 && !r.JSON && r.Schema == "" {
			g.fail(key, errors.New("has no check; set max_bytes, key_required, headers_required, json or schema"))
		}
		rules = append(rules, r)
	}

	var mappings []TopicMapping
	seen := map[string]bool{}
	for i, m := range g.maps("topic_mapping") {
		key := fmt.Sprintf("topic_mapping[%d]", i)
		sub := subGetter(g, key, m)
		allowed(sub, key, m, "exact", "prefix", "to")
		tm := TopicMapping{Exact: sub.str("exact"), Prefix: sub.str("prefix"), To: sub.str("to")}
		switch {
		case (tm.Exact == "") == (tm.Prefix == ""):
			g.fail(key, errors.New("want one of exact or prefix, and to: {exact: old-name, to: new-name} or {prefix: \"old.\", to: \"new.\"}"))
			continue
		case tm.Exact != "":
			if err := record.ValidateTopic(tm.Exact); err != nil {
				g.fail(key+".exact", err)
			}
			if err := record.ValidateTopic(tm.To); err != nil {
				g.fail(key+".to", err)
			}
		default:
			if err := record.ValidateTopic(tm.Prefix + "x"); err != nil {
				g.fail(key+".prefix", err)
			}
			if tm.To != "" {
				if err := record.ValidateTopic(tm.To + "x"); err != nil {
					g.fail(key+".to", err)
				}
			}
		}
		id := "exact:" + tm.Exact
		if tm.Prefix != "" {
			id = "prefix:" + tm.Prefix
		}
		if seen[id] {
			g.fail(key, fmt.Errorf("%s is mapped twice", strings.Replace(id, ":", " ", 1)))
		}
		seen[id] = true
		mappings = append(mappings, tm)
	}

	var mirrors []Mirror
	names := map[string]bool{}
	for i, m := range g.maps("mirrors") {
		key := fmt.Sprintf("mirrors[%d]", i)
		sub := subGetter(g, key, m)
		allowed(sub, key, m, "name", "topics", "kafka")
		mr := Mirror{Name: sub.str("name"), Topics: sub.globs("topics")}
		if mr.Name == "" || len(mr.Name) > 32 || strings.IndexFunc(mr.Name, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
		}) >= 0 {
			g.fail(key+".name", fmt.Errorf("%q is not allowed; want 1 to 32 of a-z, 0-9, - and _", mr.Name))
		}
		if names[mr.Name] {
			g.fail(key+".name", fmt.Errorf("%q names two mirrors", mr.Name))
		}
		names[mr.Name] = true
		if len(mr.Topics) == 0 {
			g.fail(key+".topics", errors.New("is empty; name the topics (globs) to mirror"))
		}
		kafkaMap, _ := m["kafka"].(map[string]any)
		mr.Kafka = parseMirrorKafka(g, key, kafkaMap)
		if mr.Kafka.UsingDevBroker {
			g.fail(key+".kafka.brokers", errors.New("is empty; a mirror needs its own brokers"))
		}
		mirrors = append(mirrors, mr)
	}
	return rules, mappings, mirrors
}

// parseMirrorKafka reads a mirror's kafka section as kafka.* is read, with
// its errors named under the mirror's key.
func parseMirrorKafka(g *getter, key string, m map[string]any) Kafka {
	k := koanf.New(".")
	if err := k.Load(confmap.Provider(map[string]any{"kafka": m}, ""), nil); err != nil {
		g.fail(key+".kafka", err)
		return Kafka{}
	}
	sub := getter{k: k} // its secrets were resolved with the whole file's
	kc := parseKafka(k, &sub)
	for _, err := range sub.errs {
		g.errs = append(g.errs, fmt.Errorf("%s.%w", key, err))
	}
	return kc
}

// maps reads key as a list of maps.
func (g *getter) maps(key string) []map[string]any {
	v := g.k.Get(key)
	list, ok := v.([]any)
	if !ok {
		if v != nil {
			g.fail(key, fmt.Errorf("want a list, got %T", v))
		}
		return nil
	}
	out := make([]map[string]any, 0, len(list))
	for i, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			g.fail(fmt.Sprintf("%s[%d]", key, i), fmt.Errorf("want a map, got %T", e))
			continue
		}
		out = append(out, m)
	}
	return out
}

// subGetter reads the fields of one list entry m, naming errors key.field.
func subGetter(parent *getter, key string, m map[string]any) *prefixed {
	k := koanf.New("\x00") // field names are not split
	_ = k.Load(confmap.Provider(m, ""), nil)
	return &prefixed{getter: getter{k: k}, parent: parent, prefix: key + "."}
}

// prefixed is a getter whose errors go to its parent, under a prefix.
type prefixed struct {
	getter
	parent *getter
	prefix string
}

func (p *prefixed) flush() {
	for _, err := range p.errs {
		p.parent.errs = append(p.parent.errs, fmt.Errorf("%s%w", p.prefix, err))
	}
	p.errs = nil
}

func (p *prefixed) str(key string) string       { defer p.flush(); return p.getter.str(key) }
func (p *prefixed) strings(key string) []string { defer p.flush(); return p.getter.strings(key) }
func (p *prefixed) globs(key string) []string   { defer p.flush(); return p.getter.globs(key) }
func (p *prefixed) boolean(key string) bool     { defer p.flush(); return p.getter.boolean(key) }
func (p *prefixed) positiveInt(key string) int  { defer p.flush(); return p.getter.positiveInt(key) }

// allowed fails every field of m not in fields.
func allowed(p *prefixed, key string, m map[string]any, fields ...string) {
	for f := range m {
		ok := false
		for _, a := range fields {
			ok = ok || f == a
		}
		if !ok {
			p.parent.fail(key, fmt.Errorf("unknown field %q; want %s", f, strings.Join(fields, ", ")))
		}
	}
}

// MatchTopic says whether topic matches one of the globs.
func MatchTopic(globs []string, topic string) bool {
	for _, p := range globs {
		if ok, _ := path.Match(p, topic); ok {
			return true
		}
	}
	return false
}
