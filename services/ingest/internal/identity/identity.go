// Package identity says who sends a request: its principal (the client id
// it gives, until authentication lands) and its client library and version
// (from the user agent), for the per-client metrics.
package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// The request headers and gRPC metadata keys that carry a client's id.
const (
	ClientIDHeader   = "X-Client-Id"
	ClientIDMetadata = "client-id"
)

// Anonymous is the principal of a request that gives no client id, and
// Unknown the library of one without a user agent.
const (
	Anonymous = "anonymous"
	Unknown   = "unknown"
)

// Client is who sends a request.
type Client struct {
	Principal string
	Library   string
	Version   string
	// Until is when the client's credential expires (a JWT's exp); zero
	// when it does not. A gRPC stream ends then.
	Until time.Time
}

type key struct{}

// With returns ctx carrying c.
func With(ctx context.Context, c Client) context.Context { return context.WithValue(ctx, key{}, c) }

// From returns the client in ctx, or an anonymous unknown one.
func From(ctx context.Context) Client {
	if c, ok := ctx.Value(key{}).(Client); ok {
		return c
	}
	return Client{Principal: Anonymous, Library: Unknown}
}

// FromHTTP reads the client of an HTTP request. With credentials (a
// bearer token or a client certificate), the principal is the
// authenticated one; without, the client id it gives.
func FromHTTP(r *http.Request, auth *Authenticator) (Client, error) {
	h := r.Header
	c := Client{Principal: clientID(h.Get(ClientIDHeader))}
	c.Library, c.Version = ParseUserAgent(h.Get("User-Agent"))
	if auth != nil {
		p, until, err := auth.Authenticate(h.Get("Authorization"), verifiedCertificate(r.TLS), c.Principal)
		if err != nil {
			return c, err
		}
		c.Principal, c.Until = p, until
	}
	return c, nil
}

// FromGRPC reads the client of a gRPC call from its metadata and its
// peer's TLS state, as FromHTTP.
func FromGRPC(ctx context.Context, auth *Authenticator) (Client, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	c := Client{Principal: Anonymous}
	if v := md.Get(ClientIDMetadata); len(v) > 0 {
		c.Principal = clientID(v[0])
	}
	first := func(key string) string {
		if v := md.Get(key); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	c.Library, c.Version = ParseUserAgent(first("user-agent"))
	if auth != nil {
		var state *tls.ConnectionState
		if p, ok := peer.FromContext(ctx); ok {
			if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
				state = &info.State
			}
		}
		p, until, err := auth.Authenticate(first("authorization"), verifiedCertificate(state), c.Principal)
		if err != nil {
			return c, err
		}
		c.Principal, c.Until = p, until
	}
	return c, nil
}

// verifiedCertificate is the client's certificate when it was verified
// against the client CA, else nil.
func verifiedCertificate(state *tls.ConnectionState) *x509.Certificate {
	if state == nil || len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return nil
	}
	return state.VerifiedChains[0][0]
}

// clientID keeps an id that is safe as a metric label: at most 64
// characters of letters, digits, '.', '_', '-', ':', '@'. Anything else is
// "invalid", an empty one anonymous.
func clientID(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return Anonymous
	}
	if len(s) > 64 || strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-:@", r))
	}) >= 0 {
		return "invalid"
	}
	return s
}

// ParseUserAgent returns the product and version of a user agent's first
// token ("acme-sdk/2.1.0 (linux)" is acme-sdk and 2.1.0; "grpcurl/1.9.4
// grpc-go/1.85.0" is grpcurl and 1.9.4), cleaned for a metric label.
func ParseUserAgent(ua string) (library, version string) {
	first, _, _ := strings.Cut(strings.TrimSpace(ua), " ")
	if first == "" {
		return Unknown, ""
	}
	library, version, _ = strings.Cut(first, "/")
	return label(library, Unknown), label(version, "")
}

// label keeps at most 40 characters of [a-zA-Z0-9._-+], else fallback.
func label(s, fallback string) string {
	if s == "" || len(s) > 40 || strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-+", r))
	}) >= 0 {
		return fallback
	}
	return s
}
