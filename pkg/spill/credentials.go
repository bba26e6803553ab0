package spill

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go"

	"github.com/spillway/spillway/pkg/config"
)

// CredentialsFile is the file, under producer.wal.path, where the ingest's
// embedded NATS server keeps the nkey seed that the ingest, forwarder,
// resender and dead-letters command sign in with, unless
// producer.wal.nats.credentials names another. The ingest makes it at
// first start, with mode 0600.
const CredentialsFile = "nats-user.nk"

// EmbeddedCredentials is the credentials file of the embedded server
// configured by c: producer.wal.nats.credentials when set, else
// CredentialsFile under producer.wal.path.
func EmbeddedCredentials(c config.WAL) string {
	if c.NATS.Credentials != "" {
		return c.NATS.Credentials
	}
	return filepath.Join(c.Path, CredentialsFile)
}

// credentialsOption signs in with file: a .creds file (a user JWT and its
// seed, for a server in operator mode) or a bare nkey seed file (for a
// server that lists the user's public nkey, as the embedded one does).
// The seed is read from the file when the server asks for a signature and
// is not kept in memory; a replaced key takes effect at the next start.
func credentialsOption(file string) (nats.Option, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("NATS credentials: %w", err)
	}
	if bytes.Contains(b, []byte("BEGIN NATS USER JWT")) {
		return nats.UserCredentials(file), nil
	}
	opt, err := nats.NkeyOptionFromSeed(file)
	if err != nil {
		return nil, fmt.Errorf("NATS credentials %s: %w", file, err)
	}
	return opt, nil
}
