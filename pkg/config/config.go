// Package config loads Spillway's configuration: built-in defaults, then a
// YAML file, then SPILLWAY_* environment variables. It reads
// kafka-ambassador's configuration unchanged, so that its users can switch
// without editing their files.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"

	"github.com/spillway/spillway/pkg/record"
)

// EnvPrefix starts every environment variable that overrides a key.
const EnvPrefix = "SPILLWAY_"

// WALMode is producer.wal.mode: when records go to the buffer.
type WALMode string

// The producer.wal.mode values.
const (
	ModeFallback WALMode = "fallback" // Kafka first; the buffer when Kafka cannot take a record
	ModeAlways   WALMode = "always"   // the buffer first (write-ahead); the forwarder delivers
	ModeDisable  WALMode = "disable"  // never the buffer; Kafka's failure reaches the client
)

// Order is producer.order: what Spillway keeps of a partition's order
// when records pass through the buffer.
type Order string

// The producer.order values.
const (
	// OrderPartition keeps each partition's order (so each key's): a
	// partition that spilled stays behind its buffered records until they
	// are delivered, and the drains deliver a partition's records in buffer
	// order, one batch per partition in flight.
	OrderPartition Order = "partition"
	// OrderNone is the lowest latency after an outage: records go straight
	// to Kafka as soon as it answers, while the buffered ones are drained
	// beside them, by concurrent workers; a key's records may be reordered.
	OrderNone Order = "none"
)

// Config is the whole configuration of a Spillway service.
type Config struct {
	Server   Server
	Producer Producer
	Kafka    Kafka
	Log      Log
	Forward  Forward
	Resend   ResendService
	Security Security
	// Validation, TopicMapping and Mirrors govern records in flight;
	// with Security's topics and rate limits, they reload on SIGHUP.
	Validation   []ValidationRule
	TopicMapping []TopicMapping
	Mirrors      []Mirror
	// Warnings are problems that do not stop the service, such as a
	// SPILLWAY_* variable that matches no key; the service logs them.
	Warnings []string
}

// Server holds the listeners.
type Server struct {
	HTTP            HTTP
	GRPC            GRPC
	Kafka           KafkaListener
	Monitoring      Monitoring
	TLS             ServerTLS
	ShutdownTimeout time.Duration
	// MaxInFlightRecords bounds the records received and not yet answered;
	// beyond it requests are refused (503 with Retry-After), so that a slow
	// Kafka cannot grow the ingest's memory without bound.
	MaxInFlightRecords int
	// MaxInFlightBytes bounds what the records received and not yet
	// answered cost in memory (key, value, headers and a fixed overhead
	// per record); beyond it requests are refused like MaxInFlightRecords.
	MaxInFlightBytes int64
	// MaxRequestRecords caps the records of one request; a larger request
	// is refused (413) before its records are built.
	MaxRequestRecords int
	// MaxRequestHeaders caps the record headers of one gRPC request, all
	// its records together; a larger request is refused before they are
	// built.
	MaxRequestHeaders int
}

// HTTP configures the HTTP produce API.
type HTTP struct {
	Listen            string
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxBodyBytes      int64
	MaxStreams        int           // v3 streams open at once; more are refused with 503
	StreamIdleTimeout time.Duration // a v3 stream that sends nothing for this long is ended
}

// GRPC configures the gRPC produce API.
// KafkaListener is the listener that speaks Kafka's protocol to
// producers (services/ingest/internal/kafkaapi).
type KafkaListener struct {
	// Listen is its address; "" disables it.
	Listen string
	// Advertised is the host:port that Metadata names as the broker, for
	// clients that reach Spillway through an address other than its own
	// (a container's port mapping, a load balancer); "": the address each
	// client connected to.
	Advertised string
	// MaxConnections bounds the connections open at once, and
	// MaxConnectionsPerAddress those of one client address (Kafka's
	// max.connections and max.connections.per.ip): one more is closed at
	// once.
	MaxConnections           int
	MaxConnectionsPerAddress int
	// ConnectionsMaxIdle closes a connection that sends nothing for this
	// long (Kafka's connections.max.idle.ms).
	ConnectionsMaxIdle time.Duration
	// SignInTimeout bounds the TLS handshake and signing in, from the
	// moment the connection is accepted.
	SignInTimeout time.Duration
	// IdempotentProducers bounds the producer ids whose last five batches
	// per partition are kept to answer their retries, least recently used
	// forgotten first.
	IdempotentProducers int
}

