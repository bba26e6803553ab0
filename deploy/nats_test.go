package deploy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/deadletter"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// writeTLS writes a CA and a server certificate it signed (for 127.0.0.1
// and the NATS Service names) as the Secret spillway-nats-tls holds them:
// tls.crt, tls.key, ca.crt.
func writeTLS(t *testing.T, dir string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "spillway-nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames:    []string{"spillway-nats", "*.spillway-nats-headless", "localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	for name, block := range map[string]*pem.Block{
		"ca.crt":  {Type: "CERTIFICATE", Bytes: caDER},
		"tls.crt": {Type: "CERTIFICATE", Bytes: der},
		"tls.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600))
	}
}

// natsUser is a Spillway service's nkey: the seed it signs in with and
// the public key NATS admits.
type natsUser struct{ seedFile, public string }

func newUser(t *testing.T, dir, name string) natsUser {
	t.Helper()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	file := filepath.Join(dir, name+".nk")
	require.NoError(t, os.WriteFile(file, seed, 0o600))
	return natsUser{seedFile: file, public: pub}
}

// k8sNATS is the NATS of the Kubernetes overlay: its nats.conf and the
// NATS container's environment with the Secret's values (secrets) and
// $(VAR) references resolved as the kubelet does.
func k8sNATS(t *testing.T, overlay string, secrets map[string]string) (conf string, env map[string]string) {
	t.Helper()
	env = map[string]string{}
	for _, o := range build(t, overlay) {
		switch {
		case o.Kind == "ConfigMap" && o.Name == "spillway-nats":
			cm := &corev1.ConfigMap{}
			require.NoError(t, yaml.UnmarshalStrict(o.YAML, cm))
			conf = cm.Data["nats.conf"]
		case o.Kind == "StatefulSet" && o.Name == "spillway-nats":
			ss := &appsv1.StatefulSet{}
			require.NoError(t, yaml.UnmarshalStrict(o.YAML, ss))
			for _, e := range ss.Spec.Template.Spec.Containers[0].Env {
				switch {
				case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
					ref := e.ValueFrom.SecretKeyRef
					v, ok := secrets[ref.Name+"/"+ref.Key]
					require.True(t, ok, "NATS reads %s from the Secret %s, key %s, which the test does not know", e.Name, ref.Name, ref.Key)
					env[e.Name] = v
				case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
					env[e.Name] = "spillway-nats-0"
				default:
					env[e.Name] = regexp.MustCompile(`\$\(([A-Z0-9_]+)\)`).ReplaceAllStringFunc(e.Value, func(ref string) string {
						return env[ref[2:len(ref)-1]]
					})
				}
			}
		}
	}
	require.NotEmpty(t, conf, "the %s overlay has the ConfigMap spillway-nats with nats.conf", overlay)
	return conf, env
}

