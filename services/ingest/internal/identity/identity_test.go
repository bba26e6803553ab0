package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/spillway/spillway/pkg/config"
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
	c, _ := FromHTTP(h, nil)
	assert.Equal(t, Client{Principal: "billing-service", Library: "acme-sdk", Version: "2.1"}, c)
	c, _ = FromHTTP(http.Header{}, nil)
	assert.Equal(t, Anonymous, c.Principal)
	h.Set(ClientIDHeader, "bad id{}")
	c, _ = FromHTTP(h, nil)
	assert.Equal(t, "invalid", c.Principal)

	md := metadata.Pairs(ClientIDMetadata, "ingestor-7", "user-agent", "grpcurl/1.9.4 grpc-go/1.85.0")
	c, _ = FromGRPC(md, nil)
	assert.Equal(t, Client{Principal: "ingestor-7", Library: "grpcurl", Version: "1.9.4"}, c)
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
	a := NewAuthenticator(config.Security{
		APIKeys:     map[string]string{hex.EncodeToString(sum[:]): "billing"},
		AllowTopics: []string{"orders", "logs.*"},
		ACL:         map[string][]string{"billing": {"orders"}},
	})
	p, err := a.Authenticate("Bearer s3cret-key", Anonymous)
	require.NoError(t, err)
	assert.Equal(t, "billing", p)
	_, err = a.Authenticate("Bearer wrong", Anonymous)
	assert.ErrorIs(t, err, ErrInvalidCredentials)
	assert.NotContains(t, err.Error(), "wrong", "the error never repeats the credential")
	_, err = a.Authenticate("Basic czNjcmV0", Anonymous)
	assert.ErrorIs(t, err, ErrInvalidCredentials)
	p, err = a.Authenticate("", "client-1")
	require.NoError(t, err)
	assert.Equal(t, "client-1", p, "without credentials, the client id")

	assert.True(t, a.Allowed("billing", "orders"))
	assert.False(t, a.Allowed("billing", "logs.app"), "outside billing's ACL")
	assert.True(t, a.Allowed("other", "logs.app"), "no ACL: the global allow-list")
	assert.False(t, a.Allowed("other", "secrets"), "outside the global allow-list")

	strict := NewAuthenticator(config.Security{RequireCredentials: true})
	_, err = strict.Authenticate("", Anonymous)
	assert.ErrorIs(t, err, ErrMissingCredentials)
}

func FuzzAuthenticate(f *testing.F) {
	sum := sha256.Sum256([]byte("k"))
	a := NewAuthenticator(config.Security{APIKeys: map[string]string{hex.EncodeToString(sum[:]): "p"}})
	for _, s := range []string{"Bearer k", "bearer  k ", "Bearer", "", "Basic x", "Bearer \x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, authorization string) {
		p, err := a.Authenticate(authorization, Anonymous)
		if err == nil && p != "p" && p != Anonymous {
			t.Fatalf("%q: principal %q", authorization, p)
		}
	})
}
