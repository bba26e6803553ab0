package kafkaapi_test

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/pkg/securitytest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// dialFrom connects to addr from the loopback address from (127.0.0.x),
// so that one test can be several client addresses.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// answered sends an ApiVersions request on c and says whether it was
// answered.
func answered(t *testing.T, c net.Conn) bool {
	t.Helper()
	req := kmsg.NewRequestFormatter(kmsg.FormatterClientID("raw")).AppendRequest(nil, kmsg.NewPtrApiVersionsRequest(), 1)
	if _, err := c.Write(req); err != nil {
		return false
	}
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	size := make([]byte, 4)
	if _, err := io.ReadFull(c, size); err != nil {
		return false
	}
	_, err := io.ReadFull(c, make([]byte, binary.BigEndian.Uint32(size)))
	return err == nil
}

// closedWithin says whether the peer closes c within d: a read ends with
// no byte and an error that is not its own deadline.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(d)))
	n, err := c.Read(make([]byte, 1))
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestConnectionsOverTheBoundsRefused: with server.kafka.max_connections
// 3 and server.kafka.max_connections_per_address 2, a third connection
// from one client address is closed as soon as it is accepted, and so is
// a fourth connection in all; each refusal is counted with its reason,
// and the open connections in a gauge. Once one closes, its address may
// connect again.
func TestConnectionsOverTheBoundsRefused(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_KAFKA_MAX_CONNECTIONS=3", "SPILLWAY_SERVER_KAFKA_MAX_CONNECTIONS_PER_ADDRESS=2")

	a1, a2 := dialFrom(t, "127.0.0.1", in.Kafka), dialFrom(t, "127.0.0.1", in.Kafka)
	require.True(t, answered(t, a1))
	require.True(t, answered(t, a2))
	a3 := dialFrom(t, "127.0.0.1", in.Kafka)
	start := time.Now()
	assert.True(t, closedWithin(t, a3, 5*time.Second), "a third connection from one address is closed")
	assert.Less(t, time.Since(start), time.Second, "at once")
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_kafka_connections_refused_total{reason="max_connections_per_address"}`))

	b1 := dialFrom(t, "127.0.0.2", in.Kafka)
	require.True(t, answered(t, b1), "another address may connect")
	c1 := dialFrom(t, "127.0.0.3", in.Kafka)
	start = time.Now()
	assert.True(t, closedWithin(t, c1, 5*time.Second), "a fourth connection in all is closed")
	assert.Less(t, time.Since(start), time.Second, "at once")
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_kafka_connections_refused_total{reason="max_connections"}`))
	assert.Equal(t, 3.0, ingesttest.Metric(t, in.Monitor, `spillway_kafka_connections_open`))

	require.NoError(t, a1.Close())
	require.Eventually(t, func() bool {
		return ingesttest.Metric(t, in.Monitor, `spillway_kafka_connections_open`) == 2
	}, 5*time.Second, 10*time.Millisecond)
	assert.True(t, answered(t, dialFrom(t, "127.0.0.1", in.Kafka)), "a connection closed frees its place")
}

