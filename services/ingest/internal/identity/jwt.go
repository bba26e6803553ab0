package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/services/ingest/internal/filewatch"
)

// Only asymmetric algorithms: a JWKS publishes public keys, and accepting
// HS* or none would let anyone holding the public key sign tokens.
var jwtAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// jwksFileCheckEvery is how often a JWKS file's modification time may be
// looked at.
const jwksFileCheckEvery = time.Second

// jwtVerifier checks JWT bearer tokens against a JWK Set: signature,
// issuer, audience and expiry; the principal is a configured claim.
type jwtVerifier struct {
	parser *jwt.Parser
	claim  string
	leeway time.Duration
	keys   func() (jwt.Keyfunc, error)
}

// newJWTVerifier loads the JWK Set of c: from a file, read again when it
// changes, or from a URL, fetched again every refresh interval until ctx
// ends. The error names what is wrong.
func newJWTVerifier(ctx context.Context, c config.JWT, logger *slog.Logger) (*jwtVerifier, error) {
	v := &jwtVerifier{
		parser: jwt.NewParser(
			jwt.WithValidMethods(jwtAlgorithms),
			jwt.WithIssuer(c.Issuer),
			jwt.WithAudience(c.Audience),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(c.Leeway),
		),
		claim:  c.PrincipalClaim,
		leeway: c.Leeway,
	}
	if c.JWKSURL != "" {
		kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{c.JWKSURL}, keyfunc.Override{
			RefreshInterval: c.RefreshInterval,
			HTTPTimeout:     10 * time.Second,
			RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
				return func(_ context.Context, err error) {
					logger.Warn("fetching the JWK Set failed; keeping the keys fetched before", "url", safeURL(u))
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("security.jwt.jwks_url: %w", err)
		}
		v.keys = func() (jwt.Keyfunc, error) { return kf.Keyfunc, nil }
		return v, nil
	}
	f := &jwksFile{path: c.JWKSFile, logger: logger, changes: filewatch.NewPoller(jwksFileCheckEvery, c.JWKSFile)}
	if err := f.load(); err != nil {
		return nil, fmt.Errorf("security.jwt.jwks_file: %w", err)
	}
	v.keys = f.keyfunc
	return v, nil
}

// safeURL is u without its user information and query, which may hold
// credentials, for logs.
func safeURL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	parsed.User, parsed.RawQuery, parsed.Fragment = nil, "", ""
	return parsed.String()
}

// principal verifies token and returns the principal it names, and until
// when it holds (its exp plus the leeway). The error says what is wrong
// with the token, never the token.
func (v *jwtVerifier) principal(token string) (string, time.Time, error) {
	kf, err := v.keys()
	if err != nil {
		return "", time.Time{}, err
	}
	claims := jwt.MapClaims{}
	if _, err := v.parser.ParseWithClaims(token, claims, kf); err != nil {
		return "", time.Time{}, tokenError(err)
	}
	p, ok := claims[v.claim].(string)
	if !ok || p == "" {
		return "", time.Time{}, fmt.Errorf("%w: the token has no %s claim", ErrInvalidCredentials, v.claim)
	}
	var until time.Time
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		until = exp.Add(v.leeway)
	}
	return p, until, nil
}

// tokenError turns a verification failure into what the client reads.
func tokenError(err error) error {
	var why string
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		why = "the token is not a well-formed JWT"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		why = "the token's signature cannot be verified with the configured keys"
	case errors.Is(err, jwt.ErrTokenExpired):
		why = "the token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		why = "the token is not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		why = "the token is not for this audience"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		why = "the token is from another issuer"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		claim := "exp, iss or aud"
		for _, c := range []string{"exp", "iss", "aud", "iat", "nbf"} {
			if strings.Contains(err.Error(), c+" claim is required") {
				claim = c
			}
		}
		why = "the token lacks a required claim (" + claim + ")"
	default:
		why = "the token is not valid"
	}
	return fmt.Errorf("%w: %s", ErrInvalidCredentials, why)
}

// jwksFile is a JWK Set read from a file, read again when the file
// changes; a changed file that does not parse is logged and the old keys
// kept.
type jwksFile struct {
	path    string
	logger  *slog.Logger
	changes *filewatch.Poller

	mu sync.Mutex
	kf keyfunc.Keyfunc
}

func (f *jwksFile) load() error {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return err
	}
	kf, err := keyfunc.NewJWKSetJSON(b)
	if err != nil {
		return fmt.Errorf("%s is not a JWK Set: %w", f.path, err)
	}
	f.kf = kf
	return nil
}

func (f *jwksFile) keyfunc() (jwt.Keyfunc, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.changes.Changed() {
		if err := f.load(); err != nil {
			f.logger.Warn("the JWK Set file changed but cannot be used; keeping the old keys", "error", err)
		} else {
			f.logger.Info("JWK Set file reloaded", "path", f.path)
		}
	}
	return f.kf.Keyfunc, nil
}
