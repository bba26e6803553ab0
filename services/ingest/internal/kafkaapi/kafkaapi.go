// Package kafkaapi is a listener that speaks Kafka's protocol to
// producers: any Kafka client can point bootstrap.servers at Spillway and
// its records take the same durable path as the HTTP and gRPC APIs
// (delivery), so that when Kafka is down they are buffered and the
// produce still succeeds.
//
// Spillway is the only broker it names and it leads every partition of
// the real cluster's topics. It serves ApiVersions, Metadata, Produce
// (record batches, every codec), InitProducerId (idempotent producers)
// and SASL PLAIN and SCRAM; every other API is answered UNSUPPORTED_VERSION.
// Requests and responses are franz-go's kmsg types: no wire format is
// written by hand here, and only one is read by hand: the fields of a
// produce request over the request bound, read as they arrive so that
// its batches need not be held (handleOversized).
package kafkaapi

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/xdg-go/scram"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// API is the api label of the records this listener sends.
const API = "kafka"

// Sender is the delivery path: one call per request.
type Sender interface {
	// Deliver refuses or sends a request's records, and counts every
	// outcome. It returns one result per record and refusal, in order;
	// records of one unit (a partition's batch) are stored all or none.
	Deliver(ctx context.Context, req record.Request) ([]record.Result, error)
	// PossibleDuplicates counts n records of topic stored while their
	// partition was answered with an error (the buffer failed midway).
	PossibleDuplicates(topic string, n int)
}

// Partitions lists the real cluster's topics with their partition counts,
// and asks it to create topics as a produce would.
type Partitions interface {
	Partitions(ctx context.Context) (map[string]int, error)
	CreateTopics(ctx context.Context, topics []string) (map[string]TopicState, error)
}

// TopicState is what Kafka said of a topic a produce would name: its
// partition count, or the error code it gave instead.
type TopicState struct {
	Partitions int
	ErrorCode  int16
}

// TopicLister lists topics.
type TopicLister interface {
	Topics(ctx context.Context) ([]string, error)
}

// Options are what the listener needs.
type Options struct {
	Sender     Sender
	Partitions Partitions
	// Writable filters topics to those the client in the context may
	// produce to; nil: all.
	Writable func(TopicLister) TopicLister
	// Map is topic_mapping (policy.Policy.Map): a topic a client names
	// that maps to one of the cluster's is shown with its partitions.
	Map func(topic string) string
	// Auth checks SASL PLAIN credentials (API keys) and SCRAM ones
	// (security.scram_users) and says whether credentials are required;
	// nil: none are checked.
	Auth *identity.Authenticator
	// The bounds below are taken as given: their defaults live in
	// pkg/config, which refuses 0, and a test that builds Options itself
	// passes each bound it relies on.
	//
	// MaxRequestBytes bounds one request, and the records of one produce
	// request once decompressed (server.kafka.max_request_bytes);
	// MaxRequestRecords bounds its records.
	MaxRequestBytes   int
	MaxRequestRecords int
	// Advertised is the host:port Metadata names; "": the address each
	// client connected to.
	Advertised string
	// MaxConnections bounds the connections open at once and
	// MaxConnectionsPerAddress those from one client address: one more
	// is closed as soon as it is accepted (server.kafka.max_connections,
	// server.kafka.max_connections_per_address).
	MaxConnections           int
	MaxConnectionsPerAddress int
	// IdleTimeout closes a connection from which no byte arrived for
	// this long, between requests or within one
	// (server.kafka.connections_max_idle).
	IdleTimeout time.Duration
	// SignInTimeout bounds the TLS handshake and signing in, from the
	// moment the connection is accepted (server.kafka.sign_in_timeout).
	SignInTimeout time.Duration
	// IdempotentProducers bounds the producer ids whose last batches are
	// kept to answer their retries, least recently used forgotten first
	// (server.kafka.idempotent_producers).
	IdempotentProducers int
	// Registry receives the listener's metrics; nil: none.
	Registry prometheus.Registerer
	Logger   *slog.Logger
}