type GRPC struct {
	Listen           string
	MaxRequestSize   int
	KeepaliveTime    time.Duration // ping an idle client after this long
	KeepaliveTimeout time.Duration // close the connection when a ping is not answered within this
	KeepaliveMinTime time.Duration // refuse clients that ping more often than this
	StreamWindow     int           // requests of one stream that may wait for Kafka at once
	// StreamWindowBytes is HTTP/2's flow-control window of one stream; the
	// connection's is four times it.
	StreamWindowBytes    int32
	MaxConcurrentStreams uint32 // streams open at once on one connection (HTTP/2 setting)
	MaxOpenStreams       int    // produce streams open at once on the server; more are refused
}

// ClientAuth is server.tls.client_auth: whether the listeners ask for
// client certificates.
type ClientAuth string

// The server.tls.client_auth values.
const (
	ClientAuthNone     ClientAuth = "none"     // no client certificate asked for
	ClientAuthOptional ClientAuth = "optional" // a client certificate is verified when given
	ClientAuthRequire  ClientAuth = "require"  // a verified client certificate is required
)

// PrincipalFrom is server.tls.principal_from: which name of a client
// certificate is its principal.
type PrincipalFrom string

// The server.tls.principal_from values.
const (
	PrincipalFromCN       PrincipalFrom = "cn"
	PrincipalFromSANDNS   PrincipalFrom = "san_dns"
	PrincipalFromSANEmail PrincipalFrom = "san_email"
	PrincipalFromSANURI   PrincipalFrom = "san_uri"
)

// ServerTLS configures TLS on the HTTP and gRPC listeners. The files are
// reloaded when they change.
type ServerTLS struct {
	CertFile      string
	KeyFile       string
	ClientCAFile  string // verifies client certificates (mTLS)
	ClientAuth    ClientAuth
	PrincipalFrom PrincipalFrom
}

// Enabled says whether the listeners speak TLS.
func (t ServerTLS) Enabled() bool { return t.CertFile != "" }

// Monitoring configures the port with /metrics, health and pprof.
type Monitoring struct {
	Listen             string
	MaxTopicLabels     int
	MaxPrincipalLabels int
	MaxLibraryLabels   int
	Pprof              bool // serve /debug/pprof/ on the monitoring port; off by default
}

// Producer holds kafka-ambassador's producer section: the breaker, the
// resend loop and the buffer's settings. Its old_producer_kill_timeout is
// accepted and has no effect (see the key table).
type Producer struct {
	CB     Breaker
	Resend Resend
	WAL    WAL
	Order  Order // what is kept of a partition's order through the buffer
}

// Breaker configures the circuit breaker in front of Kafka (see
// pkg/breaker): it opens on Fails failed produces in a row, or on
// FailureRate of the produces in its window (Interval) once MinCalls of
// them ended; a produce Kafka has not answered within SlowCall counts as
// failed.
type Breaker struct {
	Interval    time.Duration // the window of the counts, rolled in 10 steps (0: counts kept until the state changes)
	Timeout     time.Duration // time open before probes
	Fails       uint32        // failures in a row that open it
	Requests    uint32        // probes when half-open; as many successes close it
	SlowCall    time.Duration // a produce not answered within this counts as failed
	FailureRate float64       // share of failed or slow produces in the window that opens it (0: off)
	MinCalls    uint32        // produces in the window before FailureRate applies
	MaxWait     time.Duration // how long a client's record waits for Kafka before it is spilled
}

// Resend configures how spilled records are carried back to Kafka.
type Resend struct {
	Period    time.Duration
	RateLimit float64
}

// WAL configures the buffer: when records are written ahead to it or
// spilled to it, and the JetStream stream that holds them. It keeps the
// name of its keys, producer.wal.* (kafka-ambassador's, where the buffer
// was a write-ahead log); everywhere else the store is "the buffer".
type WAL struct {
	Mode          WALMode
	InMemory      bool
	Path          string
	AlwaysTopics  []string
	DisableTopics []string

	Stream         string        // the JetStream stream's name
	SubjectPrefix  string        // subjects are PREFIX.wal.TOPIC.PARTITION, PREFIX.spill.TOPIC.PARTITION, PREFIX.dlq.TOPIC
	Listen         string        // the embedded server's client listener
	NATS           NATS          // an external JetStream; no embedded server when URLs are set
	Replicas       int           // stream replicas (3 on an external cluster)
	MaxBytes       int64         // the stream's size limit; a full stream refuses records (507)
	MaxAge         time.Duration // records older than this are removed, delivered or not (0: never)
	PublishTimeout time.Duration // how long a publish may wait for JetStream's acknowledgement
	AckWait        time.Duration // how long a drain consumer may hold a message before JetStream redelivers it
}

