package config

import (
	"maps"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestKafkaAmbassadorExampleLoads(t *testing.T) {
	c, err := Load("testdata/kafka-ambassador.yaml", nil)
	require.NoError(t, err)

	assert.Equal(t, "0.0.0.0:18080", c.Server.HTTP.Listen)
	assert.Equal(t, "0.0.0.0:18282", c.Server.GRPC.Listen)
	assert.Equal(t, "0.0.0.0:28080", c.Server.Monitoring.Listen)
	assert.Equal(t, Breaker{Interval: 0, Timeout: 20 * time.Second, Fails: 5, Requests: 3,
		SlowCall: 2 * time.Second, FailureRate: 0.5, MinCalls: 20, MaxWait: 4 * time.Second}, c.Producer.CB)
	assert.Equal(t, Resend{Period: 33 * time.Second, RateLimit: 10000}, c.Producer.Resend)
	assert.Equal(t, ModeFallback, c.Producer.WAL.Mode)
	assert.Equal(t, "/data/wal", c.Producer.WAL.Path)
	assert.Equal(t, []string{"always_wal"}, c.Producer.WAL.AlwaysTopics)
	assert.Equal(t, []string{"never_wal_topics"}, c.Producer.WAL.DisableTopics)

	assert.Equal(t, []string{"kafka.address.com:9092"}, c.Kafka.Brokers)
	assert.False(t, c.Kafka.UsingDevBroker)
	assert.Equal(t, CompressionGzip, c.Kafka.Compression)
	assert.Equal(t, 100000, c.Kafka.BatchSize)
	// Its 60000 ms against the 60 s write timeout is lowered, with a
	// warning, so that the file still loads (issue 14).
	assert.Equal(t, 55*time.Second, c.Kafka.MessageTimeout)
	assert.Equal(t, []string{"kafka.message.timeout.ms (1m0s) leaves no time under server.http.write_timeout (1m0s) to spill a record that timed out (producer.wal.publish_timeout 5s): the client would be cut off, retry, and the record arrive twice; kafka.message.timeout.ms is lowered to 55s"}, c.Warnings)
	assert.Equal(t, 10*time.Second, c.Kafka.SocketTimeout)
	assert.Equal(t, []string{"max.in.flight.requests.per.connection"}, c.Kafka.IgnoredProperties)
}

func TestDefaults(t *testing.T) {
	c, err := Load("", nil)
	require.NoError(t, err)
	assert.Equal(t, ":18080", c.Server.HTTP.Listen)
	assert.Equal(t, ":18282", c.Server.GRPC.Listen)
	assert.Equal(t, ":28080", c.Server.Monitoring.Listen)
	assert.Equal(t, []string{DevBroker}, c.Kafka.Brokers)
	assert.True(t, c.Kafka.UsingDevBroker)
	assert.Equal(t, -1, c.Kafka.RequiredAcks)
	assert.Equal(t, time.Millisecond, c.Kafka.Linger)
	assert.Equal(t, 3, c.Kafka.MaxAttempts)
	assert.Equal(t, 1000000, c.Kafka.MaxMessageBytes)
	assert.Equal(t, CompressionSnappy, c.Kafka.Compression)
	assert.True(t, c.Kafka.AutoCreateTopics)
	assert.Empty(t, c.Kafka.IgnoredProperties)
}

func TestEnvironmentOverrides(t *testing.T) {
	c, err := Parse([]byte("kafka:\n  brokers: [a:9092]\n  acks: 1\n"), []string{
		"SPILLWAY_KAFKA_BROKERS=b:9092, c:9092",
		"SPILLWAY_PRODUCER_WAL_MODE=always",
		"SPILLWAY_PRODUCER_RESEND_RATE_LIMIT=250",
		"SPILLWAY_PRODUCER_WAL_DISABLE_TOPICS=orders,payments",
		"SPILLWAY_KAFKA_COMPRESSION_CODEC=zstd",
		"SPILLWAY_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"OTHER_VARIABLE=ignored",
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"b:9092", "c:9092"}, c.Kafka.Brokers)
	assert.Equal(t, ModeAlways, c.Producer.WAL.Mode)
	assert.Equal(t, 250.0, c.Producer.Resend.RateLimit)
	assert.Equal(t, []string{"orders", "payments"}, c.Producer.WAL.DisableTopics)
	assert.Equal(t, CompressionZstd, c.Kafka.Compression)
	assert.Equal(t, 1, c.Kafka.RequiredAcks, "file value kept where no variable overrides it")
	assert.Equal(t, "127.0.0.1:0", c.Server.HTTP.Listen)
}

func TestNestedKafkaPropertiesAndBootstrapServers(t *testing.T) {
	c, err := Parse([]byte("kafka:\n  bootstrap.servers: x:1,y:2\n  linger:\n    ms: 20\n"), nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"x:1", "y:2"}, c.Kafka.Brokers)
	assert.Equal(t, 20*time.Millisecond, c.Kafka.Linger)
}