// Server serves Kafka's protocol on a listener.
type Server struct {
	o         Options
	m         metrics
	producers *producers

	mu      sync.Mutex
	ln      net.Listener
	conns   map[*conn]struct{}
	perAddr map[string]int // open connections per client address
	closing bool
	wg      sync.WaitGroup
	// lastCounts is the last topic layout Kafka gave; layoutRead is
	// closed when the reading of it under way ends (nil: none is), and
	// layoutErr is how the last reading failed. bg ends such readings at
	// Shutdown.
	lastCounts map[string]int
	layoutRead chan struct{}
	layoutErr  error
	bg         context.Context
	stopBg     context.CancelFunc
}

// New returns a server; Serve serves it.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	bg, stopBg := context.WithCancel(context.Background())
	return &Server{o: o, m: newMetrics(o.Registry), producers: newProducers(o.IdempotentProducers, o.Registry),
		conns: map[*conn]struct{}{}, perAddr: map[string]int{}, bg: bg, stopBg: stopBg}
}

// ErrServerClosed is what Serve returns after Shutdown.
var ErrServerClosed = errors.New("kafka listener closed")

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		c := &conn{s: s, nc: nc, addr: clientAddress(nc)}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			_ = nc.Close()
			return ErrServerClosed
		}
		if refused := s.admit(c); refused != "" {
			s.mu.Unlock()
			s.m.refused.WithLabelValues(refused).Inc()
			s.o.Logger.Debug("kafka connection refused", "remote", nc.RemoteAddr().String(), "reason", refused)
			_ = nc.Close()
			continue
		}
		s.wg.Add(1)
		s.mu.Unlock()
		s.m.open.Inc()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			if s.perAddr[c.addr]--; s.perAddr[c.addr] <= 0 {
				delete(s.perAddr, c.addr)
			}
			s.mu.Unlock()
			s.m.open.Dec()
		}()
	}
}

// Shutdown stops accepting, lets each connection finish the request it
// is handling (its answer is written), closes it, and waits for them
// until ctx ends; then it closes those left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.stopBg()
	if s.ln != nil {
		_ = s.ln.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			_ = c.nc.Close()
		}
		s.mu.Unlock()
		<-done
		return fmt.Errorf("kafka listener: requests still running at the deadline were cut off: %w", ctx.Err())
	}
}

// conn is one client connection. Requests are handled one at a time, in
// order, as a broker does.
type conn struct {
	s    *Server
	nc   net.Conn
	addr string // the client's address, without its port

	mu       sync.Mutex
	stopping bool
	busy     bool

	software, softwareVersion string
	// authed is the principal SASL established; nil before. sessionEnd is
	// when its session ends (zero: never), unless it signs in again.
	authed     *identity.Client
	sessionEnd time.Time
	// signed says the connection may send more than ApiVersions and SASL
	// (signedIn): once true it stays so.
	signed    bool
	saslReady bool // a SaslHandshake chose a mechanism, whose exchange is not over
	saslMech  string
	scram     *scram.ServerConversation // SCRAM's exchange, between its two steps

	// ctx ends when the connection closes, or when its client is seen to
	// leave while a produce waits (watch); nil outside serve.
	ctx    context.Context
	cancel context.CancelFunc
	// peeked are the bytes watch read while a produce waited, for the
	// next reads; peekErr is the error it met (the client left).
	peeked  []byte
	peekErr error
	// after are the answers to the requests pipelined behind the one
	// handle answers (pipelined), written after its own.
	after []reply
}

// context is the connection's context: it ends when the connection
// closes.
func (c *conn) context() context.Context {
	if c.ctx == nil {
		return context.Background()
	}
	return c.ctx
}

// Read reads the connection: the bytes watch read first.
func (c *conn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.peeked = c.peeked[n:]
		return n, nil
	}
	if c.peekErr != nil {
		return 0, c.peekErr
	}
	return c.nc.Read(p)
}

// maxPeek bounds what watch reads ahead of the next request: past it, it
// stops watching, and the client's next requests wait in its socket as
// they would without it.
const maxPeek = 1 << 20

