// Package config loads Spillway's configuration: built-in defaults, then a
// YAML file, then SPILLWAY_* environment variables. It reads
// kafka-ambassador's configuration unchanged, so that its users can switch
// without editing their files.
package config

import (
	"errors"
	"fmt"
	"maps"
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

// The producer.wal.mode values.
const (
	ModeFallback = "fallback"
	ModeAlways   = "always"
	ModeDisable  = "disable"
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
	Monitoring      Monitoring
	TLS             ServerTLS
	ShutdownTimeout time.Duration
	// MaxInFlightRecords bounds the records received and not yet answered;
	// beyond it requests are refused (503 with Retry-After), so that a slow
	// Kafka cannot grow the ingest's memory without bound.
	MaxInFlightRecords int
}

// HTTP configures the HTTP produce API.
type HTTP struct {
	Listen            string
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxBodyBytes      int64
}

// GRPC configures the gRPC produce API.
type GRPC struct {
	Listen           string
	MaxRequestSize   int
	KeepaliveTime    time.Duration // ping an idle client after this long
	KeepaliveTimeout time.Duration // close the connection when a ping is not answered within this
	KeepaliveMinTime time.Duration // refuse clients that ping more often than this
	StreamWindow     int           // requests of one stream that may wait for Kafka at once
}

// The server.tls.client_auth values.
const (
	ClientAuthNone     = "none"     // no client certificate asked for
	ClientAuthOptional = "optional" // a client certificate is verified when given
	ClientAuthRequire  = "require"  // a verified client certificate is required
)

// The server.tls.principal_from values: which part of a client
// certificate names its principal.
const (
	PrincipalFromCN       = "cn"
	PrincipalFromSANDNS   = "san_dns"
	PrincipalFromSANEmail = "san_email"
	PrincipalFromSANURI   = "san_uri"
)

// ServerTLS configures TLS on the HTTP and gRPC listeners. The files are
// reloaded when they change.
type ServerTLS struct {
	CertFile      string
	KeyFile       string
	ClientCAFile  string // verifies client certificates (mTLS)
	ClientAuth    string // none, optional or require
	PrincipalFrom string // cn, san_dns, san_email or san_uri
}

// Enabled says whether the listeners speak TLS.
func (t ServerTLS) Enabled() bool { return t.CertFile != "" }

// Monitoring configures the port with /metrics, health and pprof.
type Monitoring struct {
	Listen             string
	MaxTopicLabels     int
	MaxPrincipalLabels int
	MaxLibraryLabels   int
}

// Producer holds kafka-ambassador's producer section: the breaker, the
// resend loop and the write-ahead (spill) settings.
type Producer struct {
	CB                     Breaker
	Resend                 Resend
	WAL                    WAL
	OldProducerKillTimeout time.Duration
}

// Breaker configures the circuit breaker in front of Kafka.
type Breaker struct {
	Interval time.Duration
	Timeout  time.Duration
	Fails    uint32
	Requests uint32
}

// Resend configures how spilled records are carried back to Kafka.
type Resend struct {
	Period    time.Duration
	RateLimit float64
}

// WAL configures when records are written to JetStream, and the
// JetStream that holds them.
type WAL struct {
	Mode          string
	InMemory      bool
	Path          string
	AlwaysTopics  []string
	DisableTopics []string

	Stream         string        // the JetStream stream's name
	SubjectPrefix  string        // subjects are PREFIX.wal.TOPIC, PREFIX.spill.TOPIC, PREFIX.dlq.TOPIC
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

// Security configures who may produce, and to which topics.
type Security struct {
	// APIKeys map the SHA-256 (hex) of an API key to its principal.
	APIKeys map[string]string
	// RequireCredentials refuses requests without an API key (401).
	RequireCredentials bool
	// AllowTopics is the global topic allow-list (globs); empty: any.
	AllowTopics []string
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

// defaults holds every key Spillway reads, other than kafka.*, with its
// default. A key missing here is unknown and rejected.
var defaults = map[string]any{
	"server.http.listen":                            ":18080",
	"server.http.read_header_timeout":               "5s",
	"server.http.read_timeout":                      "60s",
	"server.http.write_timeout":                     "60s",
	"server.http.idle_timeout":                      "120s",
	"server.http.max_body_bytes":                    16 << 20,
	"server.grpc.listen":                            ":18282",
	"server.grpc.max.request.size":                  4 << 20,
	"server.grpc.keepalive.time":                    "30s",
	"server.grpc.keepalive.timeout":                 "10s",
	"server.grpc.keepalive.min_time":                "5s",
	"server.grpc.stream_window":                     64,
	"server.grpc.monitoring.enable":                 true, // kafka-ambassador's; metrics are always on
	"server.grpc.monitoring.histogram.enable":       true, // kafka-ambassador's; histograms are always on
	"server.monitoring.listen":                      ":28080",
	"server.monitoring.max_topic_labels":            100,
	"server.monitoring.max_principal_labels":        100,
	"server.monitoring.max_library_labels":          50,
	"server.tls.cert":                               "",
	"server.tls.key":                                "",
	"server.tls.client_ca":                          "",
	"server.tls.client_auth":                        ClientAuthNone,
	"server.tls.principal_from":                     PrincipalFromCN,
	"server.shutdown_timeout":                       "30s",
	"server.max_in_flight_records":                  100000,
	"producer.cb.interval":                          "0s",
	"producer.cb.timeout":                           "20s",
	"producer.cb.fails":                             5,
	"producer.cb.requests":                          3,
	"producer.resend.period":                        "33s",
	"producer.resend.rate_limit":                    10000,
	"producer.wal.mode":                             ModeFallback,
	"producer.wal.in_memory":                        false,
	"producer.wal.path":                             "data/wal",
	"producer.wal.always_topics":                    []string{},
	"producer.wal.disable_topics":                   []string{},
	"producer.wal.stream":                           "SPILLWAY",
	"producer.wal.subject_prefix":                   "spillway",
	"producer.wal.listen":                           "127.0.0.1:4222",
	"producer.wal.nats.urls":                        []string{},
	"producer.wal.nats.credentials":                 "",
	"producer.wal.nats.tls.ca":                      "",
	"producer.wal.nats.tls.cert":                    "",
	"producer.wal.nats.tls.key":                     "",
	"producer.wal.replicas":                         1,
	"producer.wal.max_bytes":                        1 << 30,
	"producer.wal.max_age":                          "0s",
	"producer.wal.publish_timeout":                  "5s",
	"producer.wal.ack_wait":                         "60s",
	"producer.old_producer_kill_timeout":            "0s",
	"security.api_keys":                             []any{},
	"security.require_credentials":                  false,
	"security.allow_topics":                         []string{},
	"security.rate_limit.records_per_second":        0,
	"security.rate_limit.bytes_per_second":          0,
	"security.rate_limit.global_records_per_second": 0,
	"security.rate_limit.global_bytes_per_second":   0,
	"security.jwt.jwks_file":                        "",
	"security.jwt.jwks_url":                         "",
	"security.jwt.refresh_interval":                 "5m",
	"security.jwt.issuer":                           "",
	"security.jwt.audience":                         "",
	"security.jwt.principal_claim":                  "sub",
	"security.jwt.leeway":                           "30s",
	"validation.rules":                              []any{},
	"topic_mapping":                                 []any{},
	"mirrors":                                       []any{},
	"forward.rate_limit":                            0,
	"forward.monitoring.listen":                     ":28081",
	"resend.monitoring.listen":                      ":28082",
	"kafka.brokers":                                 []string{},
	"global.log.level":                              "info",
	"global.log.encoding":                           "json",
}

// Keys returns every configuration key other than the kafka.* properties,
// with its default.
func Keys() map[string]any { return maps.Clone(defaults) }

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

// Parse is Load with the file's content given.
func Parse(file []byte, environ []string) (*Config, error) {
	k := koanf.New(".")
	if err := k.Load(confmap.Provider(defaults, "."), nil); err != nil {
		return nil, fmt.Errorf("load defaults: %w", err)
	}
	if len(file) > 0 {
		if err := k.Load(rawbytes.Provider(file), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("parse configuration file: %w", err)
		}
	}
	env, warnings := envOverrides(environ)
	if err := k.Load(confmap.Provider(env, "."), nil); err != nil {
		return nil, fmt.Errorf("load environment: %w", err)
	}

	k, errs := resolveSecrets(k, environ)
	for _, key := range k.Keys() {
		if _, ok := defaults[key]; ok || strings.HasPrefix(key, "kafka.") || strings.HasPrefix(key, "global.log.") || strings.HasPrefix(key, "security.acl.") {
			continue
		}
		errs = append(errs, fmt.Errorf("unknown configuration key %q", key))
	}

	g := getter{k: k}
	c := &Config{
		Server: Server{
			HTTP: HTTP{
				Listen:            g.address("server.http.listen"),
				ReadHeaderTimeout: g.duration("server.http.read_header_timeout"),
				ReadTimeout:       g.duration("server.http.read_timeout"),
				WriteTimeout:      g.duration("server.http.write_timeout"),
				IdleTimeout:       g.duration("server.http.idle_timeout"),
				MaxBodyBytes:      int64(g.positiveInt("server.http.max_body_bytes")),
			},
			GRPC: GRPC{
				Listen:           g.address("server.grpc.listen"),
				MaxRequestSize:   g.positiveInt("server.grpc.max.request.size"),
				KeepaliveTime:    g.duration("server.grpc.keepalive.time"),
				KeepaliveTimeout: g.duration("server.grpc.keepalive.timeout"),
				KeepaliveMinTime: g.duration("server.grpc.keepalive.min_time"),
				StreamWindow:     g.positiveInt("server.grpc.stream_window"),
			},
			Monitoring: Monitoring{
				Listen:             g.address("server.monitoring.listen"),
				MaxTopicLabels:     g.positiveInt("server.monitoring.max_topic_labels"),
				MaxPrincipalLabels: g.positiveInt("server.monitoring.max_principal_labels"),
				MaxLibraryLabels:   g.positiveInt("server.monitoring.max_library_labels"),
			},
			TLS: ServerTLS{
				CertFile:      g.str("server.tls.cert"),
				KeyFile:       g.str("server.tls.key"),
				ClientCAFile:  g.str("server.tls.client_ca"),
				ClientAuth:    g.oneOf("server.tls.client_auth", ClientAuthNone, ClientAuthOptional, ClientAuthRequire),
				PrincipalFrom: g.oneOf("server.tls.principal_from", PrincipalFromCN, PrincipalFromSANDNS, PrincipalFromSANEmail, PrincipalFromSANURI),
			},
			ShutdownTimeout:    g.duration("server.shutdown_timeout"),
			MaxInFlightRecords: g.positiveInt("server.max_in_flight_records"),
		},
		Producer: Producer{
			CB: Breaker{
				Interval: g.duration("producer.cb.interval"),
				Timeout:  g.duration("producer.cb.timeout"),
				Fails:    uint32(g.positiveInt("producer.cb.fails")),
				Requests: uint32(g.positiveInt("producer.cb.requests")),
			},
			Resend: Resend{
				Period:    g.duration("producer.resend.period"),
				RateLimit: g.rate("producer.resend.rate_limit"),
			},
			WAL: WAL{
				Mode:          g.oneOf("producer.wal.mode", ModeFallback, ModeAlways, ModeDisable),
				InMemory:      g.boolean("producer.wal.in_memory"),
				Path:          g.str("producer.wal.path"),
				AlwaysTopics:  g.topics("producer.wal.always_topics"),
				DisableTopics: g.topics("producer.wal.disable_topics"),
				Stream:        g.str("producer.wal.stream"),
				SubjectPrefix: g.str("producer.wal.subject_prefix"),
				Listen:        g.address("producer.wal.listen"),
				NATS: NATS{
					URLs:        g.strings("producer.wal.nats.urls"),
					Credentials: g.str("producer.wal.nats.credentials"),
					TLS: TLS{
						CAFile:   g.str("producer.wal.nats.tls.ca"),
						CertFile: g.str("producer.wal.nats.tls.cert"),
						KeyFile:  g.str("producer.wal.nats.tls.key"),
					},
				},
				Replicas:       g.positiveInt("producer.wal.replicas"),
				MaxBytes:       int64(g.positiveInt("producer.wal.max_bytes")),
				MaxAge:         g.duration("producer.wal.max_age"),
				PublishTimeout: g.duration("producer.wal.publish_timeout"),
				AckWait:        g.duration("producer.wal.ack_wait"),
			},
			OldProducerKillTimeout: g.duration("producer.old_producer_kill_timeout"),
		},
		Forward: Forward{
			RateLimit:        g.rate("forward.rate_limit"),
			MonitoringListen: g.address("forward.monitoring.listen"),
		},
		Resend: ResendService{MonitoringListen: g.address("resend.monitoring.listen")},
		Log: Log{
			Level:    g.oneOf("global.log.level", "debug", "info", "warn", "error"),
			Encoding: g.oneOf("global.log.encoding", "json", "console"),
		},
	}
	g.boolean("server.grpc.monitoring.enable")
	g.boolean("server.grpc.monitoring.histogram.enable")
	for _, name := range []string{c.Producer.WAL.Stream, c.Producer.WAL.SubjectPrefix} {
		if name == "" || strings.ContainsAny(name, ". *>\t") {
			g.fail("producer.wal.stream", fmt.Errorf("%q is not allowed: stream names and subject prefixes are one NATS token, without dots, spaces, * or >", name))
		}
	}
	if c.Producer.WAL.Replicas > 5 {
		g.fail("producer.wal.replicas", fmt.Errorf("%d is not allowed; JetStream keeps 1 to 5 replicas", c.Producer.WAL.Replicas))
	}
	for _, t := range c.Producer.WAL.AlwaysTopics {
		if slices.Contains(c.Producer.WAL.DisableTopics, t) {
			g.fail("producer.wal.always_topics", fmt.Errorf("topic %q is also in producer.wal.disable_topics; a topic can be in only one", t))
		}
	}
	checkServerTLS(c.Server.TLS, &g)
	c.Security = parseSecurity(k, &g)
	if len(c.Security.ACL) > 0 && !c.Security.RequireCredentials {
		warnings = append(warnings, "security.acl is set but security.require_credentials is false: a client that sends no credential is held only to security.allow_topics, not to any principal's ACL")
	}
	c.Kafka = parseKafka(k, &g)
	c.Validation, c.TopicMapping, c.Mirrors = parseGovernance(&g)
	c.Warnings = warnings
	errs = append(errs, g.errs...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
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
func envOverrides(environ []string) (map[string]any, []string) {
	byEnv := make(map[string]string, len(defaults))
	for key := range defaults {
		byEnv[EnvName(key)] = key
	}
	out := map[string]any{}
	var warnings []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		key, known := byEnv[name]
		switch {
		case known:
		case strings.HasPrefix(name, EnvPrefix+"KAFKA_") && len(name) > len(EnvPrefix+"KAFKA_"):
			key = "kafka." + strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, EnvPrefix+"KAFKA_"), "_", "."))
		default:
			warnings = append(warnings, fmt.Sprintf("environment variable %s matches no configuration key and is ignored", name))
			continue
		}
		if _, isList := defaults[key].([]string); isList || key == "kafka.brokers" {
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

// getter reads typed values and collects one error per bad key.
type getter struct {
	k    *koanf.Koanf
	errs []error
}

func (g *getter) fail(key string, err error) {
	g.errs = append(g.errs, fmt.Errorf("%s: %w", key, err))
}

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

func (g *getter) oneOf(key string, allowed ...string) string {
	s := strings.ToLower(g.str(key))
	if !slices.Contains(allowed, s) {
		g.fail(key, fmt.Errorf("%q is not allowed; want one of %s", s, strings.Join(allowed, ", ")))
	}
	return s
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

// parseSecurity reads security.*: api_keys is a list of {principal,
// sha256}; acl maps principals to topic globs.
func parseSecurity(k *koanf.Koanf, g *getter) Security {
	sec := Security{
		APIKeys:            map[string]string{},
		RequireCredentials: g.boolean("security.require_credentials"),
		AllowTopics:        g.globs("security.allow_topics"),
		ACL:                map[string][]string{},
		RateLimit: RateLimit{
			RecordsPerSecond:       g.rate("security.rate_limit.records_per_second"),
			BytesPerSecond:         g.rate("security.rate_limit.bytes_per_second"),
			GlobalRecordsPerSecond: g.rate("security.rate_limit.global_records_per_second"),
			GlobalBytesPerSecond:   g.rate("security.rate_limit.global_bytes_per_second"),
		},
	}
	sec.JWT = JWT{
		JWKSFile:        g.str("security.jwt.jwks_file"),
		JWKSURL:         g.str("security.jwt.jwks_url"),
		RefreshInterval: g.duration("security.jwt.refresh_interval"),
		Issuer:          g.str("security.jwt.issuer"),
		Audience:        g.str("security.jwt.audience"),
		PrincipalClaim:  g.str("security.jwt.principal_claim"),
		Leeway:          g.duration("security.jwt.leeway"),
	}
	if j := sec.JWT; j.Enabled() {
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
	keys, ok := k.Get("security.api_keys").([]any)
	if !ok && k.Get("security.api_keys") != nil {
		g.fail("security.api_keys", fmt.Errorf("want a list of {principal, sha256}"))
	}
	for i, e := range keys {
		m, ok := e.(map[string]any)
		principal, _ := m["principal"].(string)
		hash, _ := m["sha256"].(string)
		hash = strings.ToLower(hash)
		if !ok || principal == "" || len(hash) != 64 || strings.Trim(hash, "0123456789abcdef") != "" {
			g.fail(fmt.Sprintf("security.api_keys[%d]", i), fmt.Errorf("want {principal: NAME, sha256: the 64 hex digits of the key's SHA-256}"))
			continue
		}
		sec.APIKeys[hash] = principal
	}
	for _, key := range k.Keys() {
		if principal, ok := strings.CutPrefix(key, "security.acl."); ok {
			sec.ACL[principal] = g.globs(key)
		}
	}
	return sec
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