// TestNATSIsLocked reads the Kubernetes NATS configuration with the NATS
// server's own parser, with the Secrets' values a cluster would give:
// every client and route must authenticate, over TLS; no user is let in
// without credentials; each Spillway service has a user of its own with a
// list of what it may publish, not everything.
func TestNATSIsLocked(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		t.Run(overlay, func(t *testing.T) {
			dir := t.TempDir()
			writeTLS(t, dir)
			users := map[string]natsUser{}
			secrets := map[string]string{"spillway-nats-auth/route-password": hex.EncodeToString([]byte("a route password"))}
			for _, svc := range []string{"ingest", "forwarder", "resender"} {
				users[svc] = newUser(t, dir, svc)
				secrets["spillway-nats-auth/"+svc+".pub"] = users[svc].public
			}
			conf, env := k8sNATS(t, overlay, secrets)
			assert.NotContains(t, conf, "no_auth_user", "no user is admitted without credentials")
			assert.Contains(t, conf, "authorization", "cluster routes authenticate")
			assert.Contains(t, conf, "accounts", "clients sign in to an account")

			opts := loadNATSConf(t, conf, env, dir)
			assert.Empty(t, opts.NoAuthUser)
			assert.NotNil(t, opts.TLSConfig, "clients speak TLS")
			assert.Empty(t, opts.Users, "no user with a password: each service has an nkey")
			require.Len(t, opts.Nkeys, 3, "a user per service")
			admitted := map[string]*server.NkeyUser{}
			for _, u := range opts.Nkeys {
				admitted[u.Nkey] = u
			}
			for svc, u := range users {
				nu := admitted[u.public]
				require.NotNil(t, nu, "the %s's key is admitted", svc)
				require.NotNil(t, nu.Permissions, "the %s may do only what it needs", svc)
				require.NotNil(t, nu.Permissions.Publish, svc)
				assert.NotEmpty(t, nu.Permissions.Publish.Allow, svc)
				assert.NotContains(t, nu.Permissions.Publish.Allow, ">", "the %s may not publish everywhere", svc)
				assert.NotContains(t, nu.Permissions.Publish.Allow, "$JS.API.>", "the %s may not use every JetStream API", svc)
				require.NotNil(t, nu.Account, svc)
				assert.Equal(t, "SPILLWAY", nu.Account.Name, svc)
			}
			assert.Equal(t, "spillway-route", opts.Cluster.Username)
			assert.Equal(t, secrets["spillway-nats-auth/route-password"], opts.Cluster.Password, "routes authenticate with the Secret's password")
			assert.NotNil(t, opts.Cluster.TLSConfig, "routes speak TLS")
			require.Len(t, opts.Routes, 3)
			for _, r := range opts.Routes {
				require.NotNil(t, r.User, "the route %s presents credentials", r.Redacted())
				p, _ := r.User.Password()
				assert.Equal(t, "spillway-route", r.User.Username())
				assert.Equal(t, opts.Cluster.Password, p, "the route %s presents the route password", r.Redacted())
			}
		})
	}
}

// loadNATSConf writes conf with the TLS files, store and pid file under
// dir and parses it with the NATS server's parser, env set as the
// container's environment.
func loadNATSConf(t *testing.T, conf string, env map[string]string, dir string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	conf = strings.ReplaceAll(conf, "/etc/nats/tls/", dir+"/")
	conf = strings.ReplaceAll(conf, "store_dir: /data", "store_dir: "+filepath.Join(dir, "data"))
	conf = strings.ReplaceAll(conf, "/var/run/nats/", dir+"/")
	file := filepath.Join(dir, "nats.conf")
	require.NoError(t, os.WriteFile(file, []byte(conf), 0o600))
	opts, err := server.ProcessConfigFile(file)
	require.NoError(t, err, "the NATS server parses nats.conf")
	return opts
}