// TestIdleConnectionsClose: with server.kafka.connections_max_idle
// 500ms, a connection that sends nothing after its request is closed
// after about that long, and counted; one that sends a request every
// 100 ms stays open past it.
func TestIdleConnectionsClose(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_KAFKA_CONNECTIONS_MAX_IDLE=500ms")

	idle, busy := dialFrom(t, "127.0.0.1", in.Kafka), dialFrom(t, "127.0.0.1", in.Kafka)
	require.True(t, answered(t, idle))
	start := time.Now()
	for time.Since(start) < 1500*time.Millisecond {
		require.True(t, answered(t, busy), "a connection in use is not idle")
		time.Sleep(100 * time.Millisecond) // the client's pace, not a wait for a condition
	}
	assert.True(t, closedWithin(t, idle, 5*time.Second), "the idle connection is closed")
	assert.True(t, answered(t, busy))
	assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_kafka_connections_closed_total{reason="idle"}`))
}

// TestSignInDeadline: with server.kafka.sign_in_timeout 500ms, a
// connection that does not sign in (credentials required) is closed
// after about that long though it is not idle, and a TLS connection that
// never starts its handshake is closed too; both are counted.
func TestSignInDeadline(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	t.Run("sasl", func(t *testing.T) {
		in := ingesttest.StartYAML(t, addr, "security:\n  require_credentials: true\n", "SPILLWAY_SERVER_KAFKA_SIGN_IN_TIMEOUT=500ms")
		c := dialFrom(t, "127.0.0.1", in.Kafka)
		start := time.Now()
		require.True(t, answered(t, c), "ApiVersions is answered before signing in")
		assert.True(t, closedWithin(t, c, 5*time.Second), "closed without a sign-in")
		assert.GreaterOrEqual(t, time.Since(start), 400*time.Millisecond)
		assertClosedCounted(t, in.Monitor)
	})
	t.Run("tls", func(t *testing.T) {
		ca := securitytest.NewCA(t, "spillway test CA")
		server := ca.Issue(t, "spillway-ingest", securitytest.LeafOptions{})
		in := ingesttest.StartYAML(t, addr, "server:\n  tls:\n    cert: "+server.CertFile+"\n    key: "+server.KeyFile+"\n",
			"SPILLWAY_SERVER_KAFKA_SIGN_IN_TIMEOUT=500ms")
		c := dialFrom(t, "127.0.0.1", in.Kafka) // no handshake
		assert.True(t, closedWithin(t, c, 5*time.Second), "closed without a TLS handshake")
		assertClosedCounted(t, in.Monitor)
	})
}

// assertClosedCounted waits, at most 5 s, for the one connection closed
// for its sign-in to be counted: the client may see the close before the
// server counts it.
func assertClosedCounted(t *testing.T, monitor string) {
	t.Helper()
	series := `spillway_kafka_connections_closed_total{reason="sign_in_timeout"}`
	assert.Eventually(t, func() bool { return ingesttest.Metric(t, monitor, series) == 1 }, 5*time.Second, 20*time.Millisecond,
		"%s reaches 1", series)
}

// TestKgoDefaultsAgainstASlowBroker: kgo with its default batch settings
// (1 MB a partition, requests up to 100 MiB) against an ingest whose
// Kafka takes 2 s a produce, and whose request bound is 1 MiB: while it
// waits, kgo packs several partitions' megabyte into one request, over
// the bound. No produce request kgo writes goes unanswered (before, the
// listener closed the connection on it), and every record is delivered
// or buffered.
func TestKgoDefaultsAgainstASlowBroker(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	kafkatest.CreateTopic(t, addr, "slow", 4)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=1048576")
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { time.Sleep(2 * time.Second) }) // the broker's delay
		return nil, nil, false
	})

	var unanswered atomic.Int64
	var firstErr sync.Once
	var lost error
	hook := e2eHook(func(key int16, e2e kgo.BrokerE2E) {
		if key == int16(kmsg.Produce) && e2e.Err() != nil {
			unanswered.Add(1)
			firstErr.Do(func() { lost = e2e.Err() })
		}
	})
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.Kafka), kgo.WithHooks(hook))
	require.NoError(t, err)
	t.Cleanup(cl.Close)

	const n = 4000 // 4 MB of incompressible 1 KiB values
	recs := make([]*kgo.Record, n)
	for i := range recs {
		v := make([]byte, 1024)
		_, _ = rand.Read(v)
		recs[i] = &kgo.Record{Topic: "slow", Value: v}
	}
	// kgo retries a record for ever by default: the wait is bounded here.
	done := make(chan error, 1)
	go func() { done <- cl.ProduceSync(t.Context(), recs...).FirstErr() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(60 * time.Second):
		cl.Close() // fails what kgo still holds
		t.Fatalf("records neither delivered nor answered within 60 s; %d produce requests unanswered (first: %v)", unanswered.Load(), lost)
	}
	assert.Zero(t, unanswered.Load(), "produce requests kgo wrote that were never answered (first: %v)", lost)
	delivered := ingesttest.Metric(t, in.Monitor, `spillway_records_delivered_total{topic="slow"}`)
	buffered := max(sumMetric(t, in.Monitor, "spillway_records_buffered_total", `topic="slow"`), 0)
	assert.Equal(t, float64(n), delivered+buffered, "every record delivered or buffered, once")
}

// e2eHook is a kgo hook that sees each request's end.
type e2eHook func(key int16, e2e kgo.BrokerE2E)

func (h e2eHook) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) { h(key, e2e) }

// TestProduceOverTheBoundAnswered: a produce request over the request
// bound (512 KiB here) whose one partition is over it on its own is read
// on and answered MESSAGE_TOO_LARGE for that partition, naming the key, on
// a connection that stays open; a size prefix beyond 100 MiB (Kafka's
// socket.request.max.bytes) closes the connection before a byte of its
// body is read. The bound is server.kafka.max_request_bytes, which leaves
// HTTP bodies to server.http.max_body_bytes; set alone, the old key
// server.http.max_body_bytes still bounds the listener, and HTTP bodies
// with it.
func TestProduceOverTheBoundAnswered(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      string
		httpCode int // what the HTTP API answers a body of the same size
	}{
		{"server.kafka.max_request_bytes", "SPILLWAY_SERVER_KAFKA_MAX_REQUEST_BYTES=524288", http.StatusOK},
		{"server.http.max_body_bytes alone", "SPILLWAY_SERVER_HTTP_MAX_BODY_BYTES=524288", http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := kafkatest.NewCluster(t)
			kafkatest.CreateTopic(t, addr, "big", 1)
			in := ingesttest.Start(t, addr, tc.env)

			v := make([]byte, 768<<10)
			_, _ = rand.Read(v)
			resp := rawProduce(t, in.Kafka, "big", &kmsg.Record{Value: v})
			require.Len(t, resp.Topics, 1)
			require.Len(t, resp.Topics[0].Partitions, 1)
			p := resp.Topics[0].Partitions[0]
			assert.Equal(t, kerr.MessageTooLarge.Code, p.ErrorCode)
			if assert.NotNil(t, p.ErrorMessage) {
				assert.Equal(t, "this partition's records are over 524288 bytes, the most one produce request may hold (server.kafka.max_request_bytes)", *p.ErrorMessage)
			}
			assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="too_large",topic="big"}`))

			code, body := ingesttest.Post(t, in.URL+"/topics/big/messages", "application/octet-stream", string(v))
			assert.Equal(t, tc.httpCode, code, body)

			c := dialFrom(t, "127.0.0.1", in.Kafka)
			_, err := c.Write(binary.BigEndian.AppendUint32(nil, 100<<20+1))
			require.NoError(t, err)
			assert.True(t, closedWithin(t, c, 5*time.Second), "a size prefix over 100 MiB closes the connection")
			assert.Equal(t, 1.0, ingesttest.Metric(t, in.Monitor, `spillway_kafka_connections_closed_total{reason="request_too_large"}`))
		})
	}
}

