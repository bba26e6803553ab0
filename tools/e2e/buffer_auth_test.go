package e2e

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/spillway/spillway/pkg/kafkatest"
)

// credentialsVar names the credentials of the ingest's embedded NATS
// server (producer.wal.nats.credentials).
const credentialsVar = "SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS"

// setBufferCredentials gives every binary the tests start one nkey seed
// for the embedded NATS server (the ingest admits it, the forwarder and
// resender sign in with it), since most tests start the drains without the
// ingest's producer.wal.path, where the ingest would make its own. It
// returns the folder to remove.
func setBufferCredentials() (string, error) {
	dir, err := os.MkdirTemp("", "spillway-nats")
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "nats-user.nk")
	if err := os.WriteFile(file, newSeed(), 0o600); err != nil {
		return dir, err
	}
	return dir, os.Setenv(credentialsVar, file)
}

// newSeed is a new user nkey seed.
func newSeed() []byte {
	kp, err := nkeys.CreateUser()
	if err != nil {
		panic(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		panic(err)
	}
	return seed
}

// natsConnect connects to the ingest's embedded NATS server at addr with
// the tests' credentials, as the forwarder does.
func natsConnect(addr string) (*nats.Conn, error) {
	opt, err := nats.NkeyOptionFromSeed(os.Getenv(credentialsVar))
	if err != nil {
		return nil, err
	}
	return nats.Connect("nats://"+addr, opt)
}

// TestBufferIsLocked attacks the ingest's embedded NATS server, the
// buffer of records on their way to Kafka, as whoever reaches its port
// would: without the credentials file the ingest made at first start, a
// client can neither connect (to read the records, purge the stream or
// publish a forged one for the forwarder to carry), nor can a forwarder
// given another key drain. The forwarder that reads the file beside the
// store (the same producer.wal.path) drains the record to Kafka.
func TestBufferIsLocked(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t)
	store := t.TempDir()
	own := []string{credentialsVar + "=", "SPILLWAY_PRODUCER_WAL_PATH=" + store} // the ingest makes them
	in := startIngest(t, broker, append([]string{"SPILLWAY_PRODUCER_WAL_MODE=always"}, own...)...)
	natsAddr := in.natsAddr
	const topic = "locked"
	req, _ := http.NewRequest(http.MethodPost, "http://"+in.httpAddr+"/topics/"+topic+"/messages", strings.NewReader("secret"))
	req.Header.Set("Content-Type", "text/plain")
	id := postAhead(t, req, topic, 1)[0].ID

	file := filepath.Join(store, "nats-user.nk")
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatalf("the ingest made no credentials file beside its store: %v", err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("the credentials file has mode %v, want 0600", m)
	}

	stranger := filepath.Join(t.TempDir(), "stranger.nk")
	if err := os.WriteFile(stranger, newSeed(), 0o600); err != nil {
		t.Fatal(err)
	}
	strangerKey, err := nats.NkeyOptionFromSeed(stranger)
	if err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string][]nats.Option{
		"no credentials":      nil,
		"a user and password": {nats.UserInfo("spillway", "spillway")},
		"another nkey":        {strangerKey},
	} {
		nc, err := nats.Connect("nats://"+natsAddr, append(opts, nats.NoReconnect())...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected to the buffer", name)
		} else if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: %v, want an authorization violation", name, err)
		}
	}

	// A forwarder given another key is refused, and says why.
	p := spawn(t, "spillway-forwarder",
		"SPILLWAY_KAFKA_BROKERS="+broker, "SPILLWAY_PRODUCER_WAL_LISTEN="+natsAddr,
		"SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:0", credentialsVar+"="+stranger)
	if code := p.exitCode(t, 30*time.Second); code == 0 {
		t.Errorf("a forwarder with another key exited 0")
	}
	if out := p.out.String(); !strings.Contains(out, "Authorization Violation") {
		t.Errorf("the refused forwarder does not say why:\n%s", out)
	}
	if recs := kcatConsumeMaybe(broker, topic); len(recs) != 0 {
		t.Fatalf("%d records in Kafka before a forwarder with the credentials ran", len(recs))
	}

	startForwarder(t, broker, natsAddr, own...)
	recs := kafkatest.Consume(t, broker, topic, 1, 30*time.Second)
	if len(recs) != 1 || string(recs[0].Value) != "secret" {
		t.Fatalf("Kafka holds %d records, want the one posted", len(recs))
	}
	if got, _ := kafkatest.HeaderValue(recs[0], "spillway-id"); got != id {
		t.Errorf("spillway-id %q in Kafka, want %q", got, id)
	}
}
