// Command devnats is one node of the development JetStream cluster that
// `make run-cluster` starts three of: a NATS server (built from
// nats-server's own module, nothing downloaded) with JetStream, a client
// port, a monitoring port and routes to its peers on loopback. It admits
// only the user whose nkey seed is in -credentials, as the ingest's
// embedded server does. It runs until SIGINT or SIGTERM; the e2e tests
// kill -9 it to lose a node for real, and devrun starts it again on its
// store.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/spillway/spillway/pkg/spill/embeddednats"
)

func main() { os.Exit(run()) }

func run() int {
	name := flag.String("name", "nats-1", "server name, unique in the cluster")
	cluster := flag.String("cluster", "spillway-dev", "cluster name")
	port := flag.Int("port", 4222, "client port, on 127.0.0.1")
	monitor := flag.Int("monitor", 8222, "monitoring port (/varz, /jsz), on 127.0.0.1")
	routePort := flag.Int("route-port", 6222, "cluster route port, on 127.0.0.1")
	routes := flag.String("routes", "", "comma-separated route URLs of the peers, such as nats://127.0.0.1:6223")
	store := flag.String("store", "data/nats-1", "JetStream store folder")
	creds := flag.String("credentials", "", "file with the nkey seed of the one user admitted (required)")
	flag.Parse()

	user, err := publicKey(*creds)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devnats:", err)
		return 2
	}
	opts := &server.Options{
		ServerName:         *name,
		Host:               "127.0.0.1",
		Port:               *port,
		HTTPHost:           "127.0.0.1",
		HTTPPort:           *monitor,
		Nkeys:              []*server.NkeyUser{{Nkey: user}},
		JetStream:          true,
		StoreDir:           *store,
		JetStreamMaxMemory: -1,
		JetStreamMaxStore:  -1,
		MaxPayload:         64 << 20,
		NoSigs:             true,
		Logtime:            true, // devrun interleaves these lines with the services' timed JSON
		Cluster: server.ClusterOpts{
			Name: *cluster,
			Host: "127.0.0.1",
			Port: *routePort,
		},
	}
	if *routes != "" {
		opts.Routes = server.RoutesFromStr(*routes)
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devnats:", err)
		return 1
	}
	srv.ConfigureLogger()
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		fmt.Fprintf(os.Stderr, "devnats: %s did not become ready within 30s\n", *name)
		srv.Shutdown()
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
	case <-waitShutdown(srv):
		return 1
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	return 0
}

func waitShutdown(srv *server.Server) <-chan struct{} {
	done := make(chan struct{})
	go func() { srv.WaitForShutdown(); close(done) }()
	return done
}

// publicKey reads the user nkey seed in file and returns its public key.
func publicKey(file string) (string, error) {
	if file == "" {
		return "", fmt.Errorf("-credentials is required: the file with the user nkey seed (SU...) the services sign in with")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("credentials: %w", err)
	}
	return embeddednats.UserPublicKey(file, b)
}
