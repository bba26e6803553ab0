package config

import (
	"fmt"
	"strings"
)

// EnvPrefix starts every environment variable that overrides a key.
const EnvPrefix = "SPILLWAY_"

// EnvName returns the environment variable that overrides key.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_").Replace(key))
}

// envOverrides maps SPILLWAY_* variables to keys. A key's variable is the
// key upper-cased with dots as underscores (SPILLWAY_PRODUCER_WAL_MODE);
// any other SPILLWAY_KAFKA_* variable is a librdkafka property with its
// underscores as dots (SPILLWAY_KAFKA_COMPRESSION_CODEC). Lists are
// comma-separated. A SPILLWAY_* variable that matches no key is returned
// as a warning, not an error: Kubernetes sets SPILLWAY_SERVICE_HOST and
// the like for a Service named spillway.
func envOverrides(opts []option, environ []string) (map[string]any, []string) {
	byEnv := make(map[string]option, len(opts))
	for _, o := range opts {
		byEnv[EnvName(o.key)] = o
	}
	out := map[string]any{}
	var warnings []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		o, known := byEnv[name]
		key := o.key
		switch {
		case known:
		case strings.HasPrefix(name, EnvPrefix+"KAFKA_") && len(name) > len(EnvPrefix+"KAFKA_"):
			key = "kafka." + strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, EnvPrefix+"KAFKA_"), "_", "."))
		default:
			warnings = append(warnings, fmt.Sprintf("environment variable %s matches no configuration key and is ignored", name))
			continue
		}
		if _, isList := o.def.([]string); isList {
			out[key] = splitList(value)
		} else {
			out[key] = value
		}
	}
	return out, warnings
}

func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