// NATS is the connection to an external JetStream.
type NATS struct {
	URLs        []string
	Credentials string // a .creds file
	TLS         TLS
}

// Forward configures the forwarder service.
type Forward struct {
	RateLimit        float64
	MonitoringListen string
}

// ResendService configures the resender service's own port.
type ResendService struct {
	MonitoringListen string
}

// DefaultDenyTopics are the internal topics of Kafka and its tools
// (__consumer_offsets, __transaction_state, Confluent's _confluent-*,
// Schema Registry's _schemas, Kafka Connect's connect-*), denied unless
// security.deny_topics says otherwise.
var DefaultDenyTopics = []string{"__*", "_confluent*", "_schemas", "connect-*"}

// Security configures who may produce, and to which topics.
type Security struct {
	// APIKeys map the SHA-256 (hex) of an API key to its principal.
	APIKeys map[string]string
	// SCRAMUsers are the Kafka listener's SASL SCRAM credentials, stored
	// as Kafka stores them (salt, iterations, stored key, server key),
	// never the password; API keys are stored hashed and cannot serve.
	SCRAMUsers []SCRAMUser
	// RequireCredentials refuses requests without an API key (401).
	RequireCredentials bool
	// MaxSessionLifetime bounds a SASL session on the Kafka listener
	// (KIP-368), as Kafka's connections.max.reauth.ms: within it the
	// client signs in again on its connection, or the connection closes.
	// A credential that expires sooner (a JWT) ends its session sooner.
	MaxSessionLifetime time.Duration
	// AllowTopics is the global topic allow-list (globs); empty: any.
	AllowTopics []string
	// DenyTopics are topics no client may produce to or see listed
	// (globs), whatever its ACL: by default the internal topics of Kafka
	// and its tools.
	DenyTopics []string
	// ACL maps a principal to the topic globs it may produce to; a
	// principal without an entry may produce to any allowed topic.
	ACL map[string][]string
	// RateLimit bounds records/s and bytes/s per principal and for all
	// clients together; 0: no limit.
	RateLimit RateLimit
	// JWT verifies bearer tokens; off unless a JWKS is configured.
	JWT JWT
}

// JWT configures the verification of JWT bearer tokens.
type JWT struct {
	JWKSFile        string        // a JWK Set file, reloaded when it changes
	JWKSURL         string        // or a JWK Set URL, fetched again every RefreshInterval
	RefreshInterval time.Duration // how often JWKSURL is fetched again
	Issuer          string        // the iss every token must have
	Audience        string        // a value the aud of every token must hold
	PrincipalClaim  string        // the claim that names the principal
	Leeway          time.Duration // clock skew allowed on exp, nbf and iat
}

// Enabled says whether bearer tokens that look like JWTs are verified.
func (j JWT) Enabled() bool { return j.JWKSFile != "" || j.JWKSURL != "" }

// RateLimit is a set of token-bucket limits, one second deep.
type RateLimit struct {
	RecordsPerSecond       float64
	BytesPerSecond         float64
	GlobalRecordsPerSecond float64
	GlobalBytesPerSecond   float64
}

// Log configures the process's logs.
type Log struct {
	Level    string // debug, info, warn, error
	Encoding string // json or console
}

// Load reads the configuration: defaults, then the YAML file at path (if
// path is not empty), then the SPILLWAY_* variables in environ. The error
// names every bad key.
func Load(path string, environ []string) (*Config, error) {
	var file []byte
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read configuration: %w", err)
		}
		file = b
	}
	return Parse(file, environ)
}

