// Package config loads Spillway's configuration: built-in defaults, then a
// YAML file, then SPILLWAY_* environment variables. It reads
// kafka-ambassador's configuration unchanged, so that its users can switch
// without editing their files.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
)

// Config is the whole configuration of a Spillway service.
type Config struct {
	Server   Server
	Producer Producer
	Kafka    Kafka
	Log      Log
	Forward  Forward
	Resend   ResendService
	Security Security
	// Validation, TopicMapping and Mirrors govern records in flight;
	// with Security's topics and rate limits, they reload on SIGHUP.
	Validation   []ValidationRule
	TopicMapping []TopicMapping
	Mirrors      []Mirror
	// Warnings are problems that do not stop the service, such as a
	// SPILLWAY_* variable that matches no key; the service logs them.
	Warnings []string
}

// Forward configures the forwarder service.
type Forward struct {
	RateLimit        float64
	MonitoringListen string
}

// ResendService configures the resender service's own port.
type ResendService struct {
	MonitoringListen string
}

// Log configures the process's logs.
type Log struct {
	Level    string // debug, info, warn, error
	Encoding string // json or console
}

// Load reads the configuration: defaults, then the YAML file at path (if
// path is not empty), then the SPILLWAY_* variables in environ. The error
// names every bad key.
func Load(path string, environ []string) (*Config, error) {
	var file []byte
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read configuration: %w", err)
		}
		file = b
	}
	return Parse(file, environ)
}

// Parse is Load with the file's content given. It reads every key of the
// table in keys.go in one pass and collects every error and warning, so
// that a user sees all the problems of a file at once.
func Parse(file []byte, environ []string) (*Config, error) {
	c := &Config{Security: Security{APIKeys: map[string]string{}, ACL: map[string][]string{}}}
	opts := options(c)
	known := make(map[string]bool, len(opts))
	defaults := make(map[string]any, len(opts))
	for _, o := range opts {
		known[o.key], defaults[o.key] = true, o.def
	}

	k := koanf.New(".")
	if err := k.Load(confmap.Provider(defaults, "."), nil); err != nil {
		return nil, fmt.Errorf("load defaults: %w", err)
	}
	// user holds what the file and the environment set, apart from the
	// defaults: a key without effect is warned about only when it was set.
	user := koanf.New(".")
	if len(file) > 0 {
		if err := k.Load(rawbytes.Provider(file), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("parse configuration file: %w", err)
		}
		_ = user.Load(rawbytes.Provider(file), yaml.Parser()) // it parsed just above
	}
	env, warnings := envOverrides(opts, environ)
	for _, kk := range []*koanf.Koanf{k, user} {
		if err := kk.Load(confmap.Provider(env, "."), nil); err != nil {
			return nil, fmt.Errorf("load environment: %w", err)
		}
	}

	k, errs := resolveSecrets(k, environ)
	for _, key := range k.Keys() {
		if !known[key] && family(key) == nil {
			errs = append(errs, fmt.Errorf("unknown configuration key %q", key))
		}
	}

	g := getter{k: k, given: user.Exists, warnings: warnings}
	for _, o := range opts {
		if o.read != nil {
			o.read(&g, o.key)
		}
	}
	for _, key := range k.Keys() {
		if principal, ok := strings.CutPrefix(key, aclPrefix); ok {
			c.Security.ACL[principal] = g.globs(key)
		}
	}
	c.Kafka = parseKafka(k, &g)
	c.Validation, c.TopicMapping, c.Mirrors = parseGovernance(&g)
	check(c, &g)
	c.Warnings = g.warnings
	errs = append(errs, g.errs...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}
