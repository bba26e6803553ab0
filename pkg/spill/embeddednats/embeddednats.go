// Package embeddednats runs the ingest's JetStream buffer inside its
// process when no external NATS is configured. It is apart from package
// spill because it links the NATS server (9 MB of a stripped binary): the
// ingest imports it, the forwarder and resender, which only connect, do
// not.
package embeddednats

import (
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/spillway/spillway/pkg/config"
)

// Start starts a NATS server with JetStream inside this process, storing
// under c.Path, with a client listener on c.Listen for the forwarder and
// resender. spill.Connect reaches it in-process.
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
	opts := &server.Options{
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