// Parse is Load with the file's content given. It reads every key of the
// table in keys.go in one pass and collects every error and warning, so
// that a user sees all the problems of a file at once.
func Parse(file []byte, environ []string) (*Config, error) {
	c := &Config{Security: Security{APIKeys: map[string]string{}, ACL: map[string][]string{}}}
	opts := options(c)
	known := make(map[string]bool, len(opts))
	defaults := make(map[string]any, len(opts))
	for _, o := range opts {
		known[o.key], defaults[o.key] = true, o.def
	}

	k := koanf.New(".")
	if err := k.Load(confmap.Provider(defaults, "."), nil); err != nil {
		return nil, fmt.Errorf("load defaults: %w", err)
	}
	// user holds what the file and the environment set, apart from the
	// defaults: a key without effect is warned about only when it was set.
	user := koanf.New(".")
	if len(file) > 0 {
		if err := k.Load(rawbytes.Provider(file), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("parse configuration file: %w", err)
		}
		_ = user.Load(rawbytes.Provider(file), yaml.Parser()) // it parsed just above
	}
	env, warnings := envOverrides(opts, environ)
	for _, kk := range []*koanf.Koanf{k, user} {
		if err := kk.Load(confmap.Provider(env, "."), nil); err != nil {
			return nil, fmt.Errorf("load environment: %w", err)
		}
	}

	k, errs := resolveSecrets(k, environ)
	for _, key := range k.Keys() {
		if !known[key] && family(key) == nil {
			errs = append(errs, fmt.Errorf("unknown configuration key %q", key))
		}
	}

	g := getter{k: k, given: user.Exists, warnings: warnings}
	for _, o := range opts {
		if o.read != nil {
			o.read(&g, o.key)
		}
	}
	for _, key := range k.Keys() {
		if principal, ok := strings.CutPrefix(key, aclPrefix); ok {
			c.Security.ACL[principal] = g.globs(key)
		}
	}
	c.Kafka = parseKafka(k, &g)
	c.Validation, c.TopicMapping, c.Mirrors = parseGovernance(&g)
	check(c, &g)
	c.Warnings = g.warnings
	errs = append(errs, g.errs...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// check applies the rules that involve more than one key.
func check(c *Config, g *getter) {
	for _, t := range c.Producer.WAL.AlwaysTopics {
		if slices.Contains(c.Producer.WAL.DisableTopics, t) {
			g.fail("producer.wal.always_topics", fmt.Errorf("topic %q is also in producer.wal.disable_topics; a topic can be in only one", t))
		}
	}
	checkTimeouts(c, g)
	checkServerTLS(c.Server.TLS, g)
	checkJWT(c.Security.JWT, g)
	if len(c.Security.ACL) > 0 && !c.Security.RequireCredentials {
		g.warn("security.acl is set but security.require_credentials is false: a client that sends no credential is held only to security.allow_topics, not to any principal's ACL")
	}
}

// checkTimeouts checks the timeouts that must fit inside one another, so
// that a client is answered before its connection is cut and a buffered
// record is not sent twice because JetStream gave up on its drain. Pairs
// that kafka-ambassador's files break (its message.timeout.ms of 60000
// against the 60 s write timeout) are clamped with a warning, so that they
// still load; the others are refused.
func checkTimeouts(c *Config, g *getter) {
	write, publish := c.Server.HTTP.WriteTimeout, c.Producer.WAL.PublishTimeout
	cb := &c.Producer.CB
	if write <= publish {
		g.fail("server.http.write_timeout", fmt.Errorf("%v is not above producer.wal.publish_timeout (%v): a spilled record's answer could not be written before the connection is cut", write, publish))
		return
	}
	// A record waits for Kafka, then may be spilled: both must end
	// before the write timeout cuts the client off.
	if room := write - publish; c.Kafka.MessageTimeout > room {
		g.warn(fmt.Sprintf("kafka.message.timeout.ms (%v) leaves no time under server.http.write_timeout (%v) to spill a record that timed out (producer.wal.publish_timeout %v): the client would be cut off, retry, and the record arrive twice; kafka.message.timeout.ms is lowered to %v",
			c.Kafka.MessageTimeout, write, publish, room))
		c.Kafka.MessageTimeout = room
	}
	if room := write - publish; cb.MaxWait > room {
		g.warn(fmt.Sprintf("producer.cb.max_wait (%v) leaves no time under server.http.write_timeout (%v) to spill the record (producer.wal.publish_timeout %v); producer.cb.max_wait is lowered to %v",
			cb.MaxWait, write, publish, room))
		cb.MaxWait = room
	}
	if cb.SlowCall >= cb.MaxWait {
		g.warn(fmt.Sprintf("producer.cb.slow_call (%v) is not below producer.cb.max_wait (%v): clients stop waiting before a hung Kafka's produces count as slow, so the breaker opens only after every client waited producer.cb.max_wait", cb.SlowCall, cb.MaxWait))
	}
	// A drain holds its batch until Kafka answered or
	// kafka.message.timeout.ms passed; JetStream must not redeliver the
	// batch meanwhile, or it is sent twice.
	if ack := c.Producer.WAL.AckWait; ack <= c.Kafka.MessageTimeout {
		g.fail("producer.wal.ack_wait", fmt.Errorf("%v is not above kafka.message.timeout.ms (%v): JetStream would redeliver a drain's batch while Kafka may still take it, and its records arrive twice", ack, c.Kafka.MessageTimeout))
	}
	if st := c.Server.ShutdownTimeout; st < cb.MaxWait+publish {
		g.warn(fmt.Sprintf("server.shutdown_timeout (%v) is below producer.cb.max_wait plus producer.wal.publish_timeout (%v): at shutdown, records waiting for Kafka are spilled early, and some may arrive twice", st, cb.MaxWait+publish))
	}
}

// resolveSecrets replaces every value that is a whole "${file:PATH}" or
// "${env:NAME}" with the file's content (without its trailing newline) or
// the variable's value, so that passwords and keys need not be written in
// the configuration. The errors name the key and the file or variable,
// never a value.
func resolveSecrets(k *koanf.Koanf, environ []string) (*koanf.Koanf, []error) {
	var errs []error
	flat := k.All()
	for key, v := range flat {
		flat[key] = resolveValue(key, v, environ, &errs)
	}
	// A fresh load rather than Set: a YAML key with dots in it (kafka:
	// {sasl.password: ...}) and the nested map Set would make are two
	// entries for one flat key.
	resolved := koanf.New(".")
	if err := resolved.Load(confmap.Provider(flat, "."), nil); err != nil {
		return k, append(errs, fmt.Errorf("resolve secrets: %w", err))
	}
	return resolved, errs
}

// resolveValue resolves v and, inside lists and maps, every string in it;
// key names it in errors.
func resolveValue(key string, v any, environ []string, errs *[]error) any {
	switch v := v.(type) {
	case string:
		s, err := resolveSecret(v, environ)
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", key, err))
		}
		return s
	case []string:
		out := make([]string, len(v))
		for i, e := range v {
			out[i] = resolveValue(fmt.Sprintf("%s[%d]", key, i), e, environ, errs).(string)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = resolveValue(fmt.Sprintf("%s[%d]", key, i), e, environ, errs)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for f, e := range v {
			out[f] = resolveValue(key+"."+f, e, environ, errs)
		}
		return out
	default:
		return v
	}
}

// resolveSecret returns s, or the secret it refers to when it is a whole
// "${file:PATH}" or "${env:NAME}". "$${" at the start stands for a
// literal "${". Errors never repeat the value.
func resolveSecret(s string, environ []string) (string, error) {
	if rest, ok := strings.CutPrefix(s, "$${"); ok {
		return "${" + rest, nil
	}
	if !strings.HasPrefix(s, "${") || !strings.HasSuffix(s, "}") {
		return s, nil
	}
	source, name, _ := strings.Cut(s[2:len(s)-1], ":")
	switch source {
	case "file":
		b, err := os.ReadFile(name)
		if err != nil {
			return "", fmt.Errorf("reading the secret from %s: %w", name, errors.Unwrap(err))
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case "env":
		for _, kv := range environ {
			if n, v, _ := strings.Cut(kv, "="); n == name {
				return v, nil
			}
		}
		return "", fmt.Errorf("the secret's environment variable %s is not set", name)
	default:
		return "", errors.New("the value starts with ${ but is not a secret reference; want ${file:PATH} or ${env:NAME}, or $${ for a literal ${")
	}
}

// EnvName returns the environment variable that overrides key.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_").Replace(key))
}

// envOverrides maps SPILLWAY_* variables to keys. A key's variable is the
// key upper-cased with dots as underscores (SPILLWAY_PRODUCER_WAL_MODE);
// any other SPILLWAY_KAFKA_* variable is a librdkafka property with its
// underscores as dots (SPILLWAY_KAFKA_COMPRESSION_CODEC). Lists are
// comma-separated. A SPILLWAY_* variable that matches no key is returned
// as a warning, not an error: Kubernetes sets SPILLWAY_SERVICE_HOST and
// the like for a Service named spillway.
func envOverrides(opts []option, environ []string) (map[string]any, []string) {
	byEnv := make(map[string]option, len(opts))
	for _, o := range opts {
		byEnv[EnvName(o.key)] = o
	}
	out := map[string]any{}
	var warnings []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		o, known := byEnv[name]
		key := o.key
		switch {
		case known:
		case strings.HasPrefix(name, EnvPrefix+"KAFKA_") && len(name) > len(EnvPrefix+"KAFKA_"):
			key = "kafka." + strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, EnvPrefix+"KAFKA_"), "_", "."))
		default:
			warnings = append(warnings, fmt.Sprintf("environment variable %s matches no configuration key and is ignored", name))
			continue
		}
		if _, isList := o.def.([]string); isList {
			out[key] = splitList(value)
		} else {
			out[key] = value
		}
	}
	return out, warnings
}