// watch reads the connection while a produce waits for Kafka, and ends
// the connection's context when the client closes it: a client that left
// is not spilled (delivery), as over HTTP. What it reads (the client's
// next requests, pipelined) is kept for the next reads. The function it
// returns stops it, and must be called before the connection is read
// again.
func (c *conn) watch() func() {
	if c.ctx == nil {
		return func() {}
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4<<10)
		for len(c.peeked) < maxPeek && c.peekErr == nil {
			n, err := c.nc.Read(buf)
			c.peeked = append(c.peeked, buf[:n]...)
			switch {
			case err == nil:
			case timedOut(err): // stopped
				return
			default:
				c.peekErr = err
				c.cancel()
				return
			}
		}
	}()
	return func() {
		_ = c.nc.SetReadDeadline(time.Now())
		<-done
	}
}

// stop ends the connection after the request it handles, or at once
// when it waits for one.
func (c *conn) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopping = true
	if !c.busy {
		_ = c.nc.SetReadDeadline(time.Now())
	}
}

func (c *conn) serve() {
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer c.cancel()
	defer c.nc.Close()
	log := c.s.o.Logger.With("remote", c.nc.RemoteAddr().String())
	signInBy := time.Now().Add(c.s.o.SignInTimeout)
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := c.handshake(tc, signInBy); err != nil {
			log.Debug("kafka connection closed: TLS handshake", "error", err)
			return
		}
	}
	size := make([]byte, 4)
	var out []byte
	for {
		signed := c.signedIn()
		// By when the next byte must come, and why the connection closes
		// if it does not.
		by, why := func() time.Time { return time.Now().Add(c.s.o.IdleTimeout) }, closedIdle
		if !signed && signInBy.Before(by()) {
			by, why = func() time.Time {
				if idle := time.Now().Add(c.s.o.IdleTimeout); idle.Before(signInBy) {
					return idle
				}
				return signInBy
			}, closedSignIn
		}
		c.mu.Lock()
		if c.stopping {
			c.mu.Unlock()
			return
		}
		_ = c.nc.SetReadDeadline(by())
		c.mu.Unlock()
		if _, err := io.ReadFull(c, size); err != nil {
			c.closedBy(err, why, log)
			return
		}
		n := binary.BigEndian.Uint32(size)
		limit := uint32(c.s.o.MaxRequestBytes) + 1024
		if !signed {
			limit = min(limit, maxRequestBeforeSignIn)
		}
		if n < 8 {
			return
		}
		if n > limit && (!signed || n > maxRequestSize) {
			log.Debug("kafka request refused: size", "bytes", n, "max", limit)
			c.s.m.closed.WithLabelValues(closedTooLarge).Inc()
			return
		}
		c.mu.Lock()
		c.busy = true
		c.mu.Unlock()
		r := idleReader{c: c, by: by}
		var resp kmsg.Response
		var corr int32
		var err error
		if n > limit {
			// Over the request bound, and not beyond reason: a produce is
			// read on and answered partition by partition, as a broker
			// answers a batch over message.max.bytes.
			resp, corr, err = c.handleOversized(r, int(n))
		} else {
			var body []byte
			if body, err = readBody(r, int(n)); err != nil {
				c.closedBy(err, why, log)
				return
			}
			resp, corr, err = c.handle(body)
		}
		if err != nil {
			if timedOut(err) {
				c.closedBy(err, why, log)
				return
			}
			log.Debug("kafka request not served; closing the connection", "error", err)
			return
		}
		if resp != nil {
			out = appendResponse(out[:0], resp, corr)
			for _, r := range c.after {
				out = appendResponse(out, r.resp, r.corr)
			}
			clear(c.after)
			c.after = c.after[:0]
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.o.IdleTimeout))
			if _, err := c.nc.Write(out); err != nil {
				return
			}
			if cap(out) > 1<<20 {
				out = nil // a large answer is not kept for the connection's life
			}
		}
		c.mu.Lock()
		c.busy = false
		stopping := c.stopping
		c.mu.Unlock()
		if stopping {
			return
		}
	}
}

// maxRequestBeforeSignIn bounds a request on a connection that has not
// signed in, as Kafka's broker bounds one during SASL
// (sasl.server.max.receive.size, 512 KiB): a client that has not said who
// it is cannot make the listener hold server.kafka.max_request_bytes for it.
const maxRequestBeforeSignIn = 512 << 10

