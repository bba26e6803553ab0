package identity

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"google.golang.org/grpc/metadata"
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
	assert.Equal(t, Client{Principal: "billing-service", Library: "acme-sdk", Version: "2.1"}, FromHTTP(h))
	assert.Equal(t, Anonymous, FromHTTP(http.Header{}).Principal)
	h.Set(ClientIDHeader, "bad id{}")
	assert.Equal(t, "invalid", FromHTTP(h).Principal)

	md := metadata.Pairs(ClientIDMetadata, "ingestor-7", "user-agent", "grpcurl/1.9.4 grpc-go/1.85.0")
	assert.Equal(t, Client{Principal: "ingestor-7", Library: "grpcurl", Version: "1.9.4"}, FromGRPC(md))
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
