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

// Kind says how a request's principal was established. Principals of
// different kinds never share an ACL entry or a rate-limit bucket: the API
// key "billing", a JWT whose sub is "billing", a certificate whose CN is
// "billing" and a client that merely claims the id "billing" are four
// principals (see Client.Key).
type Kind string

// The kinds of principal, as they prefix a security.acl entry.
const (
	// Claimed: a client id sent without a credential, or none (anonymous).
	Claimed     Kind = "id"
	APIKey      Kind = "key"
	JWT         Kind = "jwt"
	Certificate Kind = "cert"
)

// Kinds are the kinds of principal, in the order of their documentation.
var Kinds = []Kind{APIKey, JWT, Certificate, Claimed}

// Client is who sends a request.
type Client struct {
	// Principal names the client in metrics and messages: the verified
	// name, or the claimed id ("unverified:ID" when credentials are
	// configured), or anonymous.
	Principal string
	// Kind is how the principal was established; Name is the name it was
	// established with (the claimed id, "" for anonymous).
	Kind    Kind
	Name    string
	Library string
	Version string
	// Until is when the client's credential expires (a JWT's exp); zero
	// when it does not. A gRPC stream ends then.
	Until time.Time
}

type key struct{}

// Verified says whether the principal comes from a checked credential.
func (c Client) Verified() bool { return c.Kind != "" && c.Kind != Claimed }

// Key is the principal with its kind, unique across kinds: "key:billing",
// "jwt:svc-1", "cert:device-7", "id:client-1" for a claimed id, and
// "anonymous".
func (c Client) Key() string {
	if c.Name == "" && !c.Verified() {
		return Anonymous
	}
	kind := c.Kind
	if kind == "" {
		kind = Claimed
	}
	return string(kind) + ":" + c.Name
}

// With returns ctx carrying c.
func With(ctx context.Context, c Client) context.Context { return context.WithValue(ctx, key{}, c) }

// From returns the client in ctx, or an anonymous unknown one.
func From(ctx context.Context) Client {
	if c, ok := ctx.Value(key{}).(Client); ok {
		return c
	}
	return Client{Principal: Anonymous, Kind: Claimed, Library: Unknown}
}

// FromHTTP reads the client of an HTTP request. With credentials (a
// bearer token or a client certificate), the principal is the
// authenticated one; without, the client id it gives.
func FromHTTP(r *http.Request, auth *Authenticator) (Client, error) {
	h := r.Header
	c := claimed(clientID(h.Get(ClientIDHeader)))
	c.Library, c.Version = ParseUserAgent(h.Get("User-Agent"))
	return c.authenticate(auth, h.Get("Authorization"), verifiedCertificate(r.TLS))
}

// FromGRPC reads the client of a gRPC call from its metadata and its
// peer's TLS state, as FromHTTP.
func FromGRPC(ctx context.Context, auth *Authenticator) (Client, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	c := claimed(Anonymous)
	if v := md.Get(ClientIDMetadata); len(v) > 0 {
		c = claimed(clientID(v[0]))
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
		return c.authenticate(auth, first("authorization"), verifiedCertificate(state))
	}
	return c, nil
}

// claimed is the client of a request that claims id (Anonymous: none).
func claimed(id string) Client {
	c := Client{Principal: id, Kind: Claimed}
	if id != Anonymous {
		c.Name = id
	}
	return c
}

// authenticate sets c's principal from its credentials, if auth checks
// any.
func (c Client) authenticate(auth *Authenticator, authorization string, cert *x509.Certificate) (Client, error) {
	if auth == nil {
		return c, nil
	}
	p, err := auth.Authenticate(authorization, cert, c.Principal)
	if err != nil {
		return c, err
	}
	c.Principal, c.Until = p.Principal, p.Until
	if p.Kind != Claimed {
		c.Kind, c.Name = p.Kind, p.Principal
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
