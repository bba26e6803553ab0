package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

// The secrets made are the ones NATS and the services need, each public
// key in nats.env matches the seed of its service, and a second run keeps
// them (so that running it again does not lock the services out).
func TestSecrets(t *testing.T) {
	out := filepath.Join(t.TempDir(), "secrets")
	if err := run(out); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(filepath.Join(out, "nats.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"ingest", "forwarder", "resender"} {
		seed, err := os.ReadFile(filepath.Join(out, svc+".nk"))
		if err != nil {
			t.Fatal(err)
		}
		kp, err := nkeys.ParseDecoratedNKey(seed)
		if err != nil {
			t.Fatalf("%s.nk: %v", svc, err)
		}
		pub, _ := kp.PublicKey()
		if want := "SPILLWAY_" + strings.ToUpper(svc) + "_NKEY=" + pub; !strings.Contains(string(first), want+"\n") {
			t.Errorf("nats.env lacks %s:\n%s", want, first)
		}
	}
	for _, f := range []string{"tls/ca.crt", "tls/tls.crt", "tls/tls.key"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the folder: %v %v, want mode 0700", fi.Mode().Perm(), err)
	}
	if err := run(out); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(filepath.Join(out, "nats.env"))
	if string(first) != string(second) {
		t.Errorf("a second run changed the keys:\n%s\n%s", first, second)
	}
}
