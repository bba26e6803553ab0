package identity

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/securitytest"
)

func TestParseUserAgent(t *testing.T) {
	tests := []struct{ ua, lib, ver string }{
		{"acme-sdk/2.1.0 (linux; amd64)", "acme-sdk", "2.1.0"},
		{"grpcurl/1.9.4 grpc-go/1.85.0", "grpcurl", "1.9.4"},
		{"curl/8.5.0", "curl", "8.5.0"},
		{"Go-http-client/1.1", "Go-http-client", "1.1"},
		{"python-requests", "python-requests", ""},
		{"", Unknown, ""},
		{"evil\"/1{}", Unknown, ""},
		{strings.Repeat("a", 50) + "/1", Unknown, "1"},
	}
	for _, tt := range tests {
		lib, ver := ParseUserAgent(tt.ua)
		assert.Equal(t, tt.lib, lib, tt.ua)
		assert.Equal(t, tt.ver, ver, tt.ua)
	}
}

func TestClients(t *testing.T) {
	h := http.Header{}
	h.Set(ClientIDHeader, "billing-service")
	h.Set("User-Agent", "acme-sdk/2.1")
	c, _ := FromHTTP(&http.Request{Header: h}, nil)
	assert.Equal(t, Client{Principal: "billing-service", Kind: Claimed, Name: "billing-service", Library: "acme-sdk", Version: "2.1"}, c)
	c, _ = FromHTTP(&http.Request{Header: http.Header{}}, nil)
	assert.Equal(t, Anonymous, c.Principal)
	h.Set(ClientIDHeader, "bad id{}")
	c, _ = FromHTTP(&http.Request{Header: h}, nil)
	assert.Equal(t, "invalid", c.Principal)

	md := metadata.Pairs(ClientIDMetadata, "ingestor-7", "user-agent", "grpcurl/1.9.4 grpc-go/1.85.0")
	c, _ = FromGRPC(metadata.NewIncomingContext(t.Context(), md), nil)
	assert.Equal(t, Client{Principal: "ingestor-7", Kind: Claimed, Name: "ingestor-7", Library: "grpcurl", Version: "1.9.4"}, c)
}

// TestKindsNeverCollide: the API key, the JWT, the certificate and the
// client id that all say "billing" are four principals, each with its own
// key (which ACL entries and rate-limit buckets use); a client id spelled
// like another kind's key stays a claimed one.
func TestKindsNeverCollide(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret-key"))
	iss := securitytest.NewIssuer(t, "https://issuer.test/")
	a, err := NewAuthenticator(t.Context(), config.Security{
		APIKeys: map[string]string{hex.EncodeToString(sum[:]): "billing"},
		JWT:     config.JWT{JWKSFile: iss.JWKSFile, Issuer: iss.Name, Audience: "aud", PrincipalClaim: "sub", Leeway: time.Second, RefreshInterval: time.Minute},
	}, config.ServerTLS{PrincipalFrom: config.PrincipalFromCN, ClientCAFile: "ca.pem"}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	leaf := securitytest.NewCA(t, "test CA").Issue(t, "billing", securitytest.LeafOptions{})
	cert, err := x509.ParseCertificate(leaf.TLS.Certificate[0])
	require.NoError(t, err)

	byKey, err := Client{Kind: Claimed, Name: "billing", Principal: "billing"}.authenticate(a, "Bearer s3cret-key", nil)
	require.NoError(t, err)
	byJWT, err := Client{Kind: Claimed, Name: "billing", Principal: "billing"}.authenticate(a, "Bearer "+iss.Token(t, "billing", "aud", time.Hour, nil), nil)
	require.NoError(t, err)
	byCert, err := Client{Kind: Claimed, Name: "billing", Principal: "billing"}.authenticate(a, "", cert)
	require.NoError(t, err)
	h := http.Header{}
	h.Set(ClientIDHeader, "billing")
	byID, err := FromHTTP(&http.Request{Header: h}, a)
	require.NoError(t, err)
	h.Set(ClientIDHeader, "key:billing")
	spoof, err := FromHTTP(&http.Request{Header: h}, a)
	require.NoError(t, err)
	anon, err := FromHTTP(&http.Request{Header: http.Header{}}, a)
	require.NoError(t, err)

	keys := map[string]Client{}
	for _, c := range []Client{byKey, byJWT, byCert, byID, spoof, anon} {
		_, dup := keys[c.Key()]
		assert.False(t, dup, "%q twice", c.Key())
		keys[c.Key()] = c
	}
	assert.Equal(t, []string{"anonymous", "cert:billing", "id:billing", "id:key:billing", "jwt:billing", "key:billing"}, slices.Sorted(maps.Keys(keys)))
	for _, c := range []Client{byKey, byJWT, byCert} {
		assert.True(t, c.Verified(), c.Key())
		assert.Equal(t, "billing", c.Principal, "metrics and messages name a verified principal without its kind")
	}
	for _, c := range []Client{byID, spoof, anon} {
		assert.False(t, c.Verified(), c.Key())
	}
	assert.Equal(t, "unverified:billing", byID.Principal)
}

func FuzzParseUserAgent(f *testing.F) {
	for _, s := range []string{"acme-sdk/2.1.0 (linux)", "", "a/b/c", "/", " x", "grpc-go/1.85.0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ua string) {
		lib, ver := ParseUserAgent(ua)
		if lib == "" || len(lib) > 40 || len(ver) > 40 {
			t.Fatalf("%q: library %q version %q", ua, lib, ver)
		}
	})
}

