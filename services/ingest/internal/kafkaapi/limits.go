package kafkaapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The bounds a Kafka broker keeps on its connections, kept here so that a
// client cannot tell the listener from a broker and cannot make it hold
// more than a broker would.

// maxRequestSize is the size prefix beyond reason, Kafka's
// socket.request.max.bytes (100 MiB), which is also kgo's and sarama's
// largest request: a larger one closes the connection before a byte of
// it is read. A produce between server.kafka.max_request_bytes and this is
// read on and answered (handleOversized).
const maxRequestSize = 100 << 20

// maxOversizedPartitions bounds the partitions of a produce over the
// request bound, whose answer is built as it is read.
const maxOversizedPartitions = 100_000

// Why the listener closed a connection (the reason label of
// spillway_kafka_connections_closed_total).
const (
	closedIdle     = "idle"              // nothing came for server.kafka.connections_max_idle
	closedSignIn   = "sign_in_timeout"   // no TLS handshake or sign-in within server.kafka.sign_in_timeout
	closedTooLarge = "request_too_large" // a size prefix beyond reason (or before signing in, over 512 KiB)
)

// Why the listener refused a connection (the reason label of
// spillway_kafka_connections_refused_total).
const (
	refusedTotal   = "max_connections"
	refusedAddress = "max_connections_per_address"
)

type metrics struct {
	open    prometheus.Gauge
	refused *prometheus.CounterVec
	closed  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	f := promauto.With(reg)
	m := metrics{
		open: f.NewGauge(prometheus.GaugeOpts{
			Name: "spillway_kafka_connections_open",
			Help: "Connections open on the Kafka-protocol listener.",
		}),
		refused: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_kafka_connections_refused_total",
			Help: "Connections to the Kafka-protocol listener closed as soon as they were accepted, per bound reached.",
		}, []string{"reason"}),
		closed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_kafka_connections_closed_total",
			Help: "Connections the Kafka-protocol listener closed for a bound: idle, sign_in_timeout or request_too_large.",
		}, []string{"reason"}),
	}
	for _, r := range []string{refusedTotal, refusedAddress} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range []string{closedIdle, closedSignIn, closedTooLarge} {
		m.closed.WithLabelValues(r)
	}
	return m
}

// clientAddress is the host of nc's peer: the unit of
// server.kafka.max_connections_per_address.
func clientAddress(nc net.Conn) string {
	a := nc.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(a); err == nil {
		return host
	}
	return a
}

// admit counts c as open, or says which bound it would pass. s.mu is
// held.
func (s *Server) admit(c *conn) string {
	if len(s.conns) >= s.o.MaxConnections {
		return refusedTotal
	}
	if s.perAddr[c.addr] >= s.o.MaxConnectionsPerAddress {
		return refusedAddress
	}
	s.conns[c] = struct{}{}
	s.perAddr[c.addr]++
	return ""
}

// handshake runs the TLS handshake, which must end by by.
func (c *conn) handshake(tc *tls.Conn, by time.Time) error {
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return errors.New("the listener is stopping")
	}
	_ = tc.SetDeadline(by)
	c.mu.Unlock()
	ctx, cancel := context.WithDeadline(c.context(), by)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		if timedOut(err) && !c.isStopping() {
			c.s.m.closed.WithLabelValues(closedSignIn).Inc()
		}
		return err
	}
	_ = tc.SetWriteDeadline(time.Time{})
	return nil
}

func timedOut(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

func (c *conn) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

// closedBy counts a connection whose read ended with err: for why when
// its deadline passed (and not because the listener is stopping).
func (c *conn) closedBy(err error, why string, log *slog.Logger) {
	if !timedOut(err) || c.isStopping() {
		return
	}
	c.s.m.closed.WithLabelValues(why).Inc()
	log.Debug("kafka connection closed", "reason", why)
}

// idleReader reads from the connection, each read bounded by the
// deadline by gives at that moment: a client that keeps sending, however
// slowly, is not idle, and one that stops is.
type idleReader struct {
	c  *conn
	by func() time.Time
}

func (r idleReader) Read(p []byte) (int, error) {
	if len(r.c.peeked) == 0 {
		_ = r.c.nc.SetReadDeadline(r.by())
	}
	return r.c.Read(p)
}

// readBody reads n bytes, holding no more than what arrived (at most
// twice it): a size prefix alone makes the listener allocate 64 KiB, not
// what it says, so that connections that announce large requests and
// send them slowly cost what they sent.
func readBody(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, 64<<10))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(cap(buf), n-len(buf)))
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

// skimmer reads a request's fields from a stream, skipping what is not
// kept. Only the fields of non-flexible Produce versions are read.
type skimmer struct {
	r    *bufio.Reader
	left int // bytes of the request not yet read
	err  error
}

