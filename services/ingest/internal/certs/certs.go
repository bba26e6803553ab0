// Package certs serves the listeners' TLS certificate, key and client CA
// from files, and takes new files when they change (a renewed certificate,
// a rotated Kubernetes Secret) without a restart.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spillway/spillway/services/ingest/internal/filewatch"

	"github.com/spillway/spillway/pkg/config"
)

// checkEvery is how often a handshake may look at the files' modification
// times; between two checks handshakes use what is loaded.
const checkEvery = time.Second

// Reloader holds the loaded TLS material and reloads it when a file
// changes. A file that is changed into something unusable (half-written,
// a key that does not match) is logged and the old material kept.
type Reloader struct {
	files      config.ServerTLS
	clientAuth tls.ClientAuthType
	logger     *slog.Logger
	changes    *filewatch.Poller

	mu      sync.Mutex
	cert    *tls.Certificate
	clients *x509.CertPool
}

// New loads the files of s. The error names the file that is wrong.
func New(s config.ServerTLS, logger *slog.Logger) (*Reloader, error) {
	r := &Reloader{files: s, logger: logger}
	switch s.ClientAuth {
	case config.ClientAuthNone:
		r.clientAuth = tls.NoClientCert
	case config.ClientAuthOptional:
		r.clientAuth = tls.VerifyClientCertIfGiven
	case config.ClientAuthRequire:
		r.clientAuth = tls.RequireAndVerifyClientCert
	default:
		return nil, fmt.Errorf("server.tls.client_auth %q is not allowed", s.ClientAuth)
	}
	r.changes = filewatch.NewPoller(checkEvery, s.CertFile, s.KeyFile, s.ClientCAFile)
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

// ServerConfig returns a TLS configuration for one listener, offering
// nextProtos in ALPN ("h2" for gRPC; "h2", "http/1.1" for HTTP). Every
// handshake gets the current certificate and client CAs.
func (r *Reloader) ServerConfig(nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: nextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, clients := r.current()
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				NextProtos:   nextProtos,
				Certificates: []tls.Certificate{*cert},
				ClientAuth:   r.clientAuth,
				ClientCAs:    clients,
			}, nil
		},
	}
}

// current returns the loaded material, first reloading it when a file has
// changed since the last look. Files that changed into something unusable
// (half-written, a key of another certificate) are logged once; the next
// write is looked at again.
func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.changes.Changed() {
		if err := r.load(); err != nil {
			r.logger.Warn("TLS files changed but are not usable; keeping the loaded ones", "error", err)
		} else {
			r.logger.Info("TLS files reloaded", "cert", r.files.CertFile, "not_after", r.cert.Leaf.NotAfter)
		}
	}
	return r.cert, r.clients
}

// load reads the files into r; the caller holds r.mu, or r is not shared
// yet. The errors name the file.
func (r *Reloader) load() error {
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return fmt.Errorf("server.tls.cert and server.tls.key: %w", err)
	}
	var clients *x509.CertPool
	if r.files.ClientCAFile != "" {
		pem, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return fmt.Errorf("server.tls.client_ca: %w", err)
		}
		clients = x509.NewCertPool()
		if !clients.AppendCertsFromPEM(pem) {
			return fmt.Errorf("server.tls.client_ca: %s holds no PEM certificate", r.files.ClientCAFile)
		}
	}
	r.cert, r.clients = &cert, clients
	return nil
}
