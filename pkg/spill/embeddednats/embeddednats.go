// Package embeddednats runs the ingest's JetStream buffer inside its
// process when no external NATS is configured. It is apart from package
// spill because it links the NATS server (9 MB of a stripped binary): the
// ingest imports it, the forwarder and resender, which only connect, do
// not.
package embeddednats

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/spill"
)

// Start starts a NATS server with JetStream inside this process, storing
// under c.Path, with a client listener on c.Listen for the forwarder and
// resender. spill.Connect reaches it in-process.
//
// The server admits only the user whose nkey seed is in
// spill.EmbeddedCredentials(c): whoever reaches the listener without it can
// neither read the buffered records, nor purge them, nor publish a forged
// one for the forwarder to carry to Kafka. Start makes the seed (mode
// 0600) when the file does not exist and producer.wal.nats.credentials
// does not name it.
func Start(c config.WAL, logger *slog.Logger) (*server.Server, error) {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return nil, fmt.Errorf("producer.wal.listen: %w", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("producer.wal.listen: %w", err)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	storeDir, err := filepath.Abs(c.Path)
	if err != nil {
		return nil, fmt.Errorf("producer.wal.path: %w", err)
	}
	user, err := loadOrMakeUser(c, logger)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		Nkeys:              []*server.NkeyUser{{Nkey: user}},
		ServerName:         "spillway-embedded",
		Host:               host,
		Port:               p,
		JetStream:          true,
		StoreDir:           storeDir,
		JetStreamMaxMemory: -1,
		JetStreamMaxStore:  -1,
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         64 << 20, // NATS's largest: records are limited by kafka.message.max.bytes first
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS server on %s did not become ready within 30s", c.Listen)
	}
	logger.Info("embedded JetStream started", "listen", srv.ClientURL(), "store", storeDir, "in_memory", c.InMemory)
	return srv, nil
}

// loadOrMakeUser returns the public nkey of the user in the credentials
// file, making the file first when it is Spillway's own and missing.
func loadOrMakeUser(c config.WAL, logger *slog.Logger) (string, error) {
	file := spill.EmbeddedCredentials(c)
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) && c.NATS.Credentials == "" {
		if b, err = makeUser(file); err == nil {
			logger.Info("made the embedded NATS server's credentials", "file", file)
		}
	}
	if err != nil {
		return "", fmt.Errorf("embedded NATS credentials: %w", err)
	}
	if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o077 != 0 {
		logger.Warn("the embedded NATS server's credentials file can be read by other users: chmod 600 it", "file", file, "mode", fi.Mode().Perm().String())
	}
	return UserPublicKey(file, b)
}

// UserPublicKey is the public key of the user nkey seed b (a bare seed,
// or a decorated one) read from file, the one user a Spillway NATS server
// admits; an error when b holds anything else.
func UserPublicKey(file string, b []byte) (string, error) {
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return "", fmt.Errorf("NATS credentials %s: %w", file, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("NATS credentials %s: %w", file, err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("NATS credentials %s: not a user nkey seed (SU...)", file)
	}
	return pub, nil
}

// makeUser writes a new user nkey seed (from crypto/rand) to file, which
// must not exist, readable by this user only.
func makeUser(file string) ([]byte, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	seed = append(seed, '\n')
	if _, err := f.Write(seed); err != nil {
		f.Close()
		os.Remove(file)
		return nil, err
	}
	if err := f.Close(); err != nil {
		os.Remove(file)
		return nil, err
	}
	return seed, nil
}