func (s *skimmer) take(n int) []byte {
	if s.err != nil {
		return nil
	}
	if n < 0 || n > s.left {
		s.err = fmt.Errorf("a field of %d bytes in the %d left of the request", n, s.left)
		return nil
	}
	b, err := readBody(s.r, n)
	if err != nil {
		s.err = err
		return nil
	}
	s.left -= n
	return b
}

func (s *skimmer) skip(n int) {
	if s.err != nil {
		return
	}
	if n < 0 || n > s.left {
		s.err = fmt.Errorf("a field of %d bytes in the %d left of the request", n, s.left)
		return
	}
	if _, err := io.CopyN(io.Discard, s.r, int64(n)); err != nil {
		s.err = err
		return
	}
	s.left -= n
}

func (s *skimmer) int16() int16 {
	if b := s.take(2); b != nil {
		return int16(binary.BigEndian.Uint16(b))
	}
	return 0
}

func (s *skimmer) int32() int32 {
	if b := s.take(4); b != nil {
		return int32(binary.BigEndian.Uint32(b))
	}
	return 0
}

// nullableString reads a string of int16 length, nil for -1.
func (s *skimmer) nullableString() *string {
	n := s.int16()
	if n < 0 || s.err != nil {
		return nil
	}
	v := string(s.take(int(n)))
	return &v
}

// count reads an array's length, each element at least least bytes long.
func (s *skimmer) count(least int) int {
	n := int(s.int32())
	if n < 0 {
		return 0
	}
	if s.err == nil && n*least > s.left {
		s.err = fmt.Errorf("an array of %d elements in the %d bytes left of the request", n, s.left)
	}
	if s.err != nil {
		return 0
	}
	return n
}

// handleOversized answers a request of n bytes, over the request bound
// (server.kafka.max_request_bytes) but within maxRequestSize, reading it from
// r. A produce is answered as if the client had sent what fits in
// separate requests: its partitions are taken in order while their record
// batches fit in the bound together, and sent on as any produce; a
// partition that does not fit is answered NOT_ENOUGH_REPLICAS, retriable,
// so that the client sends it again in a smaller request, or
// MESSAGE_TOO_LARGE when it is over the bound on its own. Skipped batches
// are read and dropped, not held: the listener holds at most the bound.
// Any other request this large closes the connection.
func (c *conn) handleOversized(r io.Reader, n int) (kmsg.Response, int32, error) {
	sk := &skimmer{r: bufio.NewReaderSize(io.LimitReader(r, int64(n)), 64<<10), left: n}
	key, version, corr := sk.int16(), sk.int16(), sk.int32()
	cid := sk.nullableString()
	if sk.err != nil {
		return nil, corr, sk.err
	}
	if key != kmsg.Produce.Int16() || !supported(key, version) {
		return nil, corr, fmt.Errorf("%s v%d: a request of %d bytes, over %d", kmsg.NameForKey(key), version, n, c.s.o.MaxRequestBytes)
	}
	if c.sessionOver(time.Now()) {
		return nil, corr, errors.New("a produce after the SASL session ended: the client did not sign in again within its lifetime")
	}
	c.mu.Lock()
	ready := c.saslReady
	c.mu.Unlock()
	if ready {
		return nil, corr, errors.New("a SASL handshake must be followed by SaslAuthenticate")
	}
	var clientID string
	if cid != nil {
		clientID = *cid
	}
	req := kmsg.NewPtrProduceRequest()
	req.Version = version
	req.TransactionID = sk.nullableString()
	req.Acks = sk.int16()
	req.TimeoutMillis = sk.int32()
	var out []skipped
	room, parts := c.s.o.MaxRequestBytes, 0
	for range sk.count(6) {
		rt := kmsg.NewProduceRequestTopic()
		if name := sk.nullableString(); name != nil {
			rt.Topic = *name
		}
		np := sk.count(8)
		if parts += np; parts > maxOversizedPartitions {
			return nil, corr, fmt.Errorf("a produce request of more than %d partitions", maxOversizedPartitions)
		}
		for range np {
			p := sk.int32()
			size := int(sk.int32())
			if size > room {
				sk.skip(size)
				out = append(out, skipped{topic: len(req.Topics), partition: p, alone: size > c.s.o.MaxRequestBytes})
				continue
			}
			rp := kmsg.NewProduceRequestTopicPartition()
			rp.Partition = p
			if size >= 0 {
				rp.Records = sk.take(size)
				room -= size
			}
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
	}
	if sk.err == nil && sk.left != 0 {
		sk.err = fmt.Errorf("%d bytes after the produce request's fields", sk.left)
	}
	if sk.err != nil {
		return nil, corr, fmt.Errorf("produce request of %d bytes: %w", n, sk.err)
	}
	stop := func() {}
	if req.Acks != 0 { // as handle watches a produce
		stop = c.watch()
	}
	resp := c.produceWith([]*kmsg.ProduceRequest{req}, clientID, out)[0]
	stop()
	if req.Acks == 0 {
		return nil, corr, nil
	}
	return resp, corr, nil
}