// signedIn says whether the connection may send requests other than
// ApiVersions and SASL's: SASL established its principal, or it needs no
// sign-in because credentials are not required or a verified client
// certificate names its principal. A client that offered a certificate
// naming no principal is not signed in either: as a broker whose
// principal builder fails, the listener serves it nothing but SASL.
func (c *conn) signedIn() bool {
	c.mu.Lock()
	signed := c.signed || c.authed != nil
	c.mu.Unlock()
	if signed {
		return true
	}
	if _, err := c.client(""); err != nil {
		return false
	}
	c.mu.Lock()
	c.signed = true
	c.mu.Unlock()
	return true
}

// beforeSignIn are the APIs served to a connection that has not signed
// in, as Kafka's broker serves them on a SASL listener: any other request
// closes the connection.
func beforeSignIn(key int16) bool {
	return key == kmsg.ApiVersions.Int16() || signingIn(key)
}

// signingIn says whether key is one of SASL's: the requests of a sign-in,
// the only ones served once a SASL session has ended.
func signingIn(key int16) bool {
	return key == kmsg.SASLHandshake.Int16() || key == kmsg.SASLAuthenticate.Int16()
}

// appendResponse frames resp: its size, the correlation id, the empty
// tag section of a flexible response header (never for ApiVersions,
// whose response header stays v0), and the body.
func appendResponse(dst []byte, resp kmsg.Response, corr int32) []byte {
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	if resp.IsFlexible() && resp.Key() != kmsg.ApiVersions.Int16() {
		dst = append(dst, 0)
	}
	dst = resp.AppendTo(dst)
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	binary.BigEndian.PutUint32(dst[at+4:], uint32(corr))
	return dst
}

// request is a parsed request with its header.
type request struct {
	key, version int16
	corr         int32
	clientID     string
	kreq         kmsg.Request
	unparsed     bool // an API or version not served: its body was not read
}

// parseRequest reads a request's header and body with kmsg. A request
// whose key kmsg does not know, or whose body does not parse, is an
// error, except ApiVersions, which is answered whatever its version. The
// body of an API or version Spillway does not serve is not read: it is
// answered UNSUPPORTED_VERSION (unparsed).
//
// Of the flexible versions only ApiVersions v3 is served, and its tag
// counts are checked against the bytes left first: kmsg's tag readers
// loop as many times as a tag count says, even past the end of the
// input, so that a 60-byte request with a tag count of 2^32-1 took 3.5 s
// of CPU (found by FuzzParseRequest).
func parseRequest(body []byte) (request, error) {
	r := kbin.Reader{Src: body}
	req := request{key: r.Int16(), version: r.Int16(), corr: r.Int32()}
	if cid := r.NullableString(); cid != nil {
		req.clientID = *cid
	}
	if !r.Ok() {
		return req, errors.New("short request header")
	}
	req.kreq = kmsg.RequestForKey(req.key)
	if req.kreq == nil {
		return req, fmt.Errorf("unknown api key %d", req.key)
	}
	if req.version < 0 {
		return req, fmt.Errorf("api key %d: negative version %d", req.key, req.version)
	}
	if req.key == kmsg.ApiVersions.Int16() && req.version > 3 {
		return req, nil // answered with our ranges in a v0 body
	}
	if req.version > req.kreq.MaxVersion() {
		return req, fmt.Errorf("api key %d: version %d is newer than this server knows", req.key, req.version)
	}
	req.kreq.SetVersion(req.version)
	if req.key != kmsg.ApiVersions.Int16() && (req.key == kmsg.Fetch.Int16() || !supported(req.key, req.version)) {
		req.unparsed = true
		return req, nil
	}
	if req.kreq.IsFlexible() {
		if !tagsFit(r) {
			return req, errors.New("request header: more tags than bytes")
		}
		kmsg.SkipTags(&r)
		if !r.Ok() {
			return req, errors.New("short request header")
		}
	}
	if req.key == kmsg.ApiVersions.Int16() && req.version == 3 {
		b := r
		b.CompactString()
		b.CompactString()
		if !b.Ok() || !tagsFit(b) {
			req.version = 4 // answered as a version we do not know
			return req, nil
		}
	}
	if err := req.kreq.ReadFrom(r.Src); err != nil {
		if req.key == kmsg.ApiVersions.Int16() {
			req.version = 4 // answered as a version we do not know
			return req, nil
		}
		return req, fmt.Errorf("api key %d v%d: %w", req.key, req.version, err)
	}
	return req, nil
}