func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// getter reads typed values and collects one error per bad key, and the
// warnings.
type getter struct {
	k        *koanf.Koanf
	errs     []error
	warnings []string
	given    func(key string) bool // whether the file or the environment set key; nil: never
}

func (g *getter) fail(key string, err error) {
	g.errs = append(g.errs, fmt.Errorf("%s: %w", key, err))
}

func (g *getter) warn(msg string) { g.warnings = append(g.warnings, msg) }

func (g *getter) str(key string) string {
	switch v := g.k.Get(key).(type) {
	case nil:
		return ""
	case string:
		return v
	case int, int64, float64, bool:
		return fmt.Sprint(v)
	default:
		g.fail(key, fmt.Errorf("want a string, got %T", v))
		return ""
	}
}

func (g *getter) address(key string) string {
	s := g.str(key)
	if _, port, err := net.SplitHostPort(s); err != nil {
		g.fail(key, fmt.Errorf("%q is not a listen address; want host:port, such as \":18080\" or \"127.0.0.1:18080\"", s))
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		g.fail(key, fmt.Errorf("%q has no valid port; want a number from 0 to 65535", s))
	}
	return s
}

// optionalAddress is address, or "" for a listener that is off.
func (g *getter) optionalAddress(key string) string {
	if g.str(key) == "" {
		return ""
	}
	return g.address(key)
}

