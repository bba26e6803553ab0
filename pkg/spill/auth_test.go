package spill_test

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
)

// writeSeed writes a new user nkey seed to a file of its own and returns
// the file.
func writeSeed(t *testing.T) string {
	t.Helper()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "stranger.nk")
	require.NoError(t, os.WriteFile(file, seed, 0o600))
	return file
}

// An attacker who reaches the embedded server's port (the forwarder's and
// resender's way in) must not be able to read, purge or forge buffered
// records: without the credentials file the connection itself is refused.
func TestEmbeddedServerRefusesStrangers(t *testing.T) {
	c := walConfig(t)
	srv, err := embeddednats.Start(c, discard)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, js, err := spill.Connect(t.Context(), c, srv, "ingest", discard)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	b := spill.NewBuffer(js, c)
	res := b.Publish(t.Context(), spill.Spilled, []record.Record{{ID: "secret", Topic: "t", Value: []byte("card 4111"), Partition: record.AnyPartition}}, "unavailable")
	require.Equal(t, record.Buffered, res[0].Outcome, res[0].Err)
	url := srv.ClientURL()

	stranger := writeSeed(t)
	wrongSeed, err := nats.NkeyOptionFromSeed(stranger)
	require.NoError(t, err)
	for name, opts := range map[string][]nats.Option{
		"no credentials":      nil,
		"a user and password": {nats.UserInfo("spillway", "spillway")},
		"a token":             {nats.Token("spillway")},
		"another nkey":        {wrongSeed},
	} {
		t.Run(name, func(t *testing.T) {
			nc, err := nats.Connect(url, append(opts, nats.NoReconnect())...)
			if nc != nil {
				nc.Close()
			}
			require.ErrorIs(t, err, nats.ErrAuthorization)
		})
	}

	t.Run("the credentials file", func(t *testing.T) {
		file := filepath.Join(c.Path, spill.CredentialsFile)
		fi, err := os.Stat(file)
		require.NoError(t, err, "made at first start beside the store")
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "readable by the service's user only")
		opt, err := nats.NkeyOptionFromSeed(file)
		require.NoError(t, err)
		nc, err := nats.Connect(url, opt)
		require.NoError(t, err, "whoever holds the file (the forwarder and resender) signs in")
		nc.Close()
	})
}

// The credentials outlive a restart (the drains keep theirs), and
// producer.wal.nats.credentials can name a seed of the operator's own, which
// then is the only one admitted.
func TestEmbeddedCredentials(t *testing.T) {
	t.Run("kept across restarts", func(t *testing.T) {
		c := walConfig(t)
		srv, err := embeddednats.Start(c, discard)
		require.NoError(t, err)
		before, err := os.ReadFile(spill.EmbeddedCredentials(c))
		require.NoError(t, err)
		srv.Shutdown()
		srv.WaitForShutdown()
		srv, err = embeddednats.Start(c, discard)
		require.NoError(t, err)
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		after, err := os.ReadFile(spill.EmbeddedCredentials(c))
		require.NoError(t, err)
		assert.Equal(t, before, after)
		c.Listen = srv.Addr().String()
		nc, _, err := spill.Dial(c, nil, "drain", discard)
		require.NoError(t, err, "a drain with the same configuration connects over the listener")
		nc.Close()
	})
	t.Run("given in the configuration", func(t *testing.T) {
		file := writeSeed(t)
		c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS="+file)
		srv, err := embeddednats.Start(c, discard)
		require.NoError(t, err)
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		assert.NoFileExists(t, filepath.Join(c.Path, spill.CredentialsFile), "no second key is made")
		c.Listen = srv.Addr().String()
		nc, _, err := spill.Dial(c, nil, "drain", discard)
		require.NoError(t, err)
		nc.Close()
		made := walConfig(t) // a seed made by another ingest is refused
		srv2, err := embeddednats.Start(made, discard)
		require.NoError(t, err)
		srv2.Shutdown()
		srv2.WaitForShutdown()
		wrong, err := nats.NkeyOptionFromSeed(spill.EmbeddedCredentials(made))
		require.NoError(t, err)
		_, err = nats.Connect(srv.ClientURL(), wrong, nats.NoReconnect())
		require.ErrorIs(t, err, nats.ErrAuthorization)
	})
	t.Run("a configured file that is missing", func(t *testing.T) {
		c := walConfig(t, "SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS="+filepath.Join(t.TempDir(), "missing.nk"))
		_, err := embeddednats.Start(c, discard)
		require.ErrorContains(t, err, "missing.nk")
	})
}

// The embedded server listens on loopback unless told otherwise.
func TestEmbeddedServerListensOnLoopback(t *testing.T) {
	c, err := config.Parse(nil, nil)
	require.NoError(t, err)
	host, _, err := net.SplitHostPort(c.Producer.WAL.Listen)
	require.NoError(t, err)
	assert.True(t, net.ParseIP(host).IsLoopback(), "producer.wal.listen defaults to %s", c.Producer.WAL.Listen)
}
