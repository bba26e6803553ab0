package config

import (
	"fmt"
	"strconv"
	"strings"
)

// option is one configuration key: its name, its default, and how it is
// read into a Config and checked. The key is spelled once, here; the
// defaults, the environment variables, the unknown-key check, the
// reference's key table (docs/configuration.md, checked by a test) and
// the reading all come from this table, as kafkaProperties does for the
// librdkafka properties.
type option struct {
	key  string
	def  any
	read func(g *getter, key string) // nil: read with other keys (see its row)
}

// options returns the key table, reading into c. A key missing here, and
// not in one of the families, is unknown and rejected.
func options(c *Config) []option {
	s, p, w := &c.Server, &c.Producer, &c.Producer.WAL
	sec, jwt, rl := &c.Security, &c.Security.JWT, &c.Security.RateLimit
	return []option{
		{"server.http.listen", ":18080", bind(&s.HTTP.Listen, (*getter).address)},
		{"server.http.read_header_timeout", "5s", bind(&s.HTTP.ReadHeaderTimeout, (*getter).duration)},
		{"server.http.read_timeout", "60s", bind(&s.HTTP.ReadTimeout, (*getter).duration)},
		{"server.http.write_timeout", "60s", bind(&s.HTTP.WriteTimeout, (*getter).duration)},
		{"server.http.idle_timeout", "120s", bind(&s.HTTP.IdleTimeout, (*getter).duration)},
		{"server.http.max_body_bytes", 16 << 20, bind(&s.HTTP.MaxBodyBytes, positive[int64])},
		{"server.http.max_streams", 100, bind(&s.HTTP.MaxStreams, positive[int])},
		{"server.http.stream_idle_timeout", "30s", bind(&s.HTTP.StreamIdleTimeout, positiveDuration)},
		{"server.grpc.listen", ":18282", bind(&s.GRPC.Listen, (*getter).address)},
		{"server.grpc.max.request.size", 4 << 20, bind(&s.GRPC.MaxRequestSize, positive[int])},
		{"server.grpc.keepalive.time", "30s", bind(&s.GRPC.KeepaliveTime, (*getter).duration)},
		{"server.grpc.keepalive.timeout", "10s", bind(&s.GRPC.KeepaliveTimeout, (*getter).duration)},
		{"server.grpc.keepalive.min_time", "5s", bind(&s.GRPC.KeepaliveMinTime, (*getter).duration)},
		{"server.grpc.stream_window", 64, bind(&s.GRPC.StreamWindow, positive[int])},
		{"server.grpc.stream_window_bytes", 1 << 20, bind(&s.GRPC.StreamWindowBytes, positive[int32])},
		{"server.grpc.max_concurrent_streams", 100, bind(&s.GRPC.MaxConcurrentStreams, positive[uint32])},
		{"server.grpc.max_open_streams", 1000, bind(&s.GRPC.MaxOpenStreams, positive[int])},
		{"server.grpc.monitoring.enable", true, accepted((*getter).boolean)},           // kafka-ambassador's; metrics are always on
		{"server.grpc.monitoring.histogram.enable", true, accepted((*getter).boolean)}, // kafka-ambassador's; histograms are always on
		{"server.kafka.listen", ":19092", bind(&s.Kafka.Listen, (*getter).optionalAddress)},
		{"server.kafka.advertised", "", bind(&s.Kafka.Advertised, (*getter).optionalAddress)},
		{"server.kafka.max_request_bytes", 16 << 20, bind(&s.Kafka.MaxRequestBytes, positive[int])},
		{"server.kafka.max_connections", 10000, bind(&s.Kafka.MaxConnections, positive[int])},
		{"server.kafka.max_connections_per_address", 1000, bind(&s.Kafka.MaxConnectionsPerAddress, positive[int])},
		{"server.kafka.connections_max_idle", "10m", bind(&s.Kafka.ConnectionsMaxIdle, positiveDuration)},
		{"server.kafka.sign_in_timeout", "10s", bind(&s.Kafka.SignInTimeout, positiveDuration)},
		{"server.kafka.idempotent_producers", 100000, bind(&s.Kafka.IdempotentProducers, positive[int])},
		{"server.monitoring.listen", ":28080", bind(&s.Monitoring.Listen, (*getter).address)},
		{"server.monitoring.max_topic_labels", 100, bind(&s.Monitoring.MaxTopicLabels, positive[int])},
		{"server.monitoring.max_principal_labels", 100, bind(&s.Monitoring.MaxPrincipalLabels, positive[int])},
		{"server.monitoring.max_library_labels", 50, bind(&s.Monitoring.MaxLibraryLabels, positive[int])},
		{"server.monitoring.pprof", false, bind(&s.Monitoring.Pprof, (*getter).boolean)},
		{"server.tls.cert", "", bind(&s.TLS.CertFile, (*getter).str)},
		{"server.tls.key", "", bind(&s.TLS.KeyFile, (*getter).str)},
		{"server.tls.client_ca", "", bind(&s.TLS.ClientCAFile, (*getter).str)},
		{"server.tls.client_auth", string(ClientAuthNone), bind(&s.TLS.ClientAuth, oneOf(ClientAuthNone, ClientAuthOptional, ClientAuthRequire))},
		{"server.tls.principal_from", string(PrincipalFromCN), bind(&s.TLS.PrincipalFrom, oneOf(PrincipalFromCN, PrincipalFromSANDNS, PrincipalFromSANEmail, PrincipalFromSANURI))},
		{"server.shutdown_timeout", "30s", bind(&s.ShutdownTimeout, (*getter).duration)},
		{"server.max_in_flight_records", 100000, bind(&s.MaxInFlightRecords, positive[int])},
		{"server.max_in_flight_bytes", 256 << 20, bind(&s.MaxInFlightBytes, positive[int64])},
		{"server.max_request_records", 10000, bind(&s.MaxRequestRecords, positive[int])},
		{"server.max_request_headers", 100000, bind(&s.MaxRequestHeaders, positive[int])},
		{"producer.cb.interval", "10s", bind(&p.CB.Interval, (*getter).duration)},
		{"producer.cb.timeout", "20s", bind(&p.CB.Timeout, (*getter).duration)},
		{"producer.cb.fails", 5, bind(&p.CB.Fails, positive[uint32])},
		{"producer.cb.requests", 3, bind(&p.CB.Requests, positive[uint32])},
		{"producer.cb.slow_call", "2s", bind(&p.CB.SlowCall, positiveDuration)},
		{"producer.cb.failure_rate", 0.5, bind(&p.CB.FailureRate, (*getter).share)},
		{"producer.cb.min_calls", 20, bind(&p.CB.MinCalls, positive[uint32])},
		{"producer.cb.max_wait", "4s", bind(&p.CB.MaxWait, positiveDuration)},
		{"producer.resend.period", "33s", bind(&p.Resend.Period, (*getter).duration)},
		{"producer.resend.rate_limit", 10000, bind(&p.Resend.RateLimit, (*getter).rate)},
		{"producer.order", string(OrderPartition), bind(&p.Order, oneOf(OrderPartition, OrderNone))},
		{"producer.wal.mode", string(ModeFallback), bind(&w.Mode, oneOf(ModeFallback, ModeAlways, ModeDisable))},
		{"producer.wal.in_memory", false, bind(&w.InMemory, (*getter).boolean)},
		{"producer.wal.path", "data/wal", bind(&w.Path, (*getter).str)},
		{"producer.wal.always_topics", []string{}, bind(&w.AlwaysTopics, (*getter).topics)},
		{"producer.wal.disable_topics", []string{}, bind(&w.DisableTopics, (*getter).topics)},
		{"producer.wal.stream", "SPILLWAY", bind(&w.Stream, (*getter).natsToken)},
		{"producer.wal.subject_prefix", "spillway", bind(&w.SubjectPrefix, (*getter).natsToken)},
		{"producer.wal.listen", "127.0.0.1:4222", bind(&w.Listen, (*getter).address)},
		{"producer.wal.nats.urls", []string{}, bind(&w.NATS.URLs, (*getter).strings)},
		{"producer.wal.nats.credentials", "", bind(&w.NATS.Credentials, (*getter).str)},
		{"producer.wal.nats.tls.ca", "", bind(&w.NATS.TLS.CAFile, (*getter).str)},
		{"producer.wal.nats.tls.cert", "", bind(&w.NATS.TLS.CertFile, (*getter).str)},
		{"producer.wal.nats.tls.key", "", bind(&w.NATS.TLS.KeyFile, (*getter).str)},
		{"producer.wal.replicas", 1, bind(&w.Replicas, (*getter).replicas)},
		{"producer.wal.max_bytes", 1 << 30, bind(&w.MaxBytes, positive[int64])},
		{"producer.wal.max_age", "0s", bind(&w.MaxAge, (*getter).duration)},
		{"producer.wal.publish_timeout", "5s", bind(&w.PublishTimeout, (*getter).duration)},
		{"producer.wal.ack_wait", "60s", bind(&w.AckWait, (*getter).duration)},
		{"producer.old_producer_kill_timeout", "0s", noEffect((*getter).duration)}, // kafka-ambassador's: its files carry it
		{"security.api_keys", []any{}, bind(&sec.APIKeys, (*getter).apiKeys)},
		{"security.scram_users", []any{}, bind(&sec.SCRAMUsers, (*getter).scramUsers)},
		{"security.require_credentials", false, bind(&sec.RequireCredentials, (*getter).boolean)},
		{"security.sasl.max_session_lifetime", "1h", bind(&sec.MaxSessionLifetime, positiveDuration)},
		{"security.allow_topics", []string{}, bind(&sec.AllowTopics, (*getter).globs)},
		{"security.deny_topics", DefaultDenyTopics, bind(&sec.DenyTopics, (*getter).globs)},
		{"security.rate_limit.records_per_second", 0, bind(&rl.RecordsPerSecond, (*getter).rate)},
		{"security.rate_limit.bytes_per_second", 0, bind(&rl.BytesPerSecond, (*getter).rate)},
		{"security.rate_limit.global_records_per_second", 0, bind(&rl.GlobalRecordsPerSecond, (*getter).rate)},
		{"security.rate_limit.global_bytes_per_second", 0, bind(&rl.GlobalBytesPerSecond, (*getter).rate)},
		{"security.jwt.jwks_file", "", bind(&jwt.JWKSFile, (*getter).str)},
		{"security.jwt.jwks_url", "", bind(&jwt.JWKSURL, (*getter).str)},
		{"security.jwt.refresh_interval", "5m", bind(&jwt.RefreshInterval, (*getter).duration)},
		{"security.jwt.issuer", "", bind(&jwt.Issuer, (*getter).str)},
		{"security.jwt.audience", "", bind(&jwt.Audience, (*getter).str)},
		{"security.jwt.principal_claim", "sub", bind(&jwt.PrincipalClaim, (*getter).str)},
		{"security.jwt.leeway", "30s", bind(&jwt.Leeway, (*getter).duration)},
		{"validation.rules", []any{}, nil}, // by parseGovernance, with topic_mapping and mirrors
		{"topic_mapping", []any{}, nil},    // by parseGovernance
		{"mirrors", []any{}, nil},          // by parseGovernance
		{"forward.rate_limit", 0, bind(&c.Forward.RateLimit, (*getter).rate)},
		{"forward.monitoring.listen", ":28081", bind(&c.Forward.MonitoringListen, (*getter).address)},
		{"resend.monitoring.listen", ":28082", bind(&c.Resend.MonitoringListen, (*getter).address)},
		{"kafka.brokers", []string{}, nil}, // by parseKafka, with the kafka.* properties
		{"global.log.level", "info", bind(&c.Log.Level, oneOf("debug", "info", "warn", "error"))},
		{"global.log.encoding", "json", bind(&c.Log.Encoding, oneOf("json", "console"))},
	}
}

