package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/v2"
)

// resolveSecrets replaces every value that is a whole "${file:PATH}" or
// "${env:NAME}" with the file's content (without its trailing newline) or
// the variable's value, so that passwords and keys need not be written in
// the configuration. The errors name the key and the file or variable,
// never a value.
func resolveSecrets(k *koanf.Koanf, environ []string) (*koanf.Koanf, []error) {
	var errs []error
	flat := k.All()
	for key, v := range flat {
		flat[key] = resolveValue(key, v, environ, &errs)
	}
	// A fresh load rather than Set: a YAML key with dots in it (kafka:
	// {sasl.password: ...}) and the nested map Set would make are two
	// entries for one flat key.
	resolved := koanf.New(".")
	if err := resolved.Load(confmap.Provider(flat, "."), nil); err != nil {
		return k, append(errs, fmt.Errorf("resolve secrets: %w", err))
	}
	return resolved, errs
}

// resolveValue resolves v and, inside lists and maps, every string in it;
// key names it in errors.
func resolveValue(key string, v any, environ []string, errs *[]error) any {
	switch v := v.(type) {
	case string:
		s, err := resolveSecret(v, environ)
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", key, err))
		}
		return s
	case []string:
		out := make([]string, len(v))
		for i, e := range v {
			out[i] = resolveValue(fmt.Sprintf("%s[%d]", key, i), e, environ, errs).(string)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = resolveValue(fmt.Sprintf("%s[%d]", key, i), e, environ, errs)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for f, e := range v {
			out[f] = resolveValue(key+"."+f, e, environ, errs)
		}
		return out
	default:
		return v
	}
}

// resolveSecret returns s, or the secret it refers to when it is a whole
// "${file:PATH}" or "${env:NAME}". "$${" at the start stands for a
// literal "${". Errors never repeat the value.
func resolveSecret(s string, environ []string) (string, error) {
	if rest, ok := strings.CutPrefix(s, "$${"); ok {
		return "${" + rest, nil
	}
	if !strings.HasPrefix(s, "${") || !strings.HasSuffix(s, "}") {
		return s, nil
	}
	source, name, _ := strings.Cut(s[2:len(s)-1], ":")
	switch source {
	case "file":
		b, err := os.ReadFile(name)
		if err != nil {
			return "", fmt.Errorf("reading the secret from %s: %w", name, errors.Unwrap(err))
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case "env":
		for _, kv := range environ {
			if n, v, _ := strings.Cut(kv, "="); n == name {
				return v, nil
			}
		}
		return "", fmt.Errorf("the secret's environment variable %s is not set", name)
	default:
		return "", errors.New("the value starts with ${ but is not a secret reference; want ${file:PATH} or ${env:NAME}, or $${ for a literal ${")
	}
}
