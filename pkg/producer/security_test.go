package producer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/securitytest"
)

// selfSignedCert makes a certificate for 127.0.0.1 and writes it, as the
// CA file a client trusts, to a temporary folder.
func selfSignedCert(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kfake test broker"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caFile
}

func produceOne(t *testing.T, p *Producer, topic string) record.Result {
	t.Helper()
	return p.Produce(t.Context(), []record.Record{{Topic: topic, Value: []byte("secure"), Partition: record.AnyPartition}})[0]
}

func TestTLS(t *testing.T) {
	cert, caFile := selfSignedCert(t)
	_, addr := kafkatest.NewCluster(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))

	p := newProducer(t, addr, "SPILLWAY_KAFKA_SECURITY_PROTOCOL=ssl", "SPILLWAY_KAFKA_SSL_CA_LOCATION="+caFile)
	res := produceOne(t, p, "tls")
	require.Equal(t, record.Delivered, res.Outcome, res.Err)

	untrusted := newProducer(t, addr, "SPILLWAY_KAFKA_SECURITY_PROTOCOL=ssl", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000")
	res = produceOne(t, untrusted, "tls")
	assert.Equal(t, record.Failed, res.Outcome, "a broker certificate from an unknown CA is refused")
}

func TestSASL(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			password := securitytest.Secret(t, "sasl-pw-"+mech)
			_, addr := kafkatest.NewCluster(t, kfake.EnableSASL(), kfake.Superuser(mech, "spill", password))
			p := newProducer(t, addr, "SPILLWAY_KAFKA_SECURITY_PROTOCOL=sasl_plaintext",
				"SPILLWAY_KAFKA_SASL_MECHANISM="+mech, "SPILLWAY_KAFKA_SASL_USERNAME=spill", "SPILLWAY_KAFKA_SASL_PASSWORD="+password)
			res := produceOne(t, p, "sasl")
			require.Equal(t, record.Delivered, res.Outcome, res.Err)

			wrong := newProducer(t, addr, "SPILLWAY_KAFKA_SECURITY_PROTOCOL=sasl_plaintext",
				"SPILLWAY_KAFKA_SASL_MECHANISM="+mech, "SPILLWAY_KAFKA_SASL_USERNAME=spill", "SPILLWAY_KAFKA_SASL_PASSWORD="+securitytest.Secret(t, "sasl-wrong-pw-"+mech),
				"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000")
			res = produceOne(t, wrong, "sasl")
			// kfake drops the connection on a failed login, where Kafka
			// answers SaslAuthenticationFailed first: only the failure is
			// the same.
			assert.Equal(t, record.Failed, res.Outcome, "a wrong password is refused")
		})
	}
}