// TestNATSPermissions runs a NATS server with the Kubernetes nats.conf
// (one node: no routes) and checks through Spillway's own client code that
// each service can do its work with its user, and no more: the ingest
// writes records and cannot read or purge them; the forwarder drains and
// dead-letters and cannot forge a record for itself to carry; the resender
// runs the dead-letters command; a client without credentials is refused.
func TestNATSPermissions(t *testing.T) {
	dir := t.TempDir()
	writeTLS(t, dir)
	users := map[string]natsUser{}
	secrets := map[string]string{"spillway-nats-auth/route-password": "route"}
	for _, svc := range []string{"ingest", "forwarder", "resender"} {
		users[svc] = newUser(t, dir, svc)
		secrets["spillway-nats-auth/"+svc+".pub"] = users[svc].public
	}
	conf, env := k8sNATS(t, "prod", secrets)
	opts := loadNATSConf(t, conf, env, dir)
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	require.NoError(t, err)
	go srv.Start()
	require.True(t, srv.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })

	walEnv := func(svc string) []string {
		return []string{
			"SPILLWAY_PRODUCER_WAL_NATS_URLS=" + srv.ClientURL(),
			"SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS=" + users[svc].seedFile,
			"SPILLWAY_PRODUCER_WAL_NATS_TLS_CA=" + filepath.Join(dir, "ca.crt"),
		}
	}
	connect := func(svc string) (config.WAL, jetstream.JetStream) {
		t.Helper()
		c, err := config.Parse(nil, walEnv(svc))
		require.NoError(t, err)
		nc, js, err := spill.Connect(t.Context(), c.Producer.WAL, nil, "spillway-"+svc, discard)
		require.NoError(t, err, "the %s connects and creates or updates the stream", svc)
		t.Cleanup(nc.Close)
		return c.Producer.WAL, js
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("strangers", func(t *testing.T) {
		u, err := url.Parse(srv.ClientURL())
		require.NoError(t, err)
		for name, o := range map[string][]nats.Option{
			"no credentials":  {nats.RootCAs(filepath.Join(dir, "ca.crt"))},
			"a route's login": {nats.RootCAs(filepath.Join(dir, "ca.crt")), nats.UserInfo("spillway-route", "route")},
		} {
			nc, err := nats.Connect("tls://"+u.Host, append(o, nats.NoReconnect())...)
			if nc != nil {
				nc.Close()
			}
			assert.ErrorIs(t, err, nats.ErrAuthorization, name)
		}
		nc, err := nats.Connect("nats://"+u.Host, nats.NoReconnect())
		if nc != nil {
			nc.Close()
		}
		assert.Error(t, err, "a client without TLS is refused")
	})

	wal, ingestJS := connect("ingest")
	subjects := spill.Subjects{Prefix: wal.SubjectPrefix}
	buffer := spill.NewBuffer(ingestJS, wal)
	rec := record.Record{ID: "r1", Topic: "orders", Value: []byte("v"), Partition: record.AnyPartition}
	for _, kind := range []spill.Kind{spill.WriteAhead, spill.Spilled, spill.Mirror("dr")} {
		res := buffer.Publish(t.Context(), kind, []record.Record{rec}, "test")
		require.Equal(t, record.Buffered, res[0].Outcome, "the ingest buffers %s records: %v", kind, res[0].Err)
	}
	assert.Positive(t, buffer.Fill(t.Context()), "the ingest reads how full the stream is")
	t.Run("the ingest cannot read or purge", func(t *testing.T) {
		s, err := ingestJS.Stream(t.Context(), wal.Stream)
		require.NoError(t, err)
		assert.Error(t, s.Purge(short()), "purge")
		_, err = s.CreateOrUpdateConsumer(short(), jetstream.ConsumerConfig{Durable: "forwarder", FilterSubject: subjects.All(spill.WriteAhead)})
		assert.Error(t, err, "a consumer")
		_, err = s.GetMsg(short(), 1)
		assert.Error(t, err, "a message")
	})

	_, fwdJS := connect("forwarder")
	stream, err := fwdJS.Stream(t.Context(), wal.Stream)
	require.NoError(t, err)
	consumer, err := stream.CreateOrUpdateConsumer(t.Context(), jetstream.ConsumerConfig{
		Durable: "forwarder", FilterSubject: subjects.All(spill.WriteAhead), AckPolicy: jetstream.AckExplicitPolicy,
	})
	require.NoError(t, err, "the forwarder makes its consumer")
	batch, err := consumer.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	require.NoError(t, err)
	var got int
	for m := range batch.Messages() {
		r, err := spill.Decode(m.Data())
		require.NoError(t, err)
		assert.Equal(t, rec.ID, r.ID)
		require.NoError(t, m.DoubleAck(t.Context()), "the forwarder acks")
		got++
	}
	require.NoError(t, batch.Error())
	assert.Equal(t, 1, got, "the forwarder reads the record written ahead")
	dl, err := spill.Encode(&rec, "too_large")
	require.NoError(t, err)
	msg := nats.NewMsg(subjects.For(spill.DeadLetter, "orders"))
	msg.Data = dl
	msg.Header.Set(spill.HeaderReason, "too_large: test")
	_, err = fwdJS.PublishMsg(t.Context(), msg)
	require.NoError(t, err, "the forwarder dead-letters")
	t.Run("the forwarder cannot forge or purge", func(t *testing.T) {
		_, err := fwdJS.Publish(short(), subjects.For(spill.WriteAhead, "orders"), dl)
		assert.Error(t, err, "a forged record written ahead")
		assert.Error(t, stream.Purge(short()), "purge")
		_, err = stream.CreateOrUpdateConsumer(short(), jetstream.ConsumerConfig{Durable: "resender", FilterSubject: subjects.All(spill.Spilled)})
		assert.Error(t, err, "the resender's consumer")
	})

	connect("resender")
	var out, errOut bytes.Buffer
	code := deadletter.Command("spillway-resender", []string{"move", "-all"}, walEnv("resender"), &out, &errOut)
	require.Equal(t, 0, code, "the resender's dead-letters command moves dead letters back: %s", errOut.String())
	out.Reset()
	errOut.Reset()
	code = deadletter.Command("spillway-resender", []string{"list", "-json"}, walEnv("ingest"), &out, &errOut)
	assert.NotEqual(t, 0, code, "the ingest's user cannot run the dead-letters command: %s", out.String())
}

