package app_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

func tlsYAML(server securitytest.Leaf, clientCA, clientAuth string) string {
	return `
server:
  tls:
    cert: ` + server.CertFile + `
    key: ` + server.KeyFile + `
    client_ca: ` + clientCA + `
    client_auth: ` + clientAuth + `
`
}

// httpsPost posts one record over HTTPS with the given client TLS.
func httpsPost(t *testing.T, url string, tc *tls.Config, http2 bool) (int, string, error) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: http2}}
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("over tls"))
	req.Header.Set("Content-Type", "text/plain")
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func grpcProduce(t *testing.T, addr string, tc *tls.Config) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	require.NoError(t, err)
	defer conn.Close()
	_, err = ingestv1.NewIngestServiceClient(conn).Produce(t.Context(), &ingestv1.ProduceRequest{Topic: "secure", Records: []*ingestv1.Record{{Value: []byte("over tls")}}})
	return err
}

// TestTLSAndClientCertificates: the HTTP and gRPC listeners speak TLS; a
// client certificate from the client CA names the principal (its CN); one
// from another CA is refused at the handshake; with client_auth optional,
// a client without a certificate is still served.
func TestTLSAndClientCertificates(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	ca := securitytest.NewCA(t, "spillway test CA")
	other := securitytest.NewCA(t, "another CA")
	server := ca.Issue(t, "spillway-ingest", securitytest.LeafOptions{})
	device := ca.Issue(t, "device-42", securitytest.LeafOptions{})
	stranger := other.Issue(t, "device-42", securitytest.LeafOptions{})
	in := ingesttest.StartYAML(t, addr, tlsYAML(server, ca.CertFile, "optional"))
	require.True(t, strings.HasPrefix(in.URL, "https://"))
	url := in.URL + "/topics/secure/messages"

	withCert := &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{device.TLS}, MinVersion: tls.VersionTLS12}
	noCert := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	// GetClientCertificate, because a Go client given Certificates sends
	// none that the server's CA list does not name; curl and others send
	// theirs anyway.
	otherCA := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &stranger.TLS, nil
	}}

	code, body, err := httpsPost(t, url, withCert, false)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, body)
	code, body, err = httpsPost(t, url, withCert, true)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, "HTTP/2: %s", body)
	code, body, err = httpsPost(t, url, noCert, false)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, "client_auth optional: no certificate is served as anonymous: %s", body)
	_, _, err = httpsPost(t, url, otherCA, false)
	require.Error(t, err, "a certificate from another CA is refused")
	assert.Contains(t, err.Error(), "certificate")
	_, _, err = httpsPost(t, url, &tls.Config{MinVersion: tls.VersionTLS12}, false)
	require.Error(t, err, "the client does not trust a server certificate from the test CA")

	require.NoError(t, grpcProduce(t, in.GRPC, withCert))
	err = grpcProduce(t, in.GRPC, otherCA)
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)

	m := func(series string) float64 { return ingesttest.Metric(t, in.Monitor, series) }
	assert.Equal(t, 3.0, m(`spillway_client_records_total{outcome="delivered",principal="device-42",topic="secure"}`), "2 over HTTP, 1 over gRPC")
	assert.Equal(t, 1.0, m(`spillway_client_records_total{outcome="delivered",principal="anonymous",topic="secure"}`))
}

// TestClientCertificateRequired: with client_auth require, a client
// without a certificate cannot connect, over HTTP or gRPC.
func TestClientCertificateRequired(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	ca := securitytest.NewCA(t, "spillway test CA")
	in := ingesttest.StartYAML(t, addr, tlsYAML(ca.Issue(t, "spillway-ingest", securitytest.LeafOptions{}), ca.CertFile, "require"))
	noCert := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	_, _, err := httpsPost(t, in.URL+"/topics/secure/messages", noCert, false)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "certificate required")
	assert.Equal(t, codes.Unavailable, status.Code(grpcProduce(t, in.GRPC, noCert)))

	device := ca.Issue(t, "device-7", securitytest.LeafOptions{})
	code, body, err := httpsPost(t, in.URL+"/topics/secure/messages", &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{device.TLS}, MinVersion: tls.VersionTLS12}, false)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, body)
}

// TestCertificateReload: new certificate files are served to new
// connections without a restart; a broken file is logged and the
// certificate before it kept.
func TestCertificateReload(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	ca := securitytest.NewCA(t, "spillway test CA")
	first := ca.Issue(t, "first", securitytest.LeafOptions{})
	second := ca.Issue(t, "second", securitytest.LeafOptions{})
	// The ingest reads copies, so that the test can replace them.
	dir := t.TempDir()
	live := securitytest.Leaf{CertFile: dir + "/tls.crt", KeyFile: dir + "/tls.key"}
	copyFile(t, first.CertFile, live.CertFile)
	copyFile(t, first.KeyFile, live.KeyFile)
	in := ingesttest.StartYAML(t, addr, `
server:
  tls: {cert: `+live.CertFile+`, key: `+live.KeyFile+`}
`)
	served := func() string {
		conn, err := tls.Dial("tcp", in.App.HTTPAddr(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12})
		if err != nil {
			return "error: " + err.Error()
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	require.Equal(t, "first", served())

	// A broken pair (the key of another certificate): kept the first.
	copyFile(t, second.CertFile, live.CertFile)
	// The files are looked at during handshakes, at most once a second.
	require.Eventually(t, func() bool {
		return served() == "first" && strings.Contains(in.LogText(), "TLS files changed but are not usable")
	}, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, "first", served())

	copyFile(t, second.KeyFile, live.KeyFile)
	require.Eventually(t, func() bool { return served() == "second" }, 10*time.Second, 50*time.Millisecond)
	assert.Contains(t, in.LogText(), "TLS files reloaded")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	// Write then rename, as a Secret volume update does, so that a reader
	// never sees half a file.
	require.NoError(t, os.WriteFile(to+".new", b, 0o600))
	require.NoError(t, os.Rename(to+".new", to))
}
