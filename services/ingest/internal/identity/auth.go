package identity

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"path"
	"strings"

	"github.com/spillway/spillway/pkg/config"
)

// Errors of authentication. Their text is what the client reads: it never
// repeats the credential.
var (
	ErrMissingCredentials = errors.New("credentials required: send Authorization: Bearer API_KEY (gRPC: authorization metadata)")
	ErrInvalidCredentials = errors.New("invalid credentials: the API key is not known")
)

// Authenticator turns a request's credentials into its principal, and
// says which topics a principal may produce to.
type Authenticator struct {
	keys    [][]byte // SHA-256 of each API key
	owners  []string // the principal of each key
	require bool
	allow   []string
	acl     map[string][]string
}

// NewAuthenticator builds the authenticator of the security settings.
func NewAuthenticator(s config.Security) *Authenticator {
	a := &Authenticator{require: s.RequireCredentials, allow: s.AllowTopics, acl: s.ACL}
	for hash, principal := range s.APIKeys {
		b, _ := hex.DecodeString(hash)
		a.keys = append(a.keys, b)
		a.owners = append(a.owners, principal)
	}
	return a
}

// Authenticate checks the Authorization value ("Bearer KEY") and returns
// the principal of a known key. Without credentials it returns
// anonymousPrincipal, unless credentials are required. Keys are compared
// in constant time, all of them, whatever matches.
func (a *Authenticator) Authenticate(authorization, anonymousPrincipal string) (string, error) {
	if authorization == "" {
		if a.require {
			return "", ErrMissingCredentials
		}
		return anonymousPrincipal, nil
	}
	scheme, key, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(key) == "" {
		return "", ErrInvalidCredentials
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(key)))
	found := -1
	for i, k := range a.keys {
		if subtle.ConstantTimeCompare(sum[:], k) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", ErrInvalidCredentials
	}
	return a.owners[found], nil
}

// Allowed says whether principal may produce to topic: the topic is in the
// global allow-list (when there is one) and in the principal's ACL (when
// it has one).
func (a *Authenticator) Allowed(principal, topic string) bool {
	if len(a.allow) > 0 && !matchAny(a.allow, topic) {
		return false
	}
	if patterns, ok := a.acl[principal]; ok {
		return matchAny(patterns, topic)
	}
	return true
}

func matchAny(patterns []string, topic string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, topic); ok {
			return true
		}
	}
	return false
}