func (g *getter) duration(key string) time.Duration {
	v := g.k.Get(key)
	d, err := parseDuration(v)
	if err != nil {
		g.fail(key, err)
	}
	return d
}

func parseDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case int, int64, float64:
		if fmt.Sprint(v) == "0" {
			return 0, nil
		}
		return 0, fmt.Errorf("%v has no unit; want a duration such as \"500ms\", \"20s\" or \"1m\"", v)
	case string:
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			if n, nerr := strconv.ParseFloat(strings.TrimSpace(v), 64); nerr == nil && n == 0 {
				return 0, nil
			}
			return 0, fmt.Errorf("%q is not a duration; want one such as \"500ms\", \"20s\" or \"1m\"", v)
		}
		if d < 0 {
			return 0, fmt.Errorf("%q is negative; want a duration of 0 or more", v)
		}
		return d, nil
	default:
		return 0, fmt.Errorf("want a duration such as \"20s\", got %T", v)
	}
}

func (g *getter) number(key string) (float64, bool) {
	v := g.k.Get(key)
	var f float64
	switch v := v.(type) {
	case int:
		f = float64(v)
	case int64:
		f = float64(v)
	case float64:
		f = v
	case string:
		n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			g.fail(key, fmt.Errorf("%q is not a number", v))
			return 0, false
		}
		f = n
	default:
		g.fail(key, fmt.Errorf("want a number, got %T", v))
		return 0, false
	}
	return f, true
}

func (g *getter) positiveInt(key string) int {
	f, ok := g.number(key)
	if !ok {
		return 0
	}
	if f < 1 || f != float64(int(f)) {
		g.fail(key, fmt.Errorf("%v is not allowed; want a whole number of 1 or more", f))
		return 0
	}
	return int(f)
}

func (g *getter) rate(key string) float64 {
	f, ok := g.number(key)
	if ok && f < 0 {
		g.fail(key, fmt.Errorf("%v is negative; want records per second, 0 for no limit", f))
		return 0
	}
	return f
}

// share reads a fraction from 0 to 1.
func (g *getter) share(key string) float64 {
	f, ok := g.number(key)
	if ok && (f < 0 || f > 1) {
		g.fail(key, fmt.Errorf("%v is not a share; want a number from 0 to 1, such as 0.5 (0: off)", f))
		return 0
	}
	return f
}

// positiveDuration reads a duration above 0.
func positiveDuration(g *getter, key string) time.Duration {
	d := g.duration(key)
	if d <= 0 {
		g.fail(key, fmt.Errorf("%v is not above 0; want a duration such as \"2s\"", d))
	}
	return d
}