// tagsFit says whether the tag count at r can be true: each tag takes
// two bytes at least.
func tagsFit(r kbin.Reader) bool {
	n := r.Uvarint()
	return r.Ok() && int64(n)*2 <= int64(len(r.Src))
}

// handle answers one request; a nil response writes nothing (acks 0).
func (c *conn) handle(body []byte) (kmsg.Response, int32, error) {
	req, err := parseRequest(body)
	if err != nil {
		return nil, req.corr, err
	}
	if !beforeSignIn(req.key) && !c.signedIn() {
		cl, err := c.client(req.clientID)
		cl.Principal = identity.Anonymous // a claimed id is no label of the client's making
		_, _ = c.s.o.Sender.Deliver(identity.With(c.context(), cl), record.Request{API: API, Err: &record.Error{Reason: record.ReasonUnauthenticated, Message: "not signed in"}})
		return nil, req.corr, fmt.Errorf("%s before signing in: %w", kmsg.NameForKey(req.key), err)
	}
	if !signingIn(req.key) && c.sessionOver(time.Now()) {
		return nil, req.corr, fmt.Errorf("%s after the SASL session ended: the client did not sign in again within its lifetime", kmsg.NameForKey(req.key))
	}
	if req.key == kmsg.ApiVersions.Int16() {
		return c.apiVersions(req), req.corr, nil
	}
	if req.unparsed || !supported(req.key, req.version) {
		resp, err := unsupported(req.kreq)
		return resp, req.corr, err
	}
	if c.saslReady && req.key != kmsg.SASLAuthenticate.Int16() {
		return nil, req.corr, errors.New("a SASL handshake must be followed by SaslAuthenticate")
	}
	switch r := req.kreq.(type) {
	case *kmsg.MetadataRequest:
		return c.metadata(r, req.clientID), req.corr, nil
	case *kmsg.ProduceRequest:
		if r.Acks == 0 { // a client that does not wait for the answer has not left when it goes
			c.produce(r, req.clientID)
			return nil, req.corr, nil
		}
		reqs, corrs := c.pipelined(r, req.corr, req.clientID, len(body))
		stop := c.watch()
		resps := c.produceWith(reqs, req.clientID, nil)
		stop()
		for i, resp := range resps[1:] {
			c.after = append(c.after, reply{resp, corrs[i+1]})
		}
		return resps[0], req.corr, nil
	case *kmsg.InitProducerIDRequest:
		resp := r.ResponseKind().(*kmsg.InitProducerIDResponse)
		if r.TransactionalID != nil {
			// Spillway is at-least-once: no transactions.
			resp.ErrorCode = kerr.TransactionalIDAuthorizationFailed.Code
			return resp, req.corr, nil
		}
		// A random id: unique across replicas and restarts (newProducerID).
		resp.ProducerID = newProducerID()
		resp.ProducerEpoch = 0
		return resp, req.corr, nil
	case *kmsg.SASLHandshakeRequest:
		return c.saslHandshake(r), req.corr, nil
	case *kmsg.SASLAuthenticateRequest:
		resp, err := c.saslAuthenticate(r, req.clientID)
		return resp, req.corr, err
	}
	resp, err := unsupported(req.kreq)
	return resp, req.corr, err
}

// maxPipelined bounds the produce requests served together: Kafka's
// clients keep at most five in flight on a connection
// (max.in.flight.requests.per.connection), and each request's records
// are bounded on their own, decompressed, by
// server.kafka.max_request_bytes: a group holds at most five times that.
const maxPipelined = 5

// reply is a response and the correlation id of its request.
type reply struct {
	resp kmsg.Response
	corr int32
}

