package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spillway/spillway/pkg/config"
)

// Errors of authentication. Their text is what the client reads: it never
// repeats the credential.
var (
	ErrMissingCredentials = errors.New("credentials required: send Authorization: Bearer with an API key or a JWT (gRPC: authorization metadata), or a client certificate")
	ErrInvalidCredentials = errors.New("invalid credentials")
	errUnknownKey         = fmt.Errorf("%w: the API key is not known", ErrInvalidCredentials)
	errNotBearer          = fmt.Errorf("%w: want Authorization: Bearer TOKEN", ErrInvalidCredentials)
)

// Authenticator turns a request's credentials into its principal.
type Authenticator struct {
	keys          [][]byte // SHA-256 of each API key
	owners        []string // the principal of each key
	jwt           *jwtVerifier
	principalFrom config.PrincipalFrom        // which name of a client certificate is its principal
	scram         map[string]config.SCRAMUser // by mechanism and user: "SCRAM-SHA-256 billing"
	require       bool
	// maxSession bounds a SASL session (security.sasl.max_session_lifetime);
	// 0: only the credential's expiry does.
	maxSession time.Duration
	// verifies is true when any credential can be checked (API keys, JWTs
	// or client certificates): then a client id a request merely claims is
	// marked unverified, so that it cannot pass for a principal.
	verifies bool
}

// Unverified starts the principal of a request that gives a client id but
// no credential, when credentials are configured.
const Unverified = "unverified:"

// NewAuthenticator builds the authenticator of the security settings and
// the listeners' TLS. With a JWKS URL, the keys are fetched again until
// ctx ends.
func NewAuthenticator(ctx context.Context, s config.Security, t config.ServerTLS, logger *slog.Logger) (*Authenticator, error) {
	a := &Authenticator{require: s.RequireCredentials, principalFrom: t.PrincipalFrom, maxSession: s.MaxSessionLifetime,
		verifies: len(s.APIKeys) > 0 || len(s.SCRAMUsers) > 0 || s.JWT.Enabled() || t.ClientCAFile != "",
		scram:    map[string]config.SCRAMUser{}}
	for _, u := range s.SCRAMUsers {
		a.scram[u.Mechanism+" "+u.Principal] = u
	}
	for hash, principal := range s.APIKeys {
		b, _ := hex.DecodeString(hash)
		a.keys = append(a.keys, b)
		a.owners = append(a.owners, principal)
	}
	if s.JWT.Enabled() {
		v, err := newJWTVerifier(ctx, s.JWT, logger)
		if err != nil {
			return nil, err
		}
		a.jwt = v
	}
	return a, nil
}

// Authenticate returns the principal of a request, with its kind. A
// bearer credential in authorization ("Bearer TOKEN") wins: a JWT when
// JWTs are configured and the token has a JWT's three parts, else an API
// key. Then a verified client certificate (cert, nil without one). Without
// either it returns claimedPrincipal (the client id, marked Unverified
// when credentials are configured) of kind Claimed, unless credentials are
// required. Until is when the credential expires (a JWT's exp plus the
// leeway); zero when it does not.
func (a *Authenticator) Authenticate(authorization string, cert *x509.Certificate, claimedPrincipal string) (Client, error) {
	if authorization != "" {
		return a.bearer(authorization)
	}
	if cert != nil {
		if p := a.certificatePrincipal(cert); p != "" {
			return Client{Principal: p, Kind: Certificate}, nil
		}
		return Client{}, fmt.Errorf("%w: the client certificate has no %s to name its principal (server.tls.principal_from)", ErrInvalidCredentials, a.principalFrom)
	}
	if a.require {
		return Client{}, ErrMissingCredentials
	}
	if a.verifies && claimedPrincipal != Anonymous {
		return Client{Principal: Unverified + claimedPrincipal, Kind: Claimed}, nil
	}
	return Client{Principal: claimedPrincipal, Kind: Claimed}, nil
}

// bearer checks a bearer token: a JWT or an API key.
func (a *Authenticator) bearer(authorization string) (Client, error) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return Client{}, errNotBearer
	}
	if a.jwt != nil && strings.Count(token, ".") == 2 {
		p, until, err := a.jwt.principal(token)
		return Client{Principal: p, Kind: JWT, Until: until}, err
	}
	p, err := a.apiKey(token)
	return Client{Principal: p, Kind: APIKey}, err
}

// apiKey returns the principal of a known key. Keys are compared in
// constant time, all of them, whatever matches.
func (a *Authenticator) apiKey(key string) (string, error) {
	sum := sha256.Sum256([]byte(key))
	found := -1
	for i, k := range a.keys {
		if subtle.ConstantTimeCompare(sum[:], k) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", errUnknownKey
	}
	return a.owners[found], nil
}

// certificatePrincipal names the principal of a verified client
// certificate: its subject CN or its first SAN of the configured kind.
func (a *Authenticator) certificatePrincipal(cert *x509.Certificate) string {
	switch a.principalFrom {
	case config.PrincipalFromSANDNS:
		if len(cert.DNSNames) > 0 {
			return cert.DNSNames[0]
		}
	case config.PrincipalFromSANEmail:
		if len(cert.EmailAddresses) > 0 {
			return cert.EmailAddresses[0]
		}
	case config.PrincipalFromSANURI:
		if len(cert.URIs) > 0 {
			return cert.URIs[0].String()
		}
	default:
		return cert.Subject.CommonName
	}
	return ""
}