func (g *getter) boolean(key string) bool {
	switch v := g.k.Get(key).(type) {
	case bool:
		return v
	case string:
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			g.fail(key, fmt.Errorf("%q is not allowed; want true or false", v))
		}
		return b
	default:
		g.fail(key, fmt.Errorf("want true or false, got %v", v))
		return false
	}
}

// oneOf returns a getter of one of the allowed values, given in any case.
func oneOf[T ~string](allowed ...T) func(*getter, string) T {
	return func(g *getter, key string) T {
		s := T(strings.ToLower(g.str(key)))
		if !slices.Contains(allowed, s) {
			names := make([]string, len(allowed))
			for i, a := range allowed {
				names[i] = string(a)
			}
			g.fail(key, fmt.Errorf("%q is not allowed; want one of %s", s, strings.Join(names, ", ")))
		}
		return s
	}
}

// natsToken reads a stream name or subject prefix: one NATS token.
func (g *getter) natsToken(key string) string {
	s := g.str(key)
	if s == "" || strings.ContainsAny(s, ". *>\t") {
		g.fail(key, fmt.Errorf("%q is not allowed: stream names and subject prefixes are one NATS token, without dots, spaces, * or >", s))
	}
	return s
}

// replicas reads a stream's replica count.
func (g *getter) replicas(key string) int {
	n := g.positiveInt(key)
	if n > 5 {
		g.fail(key, fmt.Errorf("%d is not allowed; JetStream keeps 1 to 5 replicas", n))
	}
	return n
}

func (g *getter) strings(key string) []string {
	switch v := g.k.Get(key).(type) {
	case nil:
		return nil
	case []string:
		return v
	case string:
		return splitList(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			out = append(out, fmt.Sprint(e))
		}
		return out
	default:
		g.fail(key, fmt.Errorf("want a list, got %T", v))
		return nil
	}
}

func (g *getter) topics(key string) []string {
	ts := g.strings(key)
	for _, t := range ts {
		if err := record.ValidateTopic(t); err != nil {
			g.fail(key, err)
		}
	}
	return ts
}

// checkJWT checks security.jwt.* once a JWK Set turns JWTs on.
func checkJWT(j JWT, g *getter) {
	if !j.Enabled() {
		return
	}
	if j.JWKSFile != "" && j.JWKSURL != "" {
		g.fail("security.jwt.jwks_file", errors.New("and security.jwt.jwks_url are both set; set one"))
	}
	if j.JWKSURL != "" {
		if err := checkJWKSURL(j.JWKSURL); err != nil {
			g.fail("security.jwt.jwks_url", err)
		}
	}
	if j.Issuer == "" {
		g.fail("security.jwt.issuer", errors.New("is empty; with a JWKS set, every token's issuer is checked: set the issuer"))
	}
	if j.Audience == "" {
		g.fail("security.jwt.audience", errors.New("is empty; with a JWKS set, every token's audience is checked: set the audience"))
	}
	if j.PrincipalClaim == "" {
		g.fail("security.jwt.principal_claim", errors.New("is empty; set the claim that names the principal, such as sub"))
	}
	if j.RefreshInterval < time.Second {
		g.fail("security.jwt.refresh_interval", fmt.Errorf("%v is too short; want 1s or more", j.RefreshInterval))
	}
}

// SCRAMUser is one SASL SCRAM credential (RFC 5802): the password is
// not kept, only what a server needs to check a client's proof.
type SCRAMUser struct {
	Principal  string
	Mechanism  string // SCRAM-SHA-256 or SCRAM-SHA-512
	Salt       []byte
	Iterations int
	StoredKey  []byte // H(HMAC(SaltedPassword, "Client Key"))
	ServerKey  []byte // HMAC(SaltedPassword, "Server Key")
}

