package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DefaultDenyTopics are the internal topics of Kafka and its tools
// (__consumer_offsets, __transaction_state, Confluent's _confluent-*,
// Schema Registry's _schemas, Kafka Connect's connect-*), denied unless
// security.deny_topics says otherwise.
var DefaultDenyTopics = []string{"__*", "_confluent*", "_schemas", "connect-*"}

// Security configures who may produce, and to which topics.
type Security struct {
	// APIKeys map the SHA-256 (hex) of an API key to its principal.
	APIKeys map[string]string
	// SCRAMUsers are the Kafka listener's SASL SCRAM credentials, stored
	// as Kafka stores them (salt, iterations, stored key, server key),
	// never the password; API keys are stored hashed and cannot serve.
	SCRAMUsers []SCRAMUser
	// RequireCredentials refuses requests without an API key (401).
	RequireCredentials bool
	// MaxSessionLifetime bounds a SASL session on the Kafka listener
	// (KIP-368), as Kafka's connections.max.reauth.ms: within it the
	// client signs in again on its connection, or the connection closes.
	// A credential that expires sooner (a JWT) ends its session sooner.
	MaxSessionLifetime time.Duration
	// AllowTopics is the global topic allow-list (globs); empty: any.
	AllowTopics []string
	// DenyTopics are topics no client may produce to or see listed
	// (globs), whatever its ACL: by default the internal topics of Kafka
	// and its tools.
	DenyTopics []string
	// ACL maps a principal to the topic globs it may produce to; a
	// principal without an entry may produce to any allowed topic.
	ACL map[string][]string
	// RateLimit bounds records/s and bytes/s per principal and for all
	// clients together; 0: no limit.
	RateLimit RateLimit
	// JWT verifies bearer tokens; off unless a JWKS is configured.
	JWT JWT
}

// JWT configures the verification of JWT bearer tokens.
type JWT struct {
	JWKSFile        string        // a JWK Set file, reloaded when it changes
	JWKSURL         string        // or a JWK Set URL, fetched again every RefreshInterval
	RefreshInterval time.Duration // how often JWKSURL is fetched again
	Issuer          string        // the iss every token must have
	Audience        string        // a value the aud of every token must hold
	PrincipalClaim  string        // the claim that names the principal
	Leeway          time.Duration // clock skew allowed on exp, nbf and iat
}

// Enabled says whether bearer tokens that look like JWTs are verified.
func (j JWT) Enabled() bool { return j.JWKSFile != "" || j.JWKSURL != "" }

// RateLimit is a set of token-bucket limits, one second deep.
type RateLimit struct {
	RecordsPerSecond       float64
	BytesPerSecond         float64
	GlobalRecordsPerSecond float64
	GlobalBytesPerSecond   float64
}

// SCRAMUser is one SASL SCRAM credential (RFC 5802): the password is
// not kept, only what a server needs to check a client's proof.
type SCRAMUser struct {
	Principal  string
	Mechanism  string // SCRAM-SHA-256 or SCRAM-SHA-512
	Salt       []byte
	Iterations int
	StoredKey  []byte // H(HMAC(SaltedPassword, "Client Key"))
	ServerKey  []byte // HMAC(SaltedPassword, "Server Key")
}

// scramUsers reads security.scram_users, a list of {principal,
// mechanism, salt, iterations, stored_key, server_key}, the byte values
// in base64 (standard, padded).
func (g *getter) scramUsers(key string) []SCRAMUser {
	var out []SCRAMUser
	list, ok := g.k.Get(key).([]any)
	if !ok && g.k.Get(key) != nil {
		g.fail(key, fmt.Errorf("want a list of {principal, mechanism, salt, iterations, stored_key, server_key}"))
	}
	seen := map[string]bool{}
	for i, e := range list {
		at := fmt.Sprintf("%s[%d]", key, i)
		m, _ := e.(map[string]any)
		u := SCRAMUser{}
		u.Principal, _ = m["principal"].(string)
		u.Mechanism, _ = m["mechanism"].(string)
		size := map[string]int{"SCRAM-SHA-256": 32, "SCRAM-SHA-512": 64}[u.Mechanism]
		var bad []string
		if u.Principal == "" {
			bad = append(bad, "principal is empty")
		}
		if size == 0 {
			bad = append(bad, fmt.Sprintf("mechanism %q: want SCRAM-SHA-256 or SCRAM-SHA-512", u.Mechanism))
		}
		switch n := m["iterations"].(type) {
		case int:
			u.Iterations = n
		case int64:
			u.Iterations = int(n)
		case float64:
			u.Iterations = int(n)
		case string:
			u.Iterations, _ = strconv.Atoi(n)
		}
		if u.Iterations < 4096 {
			bad = append(bad, "iterations: want 4096 or more (RFC 7677)")
		}
		for _, f := range []struct {
			name string
			dst  *[]byte
			size int
		}{{"salt", &u.Salt, 0}, {"stored_key", &u.StoredKey, size}, {"server_key", &u.ServerKey, size}} {
			s, _ := m[f.name].(string)
			b, err := base64.StdEncoding.DecodeString(s)
			switch {
			case err != nil || len(b) == 0:
				bad = append(bad, f.name+": want base64")
			case f.size > 0 && len(b) != f.size:
				bad = append(bad, fmt.Sprintf("%s: %d bytes; want %d for %s", f.name, len(b), f.size, u.Mechanism))
			}
			*f.dst = b
		}
		if seen[u.Mechanism+" "+u.Principal] {
			bad = append(bad, fmt.Sprintf("principal %q has a %s credential already", u.Principal, u.Mechanism))
		}
		if len(bad) > 0 {
			g.fail(at, errors.New(strings.Join(bad, "; ")))
			continue
		}
		seen[u.Mechanism+" "+u.Principal] = true
		out = append(out, u)
	}
	return out
}

// apiKeys reads security.api_keys, a list of {principal, sha256}, into a
// map from the hash (lower-case hex) to the principal.
func (g *getter) apiKeys(key string) map[string]string {
	out := map[string]string{}
	keys, ok := g.k.Get(key).([]any)
	if !ok && g.k.Get(key) != nil {
		g.fail(key, fmt.Errorf("want a list of {principal, sha256}"))
	}
	for i, e := range keys {
		m, ok := e.(map[string]any)
		principal, _ := m["principal"].(string)
		hash, _ := m["sha256"].(string)
		hash = strings.ToLower(hash)
		if !ok || principal == "" || len(hash) != 64 || strings.Trim(hash, "0123456789abcdef") != "" {
			g.fail(fmt.Sprintf("%s[%d]", key, i), fmt.Errorf("want {principal: NAME, sha256: the 64 hex digits of the key's SHA-256}"))
			continue
		}
		out[hash] = principal
	}
	return out
}