// aclPrefix starts the keys security.acl.PRINCIPAL.
const aclPrefix = "security.acl."

// keyFamily is a set of keys accepted by their prefix; doc is how the
// reference names it.
type keyFamily struct{ prefix, doc string }

var families = []keyFamily{
	{"kafka.", "kafka.*"},                 // the librdkafka properties, read by parseKafka
	{aclPrefix, "security.acl.PRINCIPAL"}, // a principal's topic globs, read by Parse
	{"global.log.", "global.log.*"},       // kafka-ambassador's other log keys: accepted and ignored
}

// family returns the family key belongs to, or nil.
func family(key string) *keyFamily {
	for i, f := range families {
		if strings.HasPrefix(key, f.prefix) {
			return &families[i]
		}
	}
	return nil
}

// Key is a configuration key as the reference (docs/configuration.md)
// lists it.
type Key struct {
	Name    string // a family of keys is named with a placeholder: kafka.*, security.acl.PRINCIPAL
	Default string // "" when none; "[]" for an empty list
	Family  bool
}

// Keys returns every configuration key with its default, and the families
// of keys, in the order of the table.
func Keys() []Key {
	var out []Key
	for _, o := range options(&Config{}) {
		def := fmt.Sprint(o.def)
		switch d := o.def.(type) {
		case []string:
			def = listDefault(d)
		case []any:
			def = "[]"
		}
		out = append(out, Key{Name: o.key, Default: def})
	}
	for _, f := range families {
		out = append(out, Key{Name: f.doc, Family: true})
	}
	return out
}