// scramUsers reads security.scram_users, a list of {principal,
// mechanism, salt, iterations, stored_key, server_key}, the byte values
// in base64 (standard, padded).
func (g *getter) scramUsers(key string) []SCRAMUser {
	var out []SCRAMUser
	list, ok := g.k.Get(key).([]any)
	if !ok && g.k.Get(key) != nil {
		g.fail(key, fmt.Errorf("want a list of {principal, mechanism, salt, iterations, stored_key, server_key}"))
	}
	seen := map[string]bool{}
	for i, e := range list {
		at := fmt.Sprintf("%s[%d]", key, i)
		m, _ := e.(map[string]any)
		u := SCRAMUser{}
		u.Principal, _ = m["principal"].(string)
		u.Mechanism, _ = m["mechanism"].(string)
		size := map[string]int{"SCRAM-SHA-256": 32, "SCRAM-SHA-512": 64}[u.Mechanism]
		var bad []string
		if u.Principal == "" {
			bad = append(bad, "principal is empty")
		}
		if size == 0 {
			bad = append(bad, fmt.Sprintf("mechanism %q: want SCRAM-SHA-256 or SCRAM-SHA-512", u.Mechanism))
		}
		switch n := m["iterations"].(type) {
		case int:
			u.Iterations = n
		case int64:
			u.Iterations = int(n)
		case float64:
			u.Iterations = int(n)
		case string:
			u.Iterations, _ = strconv.Atoi(n)
		}
		if u.Iterations < 4096 {
			bad = append(bad, "iterations: want 4096 or more (RFC 7677)")
		}
		for _, f := range []struct {
			name string
			dst  *[]byte
			size int
		}{{"salt", &u.Salt, 0}, {"stored_key", &u.StoredKey, size}, {"server_key", &u.ServerKey, size}} {
			s, _ := m[f.name].(string)
			b, err := base64.StdEncoding.DecodeString(s)
			switch {
			case err != nil || len(b) == 0:
				bad = append(bad, f.name+": want base64")
			case f.size > 0 && len(b) != f.size:
				bad = append(bad, fmt.Sprintf("%s: %d bytes; want %d for %s", f.name, len(b), f.size, u.Mechanism))
			}
			*f.dst = b
		}
		if seen[u.Mechanism+" "+u.Principal] {
			bad = append(bad, fmt.Sprintf("principal %q has a %s credential already", u.Principal, u.Mechanism))
		}
		if len(bad) > 0 {
			g.fail(at, errors.New(strings.Join(bad, "; ")))
			continue
		}
		seen[u.Mechanism+" "+u.Principal] = true
		out = append(out, u)
	}
	return out
}

// apiKeys reads security.api_keys, a list of {principal, sha256}, into a
// map from the hash (lower-case hex) to the principal.
func (g *getter) apiKeys(key string) map[string]string {
	out := map[string]string{}
	keys, ok := g.k.Get(key).([]any)
	if !ok && g.k.Get(key) != nil {
		g.fail(key, fmt.Errorf("want a list of {principal, sha256}"))
	}
	for i, e := range keys {
		m, ok := e.(map[string]any)
		principal, _ := m["principal"].(string)
		hash, _ := m["sha256"].(string)
		hash = strings.ToLower(hash)
		if !ok || principal == "" || len(hash) != 64 || strings.Trim(hash, "0123456789abcdef") != "" {
			g.fail(fmt.Sprintf("%s[%d]", key, i), fmt.Errorf("want {principal: NAME, sha256: the 64 hex digits of the key's SHA-256}"))
			continue
		}
		out[hash] = principal
	}
	return out
}

// checkJWKSURL accepts https, and http only to this host: keys fetched
// in the clear could be swapped on the way, and tokens forged with them.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("is not a URL; want https://HOST/PATH")
	}
	switch {
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && (u.Hostname() == "localhost" || net.ParseIP(u.Hostname()).IsLoopback()):
		return nil
	case u.Scheme == "http":
		return errors.New("is http to another host: the keys could be swapped on the way; use https (http only to localhost)")
	default:
		return fmt.Errorf("has scheme %q; want https", u.Scheme)
	}
}

// checkServerTLS checks that the server.tls.* files come as a set.
func checkServerTLS(t ServerTLS, g *getter) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		g.fail("server.tls.cert", errors.New("and server.tls.key go together; set both or neither"))
	}
	if !t.Enabled() && (t.ClientCAFile != "" || t.ClientAuth != ClientAuthNone) {
		g.fail("server.tls.client_ca", errors.New("and server.tls.client_auth need TLS on the listeners; set server.tls.cert and server.tls.key"))
	}
	if t.ClientAuth != ClientAuthNone && t.ClientCAFile == "" {
		g.fail("server.tls.client_auth", fmt.Errorf("%s needs server.tls.client_ca, the CA that signs client certificates", t.ClientAuth))
	}
	if t.ClientCAFile != "" && t.ClientAuth == ClientAuthNone {
		g.fail("server.tls.client_ca", errors.New("is set but server.tls.client_auth is none; set it to optional or require"))
	}
}

func (g *getter) globs(key string) []string {
	gs := g.strings(key)
	for _, p := range gs {
		if _, err := path.Match(p, ""); err != nil {
			g.fail(key, fmt.Errorf("%q is not a valid topic pattern: %v", p, err))
		}
	}
	return gs
}