func FuzzClientID(f *testing.F) {
	for _, s := range []string{"alice", "", " x ", "a{b}", strings.Repeat("z", 70)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		p := clientID(id)
		if p == "" || len(p) > 64 {
			t.Fatalf("%q: principal %q", id, p)
		}
	})
}

func TestAuthenticator(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret-key"))
	a := newAuthenticator(t, config.Security{
		APIKeys:     map[string]string{hex.EncodeToString(sum[:]): "billing"},
		AllowTopics: []string{"orders", "logs.*"},
		ACL:         map[string][]string{"billing": {"orders"}},
	})
	p, err := a.Authenticate("Bearer s3cret-key", nil, Anonymous)
	require.NoError(t, err)
	assert.Equal(t, "billing", p.Principal)
	assert.Equal(t, APIKey, p.Kind)
	_, err = a.Authenticate("Bearer wrong", nil, Anonymous)
	assert.ErrorIs(t, err, ErrInvalidCredentials)
	assert.NotContains(t, err.Error(), "wrong", "the error never repeats the credential")
	_, err = a.Authenticate("Basic czNjcmV0", nil, Anonymous)
	assert.ErrorIs(t, err, ErrInvalidCredentials)
	p, err = a.Authenticate("", nil, "client-1")
	require.NoError(t, err)
	assert.Equal(t, Claimed, p.Kind)
	assert.Equal(t, "unverified:client-1", p.Principal, "without credentials, the client id it claims, marked: API keys are configured")
	open := newAuthenticator(t, config.Security{})
	p, err = open.Authenticate("", nil, "client-1")
	require.NoError(t, err)
	assert.Equal(t, "client-1", p.Principal, "no credential configured: the client id as it is")

	strict := newAuthenticator(t, config.Security{RequireCredentials: true})
	_, err = strict.Authenticate("", nil, Anonymous)
	assert.ErrorIs(t, err, ErrMissingCredentials)
}

