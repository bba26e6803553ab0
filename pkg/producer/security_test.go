package producer

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/securitytest"
)

func produceOne(t *testing.T, p *Producer, topic string) record.Result {
	t.Helper()
	return p.Produce(t.Context(), []record.Record{{Topic: topic, Value: []byte("secure"), Partition: record.AnyPartition}})[0]
}

func TestTLS(t *testing.T) {
	ca := securitytest.NewCA(t, "kfake test CA")
	broker := ca.Issue(t, "kfake test broker", securitytest.LeafOptions{})
	_, addr := kafkatest.NewCluster(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{broker.TLS}, MinVersion: tls.VersionTLS12}))

	p := newProducer(t, addr, "SPILLWAY_KAFKA_SECURITY_PROTOCOL=ssl", "SPILLWAY_KAFKA_SSL_CA_LOCATION="+ca.CertFile)
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
			// Spillway's own credentials are not the record's fault: the
			// ingest spills it, a drain keeps it buffered.
			reason := record.ReasonOf(res.Err)
			assert.True(t, reason.Retriable() && !reason.InRecord(), "reason %s (%v): retriable, never a dead letter", reason, res.Err)
		})
	}
}
