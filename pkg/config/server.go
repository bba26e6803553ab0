package config

import "time"

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
	// MaxRequestBytes bounds one request, and the records of one produce
	// request once decompressed, as Kafka's socket.request.max.bytes
	// does. When server.kafka.max_request_bytes is not set and
	// server.http.max_body_bytes is, it is the latter (which bounded the
	// listener before it had its own key), with a warning.
	MaxRequestBytes int
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

// GRPC configures the gRPC produce API.
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
