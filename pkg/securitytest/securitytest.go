// Package securitytest makes credentials for tests (a CA and its
// certificates, a JWT issuer with its JWK Set and tokens) and keeps the
// list of test secrets that no log may contain.
//
// When SPILLWAY_TEST_LOGS names a folder (make test sets it), every
// secret a test registers is written under it, and so are the logs of the
// services the tests start (LogWriter); after the suite, tools/secretscan
// checks that no log holds a secret.
package securitytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// LogDirEnv names the folder of the suite's logs and secrets.
const LogDirEnv = "SPILLWAY_TEST_LOGS"

// SecretsDir is the folder, under the logs folder, of the registered
// secrets: one file per test process, one hex-encoded secret per line.
const SecretsDir = "secrets"

var secretsMu sync.Mutex

// Secret registers s as a secret that no log may contain, and returns it.
func Secret(tb testing.TB, s string) string {
	tb.Helper()
	dir := os.Getenv(LogDirEnv)
	if dir == "" {
		return s
	}
	secretsMu.Lock()
	defer secretsMu.Unlock()
	if err := os.MkdirAll(filepath.Join(dir, SecretsDir), 0o755); err != nil {
		tb.Fatalf("secrets folder: %v", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, SecretsDir, fmt.Sprintf("%d.txt", os.Getpid())), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		tb.Fatalf("secrets file: %v", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, hex.EncodeToString([]byte(s))); err != nil {
		tb.Fatalf("secrets file: %v", err)
	}
	return s
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// LogWriter returns where a service started by the test should also write
// its logs: a file under the logs folder named after the test and name,
// closed when the test ends; io.Discard when no folder is set.
func LogWriter(tb testing.TB, name string) io.Writer {
	tb.Helper()
	dir := os.Getenv(LogDirEnv)
	if dir == "" {
		return io.Discard
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatalf("logs folder: %v", err)
	}
	f, err := os.CreateTemp(dir, unsafeName.ReplaceAllString(tb.Name()+"-"+name, "_")+"-*.log")
	if err != nil {
		tb.Fatalf("log file: %v", err)
	}
	tb.Cleanup(func() { _ = f.Close() })
	return &lockedWriter{w: f}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// CA is a certificate authority for tests.
type CA struct {
	Cert     *x509.Certificate
	CertFile string // PEM, for a client CA or a trust store
	key      *ecdsa.PrivateKey
	dir      string
}

// NewCA makes a CA named name, its certificate written to a temporary
// folder.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{Cert: cert, key: key, dir: tb.TempDir()}
	ca.CertFile = filepath.Join(ca.dir, "ca.crt")
	writePEM(tb, ca.CertFile, "CERTIFICATE", der)
	return ca
}

// Pool is a certificate pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf is a certificate the CA issued, with its key, in files and loaded.
type Leaf struct {
	CertFile string
	KeyFile  string
	TLS      tls.Certificate
}

// LeafOptions are the names of an issued certificate, besides its CN.
type LeafOptions struct {
	DNSNames []string
	Emails   []string
	URIs     []string
}

// Issue makes a certificate for server and client use, valid for
// 127.0.0.1 and localhost as well as the names in opts. Its key is a
// registered secret.
func (ca *CA) Issue(tb testing.TB, cn string, opts LeafOptions) Leaf {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:   serial(tb),
		Subject:        pkix.Name{CommonName: cn},
		NotBefore:      time.Now().Add(-time.Hour),
		NotAfter:       time.Now().Add(24 * time.Hour),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:    []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:       append([]string{"localhost"}, opts.DNSNames...),
		EmailAddresses: opts.Emails,
	}
	for _, u := range opts.URIs {
		parsed, err := url.Parse(u)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	Secret(tb, base64Line(keyDER))
	dir := tb.TempDir()
	l := Leaf{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	writePEM(tb, l.CertFile, "CERTIFICATE", der)
	writePEM(tb, l.KeyFile, "PRIVATE KEY", keyDER)
	l.TLS, err = tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// base64Line is the first line of a PEM body, the part of a key that would
// show if the key were logged.
func base64Line(der []byte) string {
	lines := strings.Split(string(pem.EncodeToMemory(&pem.Block{Type: "X", Bytes: der})), "\n")
	return lines[1]
}

func writePEM(tb testing.TB, name, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// Issuer signs JWTs (ES256) and publishes its key as a JWK Set.
type Issuer struct {
	Name     string // the iss of its tokens
	JWKS     []byte // the JWK Set, JSON
	JWKSFile string // the JWK Set, in a file
	key      *ecdsa.PrivateKey
	kid      string
}

// NewIssuer makes an issuer named name with a fresh key.
func NewIssuer(tb testing.TB, name string) *Issuer {
	tb.Helper()
	key := newKey(tb)
	iss := &Issuer{Name: name, key: key, kid: serial(tb).String()}
	iss.JWKS = jwksOf(tb, &key.PublicKey, iss.kid)
	iss.JWKSFile = filepath.Join(tb.TempDir(), "jwks.json")
	if err := os.WriteFile(iss.JWKSFile, iss.JWKS, 0o600); err != nil {
		tb.Fatal(err)
	}
	return iss
}

func jwksOf(tb testing.TB, pub *ecdsa.PublicKey, kid string) []byte {
	tb.Helper()
	jwk, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.AlgES256, USE: jwkset.UseSig}})
	if err != nil {
		tb.Fatal(err)
	}
	b, err := json.Marshal(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{jwk.Marshal()}})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Token signs a token for subject and audience, valid for ttl from now
// (negative: expired), with extra claims; it is a registered secret.
func (iss *Issuer) Token(tb testing.TB, subject, audience string, ttl time.Duration, extra map[string]any) string {
	tb.Helper()
	now := time.Now()
	claims := jwt.MapClaims{
		"iss": iss.Name,
		"sub": subject,
		"aud": audience,
		"iat": now.Add(-time.Minute).Add(min(ttl, 0)).Unix(),
		"exp": now.Add(ttl).Unix(),
	}
	for k, v := range extra {
		claims[k] = v
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = iss.kid
	s, err := t.SignedString(iss.key)
	if err != nil {
		tb.Fatal(err)
	}
	return Secret(tb, s)
}