// pipelined is first, a produce the client waits for, and the produce
// requests the client sent after it that are already read (peeked while
// an earlier produce waited for Kafka) and may go with it in one
// delivery call (produceWith), with their correlation ids: the next
// requests in a row that are produces of the same client id waiting for
// their answer, within one request's bound in bytes with first's (size
// bytes), maxPipelined in all. Any other request ends the group, and is
// served after it. A Kafka client pipelines up to five produce requests
// on a connection;
// served one at a time, each waited for Kafka's answer to the one
// before it, and the listener moved a fraction of what the client
// could send straight to the broker.
func (c *conn) pipelined(first *kmsg.ProduceRequest, corr int32, clientID string, size int) ([]*kmsg.ProduceRequest, []int32) {
	reqs, corrs := []*kmsg.ProduceRequest{first}, []int32{corr}
	for len(reqs) < maxPipelined && len(c.peeked) >= 4 {
		n := int(binary.BigEndian.Uint32(c.peeked))
		if n < 8 || len(c.peeked) < 4+n || size+n > c.s.o.MaxRequestBytes {
			break
		}
		req, err := parseRequest(c.peeked[4 : 4+n])
		r, ok := req.kreq.(*kmsg.ProduceRequest)
		if err != nil || !ok || req.unparsed || !supported(req.key, req.version) || r.Acks == 0 || req.clientID != clientID || c.sessionOver(time.Now()) {
			break
		}
		c.peeked = c.peeked[4+n:]
		size += n
		reqs, corrs = append(reqs, r), append(corrs, req.corr)
	}
	return reqs, corrs
}

// versions are the APIs served and their version ranges: none flexible
// but ApiVersions v3 (see parseRequest), which every client of Kafka 2.x
// and later speaks (Produce v8 has record errors and their messages; v7
// is zstd's).
//
// Fetch is advertised but not served (a Fetch v7+ is answered
// UNSUPPORTED_VERSION, an older one closes the connection): librdkafka
// infers the record format it may send from the Fetch range too, and
// without Fetch v4 it sends magic 1 batches and turns idempotence and
// zstd off (rdkafka_feature.c: MsgVer2 needs Fetch v4, zstd Fetch v10).
var versions = []struct{ key, min, max int16 }{
	{kmsg.Produce.Int16(), 3, 8},
	{kmsg.Fetch.Int16(), 4, 12}, // advertised only, see above
	{kmsg.Metadata.Int16(), 0, 8},
	{kmsg.SASLHandshake.Int16(), 1, 1}, // v0 would send raw SASL bytes
	{kmsg.ApiVersions.Int16(), 0, 3},
	{kmsg.InitProducerID.Int16(), 0, 1},
	{kmsg.SASLAuthenticate.Int16(), 0, 1},
}

func supported(key, version int16) bool {
	for _, v := range versions {
		if v.key == key {
			return version >= v.min && version <= v.max
		}
	}
	return false
}

func (c *conn) apiVersions(req request) kmsg.Response {
	resp := &kmsg.ApiVersionsResponse{}
	resp.Default()
	if req.version > 3 {
		// As brokers do: a v0 body with the error and our ranges, so that
		// the client retries with a version we speak.
		resp.Version = 0
		resp.ErrorCode = kerr.UnsupportedVersion.Code
	} else {
		resp.Version = req.version
		if r, ok := req.kreq.(*kmsg.ApiVersionsRequest); ok && req.version >= 3 {
			c.mu.Lock()
			c.software, c.softwareVersion = r.ClientSoftwareName, r.ClientSoftwareVersion
			c.mu.Unlock()
		}
	}
	for _, v := range versions {
		k := kmsg.NewApiVersionsResponseApiKey()
		k.ApiKey, k.MinVersion, k.MaxVersion = v.key, v.min, v.max
		resp.ApiKeys = append(resp.ApiKeys, k)
	}
	return resp
}

// client is who sends on this connection: the principal SASL
// established, else the client id it claims; the library is the client
// software ApiVersions v3 named.
func (c *conn) client(clientID string) (identity.Client, error) {
	c.mu.Lock()
	software, version, authed := c.software, c.softwareVersion, c.authed
	c.mu.Unlock()
	var cl identity.Client
	var err error
	if authed != nil {
		cl = *authed
	} else {
		var state *tls.ConnectionState
		if tc, ok := c.nc.(*tls.Conn); ok {
			st := tc.ConnectionState()
			state = &st
		}
		cl, err = identity.FromKafka(clientID, c.s.o.Auth, state)
	}
	cl.Library, cl.Version = identity.ParseUserAgent(software + "/" + version)
	if software == "" {
		cl.Library, cl.Version = identity.Unknown, ""
	}
	return cl, err
}