// listDefault is a list default as the reference writes it: [] or
// ["a", "b"].
func listDefault(l []string) string {
	q := make([]string, len(l))
	for i, e := range l {
		q[i] = strconv.Quote(e)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// bind makes a reader that stores what get reads in *field.
func bind[T any](field *T, get func(*getter, string) T) func(*getter, string) {
	return func(g *getter, key string) { *field = get(g, key) }
}

// accepted makes a reader for a key of kafka-ambassador's that Spillway
// reads and checks, and that needs nothing from it.
func accepted[T any](get func(*getter, string) T) func(*getter, string) {
	return func(g *getter, key string) { get(g, key) }
}

// noEffect makes a reader for a key of kafka-ambassador's that Spillway
// accepts, so that its configuration loads, and that has no effect: a
// value given for it is checked and warned about.
func noEffect[T any](get func(*getter, string) T) func(*getter, string) {
	return func(g *getter, key string) {
		get(g, key)
		if g.given != nil && g.given(key) {
			g.warn(key + " is kafka-ambassador's and has no effect in Spillway; it is accepted so that kafka-ambassador's configuration loads")
		}
	}
}

// positive reads a whole number of 1 or more.
func positive[T int | int32 | int64 | uint32](g *getter, key string) T { return T(g.positiveInt(key)) }