func TestInvalidConfiguration(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		env     []string
		wantErr []string
	}{
		{"unknown key", "server:\n  htp:\n    listen: x\n", nil, []string{`unknown configuration key "server.htp.listen"`}},
		{"unknown top-level key", "producers:\n  wal: {}\n", nil, []string{`unknown configuration key "producers.wal"`}},
		{"bad duration", "producer:\n  cb:\n    timeout: soon\n", nil, []string{`producer.cb.timeout: "soon" is not a duration`}},
		{"duration without unit", "producer:\n  resend:\n    period: 33\n", nil, []string{`producer.resend.period: 33 has no unit`}},
		{"negative rate", "producer:\n  resend:\n    rate_limit: -5\n", nil, []string{`producer.resend.rate_limit: -5 is negative`}},
		{"unknown mode", "producer:\n  wal:\n    mode: sometimes\n", nil, []string{`producer.wal.mode: "sometimes" is not allowed; want one of fallback, always, disable`}},
		{"zero fails", "producer:\n  cb:\n    fails: 0\n", nil, []string{`producer.cb.fails: 0 is not allowed; want a whole number of 1 or more`}},
		{"bad listen", "server:\n  http:\n    listen: localhost\n", nil, []string{`server.http.listen: "localhost" is not a listen address`}},
		{"topic in both lists", "producer:\n  wal:\n    always_topics: [a]\n    disable_topics: [a]\n", nil, []string{`topic "a" is also in producer.wal.disable_topics`}},
		{"invalid topic in list", "producer:\n  wal:\n    always_topics: [\"bad topic\"]\n", nil, []string{`producer.wal.always_topics: invalid topic name "bad topic"`}},
		{"bad compression", "kafka:\n  compression.codec: brotli\n", nil, []string{`kafka.compression.codec: "brotli" is not allowed; want one of none, gzip, snappy, lz4, zstd`}},
		{"bad partitioner", "kafka:\n  partitioner: Murmur2\n", nil, []string{`kafka.partitioner: "Murmur2" is not allowed; want one of murmur2_random, murmur2, consistent_random, consistent, random`}},
		{"bad acks", "kafka:\n  acks: 2\n", nil, []string{`kafka.acks: "2" is not allowed; want all, -1, 1 or 0`}},
		{"bad bool", "producer:\n  wal:\n    in_memory: maybe\n", nil, []string{`producer.wal.in_memory: "maybe" is not allowed; want true or false`}},
		{"sasl without user", "kafka:\n  security.protocol: sasl_ssl\n", nil, []string{`kafka.sasl.username: is empty`}},
		{"bad log level", "global:\n  log:\n    level: loud\n", nil, []string{`global.log.level: "loud" is not allowed; want one of debug, info, warn, error`}},
		{"bad env value", "", []string{"SPILLWAY_PRODUCER_CB_TIMEOUT=forever"}, []string{`producer.cb.timeout: "forever" is not a duration`}},
		{"two errors at once", "producer:\n  cb:\n    timeout: x\n    fails: -1\n", nil, []string{"producer.cb.timeout", "producer.cb.fails"}},
		{"malformed yaml", "server: [\n", nil, []string{"parse configuration file"}},
		{"api key not hashed", "security:\n  api_keys:\n    - {principal: a, sha256: plaintext-key}\n", nil, []string{"security.api_keys[0]: want {principal: NAME, sha256: the 64 hex digits"}},
		{"scram user with a password", "security:\n  scram_users:\n    - {principal: a, mechanism: SCRAM-SHA-256, password: secret}\n", nil, []string{"security.scram_users[0]: iterations: want 4096 or more (RFC 7677); salt: want base64; stored_key: want base64; server_key: want base64"}},
		{"scram key of the wrong size", "security:\n  scram_users:\n    - {principal: a, mechanism: SCRAM-SHA-512, salt: c2FsdA==, iterations: 4096, stored_key: c2FsdA==, server_key: c2FsdA==}\n", nil, []string{"security.scram_users[0]: stored_key: 4 bytes; want 64 for SCRAM-SHA-512; server_key: 4 bytes; want 64"}},
		{"bad topic glob", "security:\n  allow_topics: [\"[\"]\n", nil, []string{`security.allow_topics: "[" is not a valid topic pattern`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), tt.env)
			require.Error(t, err)
			for _, want := range tt.wantErr {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestUnknownEnvironmentVariableIsAWarning(t *testing.T) {
	c, err := Parse(nil, []string{"SPILLWAY_PRODUCR_WAL_MODE=always", "SPILLWAY_SERVICE_HOST=10.0.0.1"})
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{
		"environment variable SPILLWAY_PRODUCR_WAL_MODE matches no configuration key and is ignored",
		"environment variable SPILLWAY_SERVICE_HOST matches no configuration key and is ignored",
	}, c.Warnings)
	assert.Equal(t, ModeFallback, c.Producer.WAL.Mode)
}

func TestEveryKeyHasAnEnvironmentVariable(t *testing.T) {
	for _, key := range Keys() {
		if key.Family {
			continue
		}
		name := EnvName(key.Name)
		assert.True(t, strings.HasPrefix(name, "SPILLWAY_"), name)
		c, err := Parse(nil, []string{name + "=" + "x"})
		if err == nil {
			assert.Empty(t, c.Warnings, key.Name)
		}
	}
}

// TestStreamAndSubjectPrefixErrorsNameTheirKey: a bad subject prefix was
// once reported as producer.wal.stream.
func TestStreamAndSubjectPrefixErrorsNameTheirKey(t *testing.T) {
	_, err := Parse([]byte("producer:\n  wal:\n    subject_prefix: \"a.b\"\n"), nil)
	require.Error(t, err)
	assert.Equal(t, `producer.wal.subject_prefix: "a.b" is not allowed: stream names and subject prefixes are one NATS token, without dots, spaces, * or >`, err.Error())

	_, err = Parse(nil, []string{"SPILLWAY_PRODUCER_WAL_STREAM=S P", "SPILLWAY_PRODUCER_WAL_SUBJECT_PREFIX=>"})
	require.Error(t, err)
	assert.Equal(t, `producer.wal.stream: "S P" is not allowed: stream names and subject prefixes are one NATS token, without dots, spaces, * or >`+"\n"+
		`producer.wal.subject_prefix: ">" is not allowed: stream names and subject prefixes are one NATS token, without dots, spaces, * or >`, err.Error())
}

// TestOldProducerKillTimeoutIsAcceptedWithAWarning: kafka-ambassador's
// files carry producer.old_producer_kill_timeout, which Spillway has no
// use for: it loads, its value is still checked, and the service is told
// that it has no effect.
func TestOldProducerKillTimeoutIsAcceptedWithAWarning(t *testing.T) {
	const warning = "producer.old_producer_kill_timeout is kafka-ambassador's and has no effect in Spillway; it is accepted so that kafka-ambassador's configuration loads"
	example, err := os.ReadFile("testdata/kafka-ambassador.yaml")
	require.NoError(t, err)
	withKey := strings.Replace(string(example), "producer:\n", "producer:\n  old_producer_kill_timeout: 10s\n", 1)
	require.NotEqual(t, string(example), withKey)
	c, err := Parse([]byte(withKey), nil)
	require.NoError(t, err, "kafka-ambassador's configuration with the key loads")
	assert.Contains(t, c.Warnings, warning)
	assert.Equal(t, ModeFallback, c.Producer.WAL.Mode, "the rest of the file is read")

	c, err = Parse(nil, []string{"SPILLWAY_PRODUCER_OLD_PRODUCER_KILL_TIMEOUT=0"})
	require.NoError(t, err)
	assert.Equal(t, []string{warning}, c.Warnings, "set to its default, it is still warned about")

	c, err = Parse(nil, nil)
	require.NoError(t, err)
	assert.Empty(t, c.Warnings, "not set, no warning")

	_, err = Parse([]byte("producer:\n  old_producer_kill_timeout: soon\n"), nil)
	require.Error(t, err)
	assert.Equal(t, `producer.old_producer_kill_timeout: "soon" is not a duration; want one such as "500ms", "20s" or "1m"`, err.Error())
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml", nil)
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestConfigurationReferenceMatchesCode keeps docs/configuration.md and
// the code's key table (keys.go) in step, both ways: every key and family
// of keys the code reads is in the reference's key table with the code's
// default, every key of the reference is in the code's table, and the
// same for the librdkafka properties, aliases included.
func TestConfigurationReferenceMatchesCode(t *testing.T) {
	b, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	tables := docTables(string(b))
	keys, props := tables["key"], tables["property"]
	require.NotEmpty(t, keys, "no key table in docs/configuration.md")
	require.NotEmpty(t, props, "no property table in docs/configuration.md")

	code := map[string]string{}
	for _, k := range Keys() {
		code[k.Name] = k.Default
	}
	for _, key := range slices.Sorted(maps.Keys(code)) {
		doc, ok := keys[key]
		if assert.True(t, ok, "docs/configuration.md lacks key %s", key) {
			assert.Equal(t, code[key], doc, "docs/configuration.md gives key %s another default", key)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		_, ok := code[key]
		assert.True(t, ok, "docs/configuration.md documents key %s, which the code does not read", key)
	}

	codeProps := map[string]string{}
	for _, p := range KafkaProperties() {
		codeProps[p[0]] = p[1]
	}
	for _, names := range slices.Sorted(maps.Keys(codeProps)) {
		doc, ok := props[names]
		if assert.True(t, ok, "docs/configuration.md lacks kafka property %s (with its aliases, in this order)", names) {
			assert.Equal(t, codeProps[names], doc, "docs/configuration.md gives kafka property %s another default", names)
		}
	}
	for _, names := range slices.Sorted(maps.Keys(props)) {
		_, ok := codeProps[names]
		assert.True(t, ok, "docs/configuration.md documents kafka property %s, which the code does not map", names)
	}
}

// docTables reads the tables of a reference whose first column is "key" or
// "property": the first cell's names (backticked, aliases joined with
// " / ") to the second cell (the default, without its backticks).
func docTables(doc string) map[string]map[string]string {
	out := map[string]map[string]string{}
	var table map[string]string
	for _, line := range strings.Split(doc, "\n") {
		cells := strings.Split(line, "|")
		switch {
		case !strings.HasPrefix(line, "|") || len(cells) < 4:
			table = nil
		case strings.TrimSpace(cells[1]) == "key" || strings.TrimSpace(cells[1]) == "property":
			table = map[string]string{}
			out[strings.TrimSpace(cells[1])] = table
		case table != nil && !strings.HasPrefix(line, "| ---"):
			var names []string
			for _, n := range strings.Split(cells[1], "/") {
				names = append(names, strings.Trim(strings.TrimSpace(n), "`"))
			}
			table[strings.Join(names, " / ")] = strings.Trim(strings.TrimSpace(cells[2]), "`")
		}
	}
	return out
}

func TestSecurity(t *testing.T) {
	c, err := Parse([]byte(`
security:
  require_credentials: true
  api_keys:
    - {principal: billing, sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08}
  allow_topics: [orders, "logs.*"]
  acl:
    billing: [orders]
    ops: ["logs.*"]
`), nil)
	require.NoError(t, err)
	assert.True(t, c.Security.RequireCredentials)
	assert.Equal(t, map[string]string{"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08": "billing"}, c.Security.APIKeys)
	assert.Equal(t, []string{"orders", "logs.*"}, c.Security.AllowTopics)
	assert.Equal(t, map[string][]string{"billing": {"orders"}, "ops": {"logs.*"}}, c.Security.ACL)
}

func TestServerTLSAndJWT(t *testing.T) {
	c, err := Parse([]byte(`
server:
  tls: {cert: /tls/tls.crt, key: /tls/tls.key, client_ca: /tls/ca.crt, client_auth: require, principal_from: san_uri}
security:
  jwt: {jwks_url: "https://auth.example.com/jwks.json", issuer: "https://auth.example.com/", audience: spillway}
`), nil)
	require.NoError(t, err)
	assert.Equal(t, ServerTLS{CertFile: "/tls/tls.crt", KeyFile: "/tls/tls.key", ClientCAFile: "/tls/ca.crt", ClientAuth: ClientAuthRequire, PrincipalFrom: PrincipalFromSANURI}, c.Server.TLS)
	assert.Equal(t, JWT{JWKSURL: "https://auth.example.com/jwks.json", RefreshInterval: 5 * time.Minute, Issuer: "https://auth.example.com/", Audience: "spillway", PrincipalClaim: "sub", Leeway: 30 * time.Second}, c.Security.JWT)
	assert.True(t, c.Security.JWT.Enabled())
	assert.True(t, c.Server.TLS.Enabled())
}

func TestServerTLSAndJWTErrors(t *testing.T) {
	for _, tc := range []struct {
		yaml, want string
	}{
		{`server: {tls: {cert: a.crt}}`, "server.tls.cert: and server.tls.key go together"},
		{`server: {tls: {client_ca: ca.crt, client_auth: require}}`, "server.tls.client_ca: and server.tls.client_auth need TLS on the listeners"},
		{`server: {tls: {cert: a, key: b, client_auth: require}}`, "server.tls.client_auth: require needs server.tls.client_ca"},
		{`server: {tls: {cert: a, key: b, client_ca: c}}`, "server.tls.client_ca: is set but server.tls.client_auth is none"},
		{`server: {tls: {cert: a, key: b, client_ca: c, client_auth: maybe}}`, `server.tls.client_auth: "maybe" is not allowed; want one of none, optional, require`},
		{`server: {tls: {principal_from: dn}}`, `server.tls.principal_from: "dn" is not allowed; want one of cn, san_dns, san_email, san_uri`},
		{`security: {jwt: {jwks_file: j.json}}`, "security.jwt.issuer: is empty"},
		{`security: {jwt: {jwks_file: j.json, issuer: i}}`, "security.jwt.audience: is empty"},
		{`security: {jwt: {jwks_file: j.json, jwks_url: "https://x", issuer: i, audience: a}}`, "security.jwt.jwks_file: and security.jwt.jwks_url are both set"},
		{`security: {jwt: {jwks_url: "ftp://x", issuer: i, audience: a}}`, `security.jwt.jwks_url: has scheme "ftp"; want https`},
		{`security: {jwt: {jwks_url: "http://auth.example.com/jwks", issuer: i, audience: a}}`, `security.jwt.jwks_url: is http to another host`},
	} {
		_, err := Parse([]byte(tc.yaml), nil)
		require.Error(t, err, tc.yaml)
		assert.Contains(t, err.Error(), tc.want, tc.yaml)
	}
}

func TestSecretsFromFilesAndEnvironment(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(dir+"/password", []byte("s3cret-from-file\n"), 0o600))
	c, err := Parse([]byte(`
kafka:
  brokers: [k:9092]
  security.protocol: sasl_plaintext
  sasl.mechanism: PLAIN
  sasl.username: "${env:KAFKA_USER}"
  sasl.password: "${file:`+dir+`/password}"
`), []string{"KAFKA_USER=spill"})
	require.NoError(t, err)
	assert.Equal(t, "spill", c.Kafka.SASL.Username)
	assert.Equal(t, "s3cret-from-file", c.Kafka.SASL.Password)

	_, err = Parse([]byte(`kafka: {sasl.password: "${file:`+dir+`/missing}"}`), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kafka.sasl.password: reading the secret from "+dir+"/missing: no such file or directory")
	_, err = Parse([]byte(`kafka: {sasl.password: "${env:NOPE}"}`), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kafka.sasl.password: the secret's environment variable NOPE is not set")
	_, err = Parse([]byte(`kafka: {sasl.password: "${hunter2-Pa55}"}`), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kafka.sasl.password: the value starts with ${ but is not a secret reference")
	assert.NotContains(t, err.Error(), "hunter2", "the error never repeats the value")

	c, err = Parse([]byte(`
kafka: {brokers: ["${env:BROKER}"], sasl.password: "$${literal}"}
mirrors: [{name: dr, topics: [a], kafka: {brokers: ["${env:BROKER}"]}}]
security: {api_keys: [{principal: p, sha256: "${env:HASH}"}]}
`), []string{"BROKER=k:9092", "HASH=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"})
	require.NoError(t, err)
	assert.Equal(t, []string{"k:9092"}, c.Kafka.Brokers, "inside a list")
	assert.Equal(t, []string{"k:9092"}, c.Mirrors[0].Kafka.Brokers, "inside a mirror")
	assert.Equal(t, "p", c.Security.APIKeys["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"], "inside a list of maps")
	assert.Equal(t, "${literal}", c.Kafka.SASL.Password, "$${ is a literal ${")
}

func TestGovernance(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(dir+"/pw", []byte("mirror-pw\n"), 0o600))
	c, err := Parse([]byte(`
validation:
  rules:
    - topics: ["orders", "orders.*"]
      max_bytes: 1000
      key_required: true
      headers_required: [source]
      json: true
      schema: /schemas/order.json
topic_mapping:
  - {exact: legacy-orders, to: orders}
  - {prefix: "team-a.", to: "a."}
mirrors:
  - name: dr
    topics: ["orders"]
    kafka:
      brokers: ["dr-1:9092", "dr-2:9092"]
      security.protocol: sasl_plaintext
      sasl.mechanism: PLAIN
      sasl.username: mirror
      sasl.password: "${file:`+dir+`/pw}"
`), nil)
	require.NoError(t, err)
	assert.Equal(t, []ValidationRule{{Topics: []string{"orders", "orders.*"}, MaxBytes: 1000, KeyRequired: true, HeadersRequired: []string{"source"}, JSON: true, Schema: "/schemas/order.json"}}, c.Validation)
	assert.Equal(t, []TopicMapping{{Exact: "legacy-orders", To: "orders"}, {Prefix: "team-a.", To: "a."}}, c.TopicMapping)
	require.Len(t, c.Mirrors, 1)
	assert.Equal(t, "dr", c.Mirrors[0].Name)
	assert.Equal(t, []string{"dr-1:9092", "dr-2:9092"}, c.Mirrors[0].Kafka.Brokers)
	assert.Equal(t, SASL{Mechanism: "PLAIN", Username: "mirror", Password: "mirror-pw"}, c.Mirrors[0].Kafka.SASL)
}

func TestGovernanceErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`validation: {rules: [{topics: [orders]}]}`, "validation.rules[0]: has no check"},
		{`validation: {rules: [{json: true}]}`, "validation.rules[0].topics: is empty"},
		{`validation: {rules: [{topics: ["[x"], json: true}]}`, `validation.rules[0].topics: "[x" is not a valid topic pattern`},
		{`validation: {rules: [{topics: [a], jsn: true}]}`, `validation.rules[0]: unknown field "jsn"; want topics, max_bytes, key_required, headers_required, json, schema`},
		{`validation: {rules: [{topics: [a], max_bytes: -3}]}`, `validation.rules[0].max_bytes: -3 is not allowed`},
		{`topic_mapping: [{to: x}]`, "topic_mapping[0]: want one of exact or prefix, and to"},
		{`topic_mapping: [{exact: a, prefix: b, to: x}]`, "topic_mapping[0]: want one of exact or prefix"},
		{`topic_mapping: [{exact: a, to: "b c"}]`, "topic_mapping[0].to:"},
		{`topic_mapping: [{prefix: a., to: b.}, {prefix: a., to: c.}]`, "topic_mapping[1]: prefix a. is mapped twice"},
		{`mirrors: [{name: DR, topics: [a], kafka: {brokers: [x:1]}}]`, `mirrors[0].name: "DR" is not allowed`},
		{`mirrors: [{name: dr, topics: [a]}]`, "mirrors[0].kafka.brokers: is empty; a mirror needs its own brokers"},
		{`mirrors: [{name: dr, topics: [a], kafka: {brokers: [x:1], compression.codec: rar}}]`, `mirrors[0].kafka.compression.codec: "rar" is not allowed`},
		{`mirrors: [{name: dr, kafka: {brokers: [x:1]}}, {name: dr, topics: [b], kafka: {brokers: [x:1]}}]`, `mirrors[1].name: "dr" names two mirrors`},
		{`mirrors: {name: dr}`, "mirrors: want a list"},
	} {
		_, err := Parse([]byte(tc.yaml), nil)
		require.Error(t, err, tc.yaml)
		assert.Contains(t, err.Error(), tc.want, tc.yaml)
	}
}

func TestTuneRuntime(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	TuneRuntime([]string{"GOGC=150"})
	assert.Equal(t, 100, debug.SetGCPercent(100), "GOGC in the environment is left to Go")
	limit := TuneRuntime(nil)
	assert.Equal(t, DefaultGCPercent, debug.SetGCPercent(100))
	assert.Positive(t, limit)
}

// TestTimeoutCrossChecks: the timeouts that must fit inside one another
// are checked at start, each with a message that names the keys; the pair
// kafka-ambassador's files break is lowered with a warning, the others
// refused (issue 14).
func TestTimeoutCrossChecks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     []string
		err     string // "" when it loads
		warning string
		check   func(t *testing.T, c *Config)
	}{
		{
			name:    "message timeout over the write timeout is lowered",
			env:     []string{"SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=90000"},
			warning: "kafka.message.timeout.ms (1m30s) leaves no time under server.http.write_timeout (1m0s) to spill a record that timed out (producer.wal.publish_timeout 5s): the client would be cut off, retry, and the record arrive twice; kafka.message.timeout.ms is lowered to 55s",
			check:   func(t *testing.T, c *Config) { assert.Equal(t, 55*time.Second, c.Kafka.MessageTimeout) },
		},
		{
			name: "ack wait not above the message timeout is refused",
			env:  []string{"SPILLWAY_PRODUCER_WAL_ACK_WAIT=30s"},
			err:  "producer.wal.ack_wait: 30s is not above kafka.message.timeout.ms (30s): JetStream would redeliver a drain's batch while Kafka may still take it, and its records arrive twice",
		},
		{
			name:    "max wait over the write timeout is lowered",
			env:     []string{"SPILLWAY_SERVER_HTTP_WRITE_TIMEOUT=8s", "SPILLWAY_KAFKA_MESSAGE_TIMEOUT_MS=2000"},
			warning: "producer.cb.max_wait (4s) leaves no time under server.http.write_timeout (8s) to spill the record (producer.wal.publish_timeout 5s); producer.cb.max_wait is lowered to 3s",
			check:   func(t *testing.T, c *Config) { assert.Equal(t, 3*time.Second, c.Producer.CB.MaxWait) },
		},
		{
			name: "write timeout not above the publish timeout is refused",
			env:  []string{"SPILLWAY_SERVER_HTTP_WRITE_TIMEOUT=5s"},
			err:  "server.http.write_timeout: 5s is not above producer.wal.publish_timeout (5s): a spilled record's answer could not be written before the connection is cut",
		},
		{
			name:    "slow call not below max wait is warned about",
			env:     []string{"SPILLWAY_PRODUCER_CB_SLOW_CALL=4s"},
			warning: "producer.cb.slow_call (4s) is not below producer.cb.max_wait (4s): clients stop waiting before a hung Kafka's produces count as slow, so the breaker opens only after every client waited producer.cb.max_wait",
		},
		{
			name:    "shutdown shorter than a record's wait is warned about",
			env:     []string{"SPILLWAY_SERVER_SHUTDOWN_TIMEOUT=5s"},
			warning: "server.shutdown_timeout (5s) is below producer.cb.max_wait plus producer.wal.publish_timeout (9s): at shutdown, records waiting for Kafka are spilled early, and some may arrive twice",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(nil, tc.env)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, []string{tc.warning}, c.Warnings)
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
	c, err := Parse(nil, nil)
	require.NoError(t, err)
	assert.Empty(t, c.Warnings, "the defaults fit inside one another")
}

// TestKafkaListenerRequestBound: server.kafka.max_request_bytes bounds the
// Kafka listener's requests and leaves server.http.max_body_bytes to HTTP
// bodies. A file that sets only server.http.max_body_bytes keeps the bound
// it gave the listener before the listener had its own key, with a
// warning that names both keys; with the listener off there is nothing to
// warn about.
func TestKafkaListenerRequestBound(t *testing.T) {
	const warning = "server.kafka.max_request_bytes is not set, so server.http.max_body_bytes (4096) bounds the Kafka listener's requests, as it did before the listener had its own key; set server.kafka.max_request_bytes to bound them apart from HTTP bodies"
	for _, tc := range []struct {
		name        string
		yaml        string
		env         []string
		kafka, http int64
		wantWarning bool
	}{
		{"neither set", "", nil, 16 << 20, 16 << 20, false},
		{"the new key", "", []string{"SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=4096"}, 4096, 16 << 20, false},
		{"the new key in the file", "server:\n  kafka:\n    max_request_bytes: 4096\n", nil, 4096, 16 << 20, false},
		{"the old key alone", "", []string{"SPILLWAY_SERVER_HTTP_MAX_BODY_BYTES=4096"}, 4096, 4096, true},
		{"the old key alone in the file", "server:\n  http:\n    max_body_bytes: 4096\n", nil, 4096, 4096, true},
		{"both", "server:\n  http:\n    max_body_bytes: 4096\n", []string{"SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=8192"}, 8192, 4096, false},
		{"the old key, listener off", "", []string{"SPILLWAY_SERVER_HTTP_MAX_BODY_BYTES=4096", "SPILLWAY_SERVER_KAFKA_LISTEN="}, 16 << 20, 4096, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.yaml), tc.env)
			require.NoError(t, err)
			assert.Equal(t, tc.kafka, int64(c.Server.Kafka.MaxRequestBytes), "server.kafka.max_request_bytes in force")
			assert.Equal(t, tc.http, c.Server.HTTP.MaxBodyBytes, "server.http.max_body_bytes")
			if tc.wantWarning {
				assert.Equal(t, []string{warning}, c.Warnings)
			} else {
				assert.Empty(t, c.Warnings)
			}
		})
	}

	_, err := Parse(nil, []string{"SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=0"})
	require.Error(t, err)
	assert.Equal(t, "server.kafka.max_request_bytes: 0 is not allowed; want a whole number of 1 or more", err.Error())
}

// TestKafkaEnumsTyped: kafka.compression.codec is read in any case (as
// librdkafka reads it) into its typed value, kafka.partitioner as written;
// the defaults are none and murmur2_random.
func TestKafkaEnumsTyped(t *testing.T) {
	c, err := Parse(nil, []string{"SPILLWAY_KAFKA_COMPRESSION_TYPE=LZ4", "SPILLWAY_KAFKA_PARTITIONER=consistent"})
	require.NoError(t, err)
	assert.Equal(t, CompressionLZ4, c.Kafka.Compression)
	assert.Equal(t, PartitionerConsistent, c.Kafka.Partitioner)

	c, err = Parse(nil, nil)
	require.NoError(t, err)
	assert.Equal(t, CompressionSnappy, c.Kafka.Compression)
	assert.Equal(t, PartitionerMurmur2Random, c.Kafka.Partitioner)
}