func FuzzAuthenticate(f *testing.F) {
	sum := sha256.Sum256([]byte("k"))
	a := newAuthenticator(f, config.Security{APIKeys: map[string]string{hex.EncodeToString(sum[:]): "p"}})
	for _, s := range []string{"Bearer k", "bearer  k ", "Bearer", "", "Basic x", "Bearer \x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, authorization string) {
		c, err := a.Authenticate(authorization, nil, Anonymous)
		if p := c.Principal; err == nil && p != "p" && p != Anonymous {
			t.Fatalf("%q: principal %q", authorization, p)
		}
	})
}

func newAuthenticator(tb testing.TB, s config.Security) *Authenticator {
	tb.Helper()
	a, err := NewAuthenticator(context.Background(), s, config.ServerTLS{PrincipalFrom: config.PrincipalFromCN}, slog.New(slog.DiscardHandler))
	require.NoError(tb, err)
	return a
}

func TestCertificatePrincipal(t *testing.T) {
	ca := securitytest.NewCA(t, "test CA")
	leaf := ca.Issue(t, "device-1", securitytest.LeafOptions{
		DNSNames: []string{"device-1.example.test"},
		Emails:   []string{"ops@example.test"},
		URIs:     []string{"spiffe://example.test/ns/prod/sa/billing"},
	})
	cert, err := x509.ParseCertificate(leaf.TLS.Certificate[0])
	require.NoError(t, err)
	for from, want := range map[config.PrincipalFrom]string{
		config.PrincipalFromCN:       "device-1",
		config.PrincipalFromSANDNS:   "localhost", // the first DNS name
		config.PrincipalFromSANEmail: "ops@example.test",
		config.PrincipalFromSANURI:   "spiffe://example.test/ns/prod/sa/billing",
	} {
		a, err := NewAuthenticator(t.Context(), config.Security{}, config.ServerTLS{PrincipalFrom: from}, slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		p, err := a.Authenticate("", cert, Anonymous)
		require.NoError(t, err, from)
		assert.Equal(t, want, p.Principal, from)
		assert.Equal(t, Certificate, p.Kind, from)
	}
	bare := securitytest.NewCA(t, "other").Issue(t, "x", securitytest.LeafOptions{})
	bareCert, _ := x509.ParseCertificate(bare.TLS.Certificate[0])
	a, _ := NewAuthenticator(t.Context(), config.Security{}, config.ServerTLS{PrincipalFrom: config.PrincipalFromSANURI}, slog.New(slog.DiscardHandler))
	_, err = a.Authenticate("", bareCert, Anonymous)
	assert.ErrorContains(t, err, "the client certificate has no san_uri to name its principal")
}

// FuzzBearerToken: whatever the Authorization value, the authenticator
// answers (no panic), and only the one valid token is accepted.
func FuzzBearerToken(f *testing.F) {
	iss := securitytest.NewIssuer(f, "https://issuer.test/")
	valid := iss.Token(f, "svc", "aud", time.Hour, nil)
	a, err := NewAuthenticator(context.Background(), config.Security{JWT: config.JWT{
		JWKSFile: iss.JWKSFile, Issuer: iss.Name, Audience: "aud", PrincipalClaim: "sub", Leeway: time.Second, RefreshInterval: time.Minute,
	}}, config.ServerTLS{PrincipalFrom: config.PrincipalFromCN}, slog.New(slog.DiscardHandler))
	require.NoError(f, err)
	for _, s := range []string{"Bearer " + valid, "Bearer a.b.c", "Bearer ..", "Bearer eyJhbGciOiJub25lIn0.e30.", "Bearer " + valid[:len(valid)-2], "bearer " + valid + "x", "Bearer .e30."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, authorization string) {
		c, err := a.Authenticate(authorization, nil, Anonymous)
		p := c.Principal
		if err == nil && p != "svc" && !(authorization == "" && p == Anonymous) {
			t.Fatalf("%q: accepted as %q", authorization, p)
		}
		if err != nil && strings.Contains(err.Error(), strings.TrimPrefix(authorization, "Bearer ")) && len(authorization) > 12 {
			t.Fatalf("the error repeats the credential: %v", err)
		}
	})
}
