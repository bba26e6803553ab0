package config

import (
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/v2"

	"github.com/spillway/spillway/pkg/record"
)

// getter reads typed values and collects one error per bad key, and the
// warnings.
type getter struct {
	k        *koanf.Koanf
	errs     []error
	warnings []string
	given    func(key string) bool // whether the file or the environment set key; nil: never
}

func (g *getter) fail(key string, err error) {
	g.errs = append(g.errs, fmt.Errorf("%s: %w", key, err))
}

func (g *getter) warn(msg string) { g.warnings = append(g.warnings, msg) }

func (g *getter) str(key string) string {
	switch v := g.k.Get(key).(type) {
	case nil:
		return ""
	case string:
		return v
	case int, int64, float64, bool:
		return fmt.Sprint(v)
	default:
		g.fail(key, fmt.Errorf("want a string, got %T", v))
		return ""
	}
}

func (g *getter) address(key string) string {
	s := g.str(key)
	if _, port, err := net.SplitHostPort(s); err != nil {
		g.fail(key, fmt.Errorf("%q is not a listen address; want host:port, such as \":18080\" or \"127.0.0.1:18080\"", s))
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		g.fail(key, fmt.Errorf("%q has no valid port; want a number from 0 to 65535", s))
	}
	return s
}

// optionalAddress is address, or "" for a listener that is off.
func (g *getter) optionalAddress(key string) string {
	if g.str(key) == "" {
		return ""
	}
	return g.address(key)
}

func (g *getter) duration(key string) time.Duration {
	v := g.k.Get(key)
	d, err := parseDuration(v)
	if err != nil {
		g.fail(key, err)
	}
	return d
}

func parseDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case int, int64, float64:
		if fmt.Sprint(v) == "0" {
			return 0, nil
		}
		return 0, fmt.Errorf("%v has no unit; want a duration such as \"500ms\", \"20s\" or \"1m\"", v)
	case string:
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			if n, nerr := strconv.ParseFloat(strings.TrimSpace(v), 64); nerr == nil && n == 0 {
				return 0, nil
			}
			return 0, fmt.Errorf("%q is not a duration; want one such as \"500ms\", \"20s\" or \"1m\"", v)
		}
		if d < 0 {
			return 0, fmt.Errorf("%q is negative; want a duration of 0 or more", v)
		}
		return d, nil
	default:
		return 0, fmt.Errorf("want a duration such as \"20s\", got %T", v)
	}
}

func (g *getter) number(key string) (float64, bool) {
	v := g.k.Get(key)
	var f float64
	switch v := v.(type) {
	case int:
		f = float64(v)
	case int64:
		f = float64(v)
	case float64:
		f = v
	case string:
		n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			g.fail(key, fmt.Errorf("%q is not a number", v))
			return 0, false
		}
		f = n
	default:
		g.fail(key, fmt.Errorf("want a number, got %T", v))
		return 0, false
	}
	return f, true
}

func (g *getter) positiveInt(key string) int {
	f, ok := g.number(key)
	if !ok {
		return 0
	}
	if f < 1 || f != float64(int(f)) {
		g.fail(key, fmt.Errorf("%v is not allowed; want a whole number of 1 or more", f))
		return 0
	}
	return int(f)
}

func (g *getter) rate(key string) float64 {
	f, ok := g.number(key)
	if ok && f < 0 {
		g.fail(key, fmt.Errorf("%v is negative; want records per second, 0 for no limit", f))
		return 0
	}
	return f
}

// share reads a fraction from 0 to 1.
func (g *getter) share(key string) float64 {
	f, ok := g.number(key)
	if ok && (f < 0 || f > 1) {
		g.fail(key, fmt.Errorf("%v is not a share; want a number from 0 to 1, such as 0.5 (0: off)", f))
		return 0
	}
	return f
}

// positiveDuration reads a duration above 0.
func positiveDuration(g *getter, key string) time.Duration {
	d := g.duration(key)
	if d <= 0 {
		g.fail(key, fmt.Errorf("%v is not above 0; want a duration such as \"2s\"", d))
	}
	return d
}

func (g *getter) boolean(key string) bool {
	switch v := g.k.Get(key).(type) {
	case bool:
		return v
	case string:
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			g.fail(key, fmt.Errorf("%q is not allowed; want true or false", v))
		}
		return b
	default:
		g.fail(key, fmt.Errorf("want true or false, got %v", v))
		return false
	}
}

// oneOf returns a getter of one of the allowed values, given in any case.
func oneOf[T ~string](allowed ...T) func(*getter, string) T {
	return func(g *getter, key string) T {
		v, err := checkName(T(strings.ToLower(g.str(key))), allowed)
		if err != nil {
			g.fail(key, err)
		}
		return v
	}
}

// natsToken reads a stream name or subject prefix: one NATS token.
func (g *getter) natsToken(key string) string {
	s := g.str(key)
	if s == "" || strings.ContainsAny(s, ". *>\t") {
		g.fail(key, fmt.Errorf("%q is not allowed: stream names and subject prefixes are one NATS token, without dots, spaces, * or >", s))
	}
	return s
}

// replicas reads a stream's replica count.
func (g *getter) replicas(key string) int {
	n := g.positiveInt(key)
	if n > 5 {
		g.fail(key, fmt.Errorf("%d is not allowed; JetStream keeps 1 to 5 replicas", n))
	}
	return n
}

func (g *getter) strings(key string) []string {
	switch v := g.k.Get(key).(type) {
	case nil:
		return nil
	case []string:
		return v
	case string:
		return splitList(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			out = append(out, fmt.Sprint(e))
		}
		return out
	default:
		g.fail(key, fmt.Errorf("want a list, got %T", v))
		return nil
	}
}

func (g *getter) topics(key string) []string {
	ts := g.strings(key)
	for _, t := range ts {
		if err := record.ValidateTopic(t); err != nil {
			g.fail(key, err)
		}
	}
	return ts
}

func (g *getter) globs(key string) []string {
	gs := g.strings(key)
	for _, p := range gs {
		if _, err := path.Match(p, ""); err != nil {
			g.fail(key, fmt.Errorf("%q is not a valid topic pattern: %v", p, err))
		}
	}
	return gs
}
