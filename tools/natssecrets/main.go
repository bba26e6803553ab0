// Command natssecrets makes the secrets of the compose stack's NATS
// (docker-compose.yaml, deploy/compose/nats.conf), which no one commits:
// an nkey per Spillway service (ingest.nk, forwarder.nk, resender.nk: the
// seeds the services sign in with; nats.env: the public keys NATS admits)
// and a CA with a certificate for the host "nats" (tls/ca.crt, tls.crt,
// tls.key). `make compose-secrets` runs it; it keeps what exists, so run
// it again after deleting a file to replace that secret (docs/security.md).
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nkeys"
)

func main() {
	out := flag.String("out", "deploy/compose/secrets", "folder to write the secrets to")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "natssecrets:", err)
		os.Exit(1)
	}
}

// Files are readable by everyone (0644) in a folder only its owner can
// enter (0700): the containers, which run as other users, read them
// through bind mounts; other users of the machine cannot reach them.
const fileMode = 0o644

func run(out string) error {
	if err := os.MkdirAll(filepath.Join(out, "tls"), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(out, 0o700); err != nil {
		return err
	}
	envFile := filepath.Join(out, "nats.env")
	var env []string
	for _, svc := range []string{"ingest", "forwarder", "resender"} {
		pub, err := userKey(filepath.Join(out, svc+".nk"))
		if err != nil {
			return err
		}
		env = append(env, "SPILLWAY_"+strings.ToUpper(svc)+"_NKEY="+pub)
	}
	if err := os.WriteFile(envFile, []byte(strings.Join(env, "\n")+"\n"), fileMode); err != nil {
		return err
	}
	return certificates(filepath.Join(out, "tls"))
}

// userKey returns the public key of the user nkey seed in file, making
// the seed first when the file does not exist.
func userKey(file string) (string, error) {
	seed, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return "", err
		}
		if seed, err = kp.Seed(); err != nil {
			return "", err
		}
		if err := os.WriteFile(file, append(seed, '\n'), fileMode); err != nil {
			return "", err
		}
	} else if err != nil {
		return "", err
	}
	kp, err := nkeys.ParseDecoratedNKey(seed)
	if err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	return kp.PublicKey()
}

// certificates writes a CA and a certificate it signed for NATS (host
// "nats", and localhost), unless tls.crt exists.
func certificates(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "tls.crt")); err == nil {
		return nil
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: "Spillway compose NATS CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano() + 1), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		DNSNames: []string{"nats", "localhost"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	for name, block := range map[string]*pem.Block{
		"ca.crt":  {Type: "CERTIFICATE", Bytes: caDER},
		"tls.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
		"tls.crt": {Type: "CERTIFICATE", Bytes: der}, // last: its presence says the set is complete
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), fileMode); err != nil {
			return err
		}
	}
	return nil
}