// TestAnnouncedRequestsCostWhatWasSent: 200 connections that each send
// a 16 MiB size prefix and then trickle a byte every 20 ms grow the
// ingest's heap by less than 64 MB: the listener holds what arrived, not
// what a prefix announced (before, 16 MiB each: over 3 GB).
func TestAnnouncedRequestsCostWhatWasSent(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)

	const conns = 200
	before := ingesttest.HeapAlloc()
	grew := ingesttest.PeakHeapGrowth(before, func() {
		var wg sync.WaitGroup
		for range conns {
			c := dialFrom(t, "127.0.0.1", in.Kafka)
			_, err := c.Write(binary.BigEndian.AppendUint32(nil, 16<<20))
			require.NoError(t, err)
			wg.Go(func() {
				for range 50 {
					if _, err := c.Write([]byte{0}); err != nil {
						return
					}
					time.Sleep(20 * time.Millisecond) // the trickle's pace
				}
			})
		}
		wg.Wait()
	})
	t.Logf("heap grew by %d MB with %d connections announcing 16 MiB each", grew>>20, conns)
	assert.Less(t, grew, uint64(64<<20))
	assert.Equal(t, float64(conns), ingesttest.Metric(t, in.Monitor, `spillway_kafka_connections_open`), "every connection still open")
}