// TestComposeNATSIsLocked: the compose stack's NATS reads a nats.conf with
// the same accounts and permissions as Kubernetes, TLS and no user without
// credentials; each Spillway service signs in with its own nkey from a
// compose secret made by `make compose-secrets`, which git ignores.
func TestComposeNATSIsLocked(t *testing.T) {
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yaml"}, cli.WithWorkingDirectory(".."), cli.WithOsEnv)
	require.NoError(t, err)
	p, err := opts.LoadProject(context.Background())
	require.NoError(t, err)
	nats, err := p.GetService("nats")
	require.NoError(t, err)
	var confFile string
	for _, v := range nats.Volumes {
		if v.Target == "/etc/nats/nats.conf" {
			confFile = v.Source
		}
	}
	require.Contains(t, nats.Command, "/etc/nats/nats.conf", "NATS reads the mounted nats.conf")
	require.NotEmpty(t, confFile, "NATS mounts a nats.conf")
	b, err := os.ReadFile(confFile)
	require.NoError(t, err)
	conf := string(b)
	assert.NotContains(t, conf, "no_auth_user")

	dir := t.TempDir()
	writeTLS(t, dir)
	users := map[string]natsUser{}
	env := map[string]string{}
	k8sSecrets := map[string]string{"spillway-nats-auth/route-password": "route"}
	for _, svc := range []string{"ingest", "forwarder", "resender"} {
		users[svc] = newUser(t, dir, svc)
		env["SPILLWAY_"+strings.ToUpper(svc)+"_NKEY"] = users[svc].public
		k8sSecrets["spillway-nats-auth/"+svc+".pub"] = users[svc].public
	}
	compose := loadNATSConf(t, conf, env, dir)
	assert.Empty(t, compose.NoAuthUser)
	assert.NotNil(t, compose.TLSConfig, "clients speak TLS")
	assert.Empty(t, compose.Users)
	k8sConf, k8sEnv := k8sNATS(t, "prod", k8sSecrets)
	k8sDir := t.TempDir()
	writeTLS(t, k8sDir)
	k8s := loadNATSConf(t, k8sConf, k8sEnv, k8sDir)
	perms := func(o *server.Options) map[string]*server.Permissions {
		m := map[string]*server.Permissions{}
		for _, u := range o.Nkeys {
			m[u.Nkey] = u.Permissions
		}
		return m
	}
	require.Len(t, compose.Nkeys, 3, "a user per service")
	assert.Equal(t, perms(k8s), perms(compose), "compose and Kubernetes give each service the same permissions")

	ignore, err := os.ReadFile("../.gitignore")
	require.NoError(t, err)
	for _, svc := range []string{"ingest", "forwarder", "resender"} {
		s, err := p.GetService(svc)
		require.NoError(t, err)
		creds := s.Environment["SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS"]
		require.NotNil(t, creds, "%s signs in to NATS", svc)
		assert.Equal(t, "/run/secrets/nats-"+svc, *creds, "%s reads its own nkey", svc)
		require.NotNil(t, s.Environment["SPILLWAY_PRODUCER_WAL_NATS_TLS_CA"], "%s verifies NATS's certificate", svc)
		var names []string
		for _, sec := range s.Secrets {
			names = append(names, sec.Source)
		}
		assert.Contains(t, names, "nats-"+svc)
		for _, other := range []string{"ingest", "forwarder", "resender"} {
			if other != svc {
				assert.NotContains(t, names, "nats-"+other, "%s gets the key of %s", svc, other)
			}
		}
		file := p.Secrets["nats-"+svc].File
		rel, err := filepath.Rel(filepath.Join(p.WorkingDir, "deploy", "compose", "secrets"), file)
		require.NoError(t, err)
		assert.False(t, strings.HasPrefix(rel, ".."), "the %s's key is made under deploy/compose/secrets: %s", svc, file)
	}
	assert.Contains(t, strings.Split(string(ignore), "\n"), "/deploy/compose/secrets/", "git ignores the compose secrets")
}
