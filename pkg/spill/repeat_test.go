package spill_test

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/pkg/spill"
	"github.com/spillway/spillway/pkg/spill/embeddednats"
)

// ackHolder is a TCP proxy in front of a NATS server that forwards
// everything, except that it swallows the acknowledgements JetStream
// sends: the next holdN of them, or all (holdAll). The publish reached
// JetStream; only its answer is lost, as when the server is slow or a
// connection drops it.
type ackHolder struct {
	addr    string
	holdN   atomic.Int64
	holdAll atomic.Bool
	held    atomic.Int64
}

func newAckHolder(t *testing.T, upstream string) *ackHolder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	h := &ackHolder{addr: ln.Addr().String()}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			t.Cleanup(func() { _ = c.Close(); _ = u.Close() })
			go func() { _, _ = io.Copy(u, c) }()
			go h.serverToClient(u, c)
		}
	}()
	return h
}

// serverToClient copies the server's protocol to the client, message by
// message, leaving out the acknowledgements held.
func (h *ackHolder) serverToClient(u, c net.Conn) {
	r := bufio.NewReaderSize(u, 64<<10)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		var payload []byte
		if strings.HasPrefix(line, "MSG ") || strings.HasPrefix(line, "HMSG ") {
			f := strings.Fields(line)
			n, _ := strconv.Atoi(f[len(f)-1])
			payload = make([]byte, n+2)
			if _, err := io.ReadFull(r, payload); err != nil {
				return
			}
			if h.hold(f[1], string(payload)) {
				continue
			}
		}
		if _, err := c.Write(append([]byte(line), payload...)); err != nil {
			return
		}
	}
}

// hold says whether to swallow a message to subject.
func (h *ackHolder) hold(subject, payload string) bool {
	if !strings.HasPrefix(subject, "_INBOX.") || !strings.Contains(payload, `"stream"`) {
		return false
	}
	if h.holdAll.Load() || h.holdN.Add(-1) >= 0 {
		h.held.Add(1)
		return true
	}
	return false
}

// startBehindHolder starts an embedded JetStream and a Buffer connected
// to it through an ackHolder.
func startBehindHolder(t *testing.T, timeout string) (*spill.Buffer, *ackHolder, func() uint64) {
	t.Helper()
	c := walConfig(t, "SPILLWAY_PRODUCER_WAL_PUBLISH_TIMEOUT="+timeout)
	srv, err := embeddednats.Start(c, discard)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	h := newAckHolder(t, strings.TrimPrefix(srv.ClientURL(), "nats://"))
	viaProxy := c
	viaProxy.Listen = h.addr
	nc, js, err := spill.Dial(viaProxy, nil, "test", discard)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	require.NoError(t, spill.EnsureStream(t.Context(), js, c))
	stored := func() uint64 {
		s, err := js.Stream(t.Context(), c.Stream)
		require.NoError(t, err)
		info, err := s.Info(t.Context())
		require.NoError(t, err)
		return info.State.Msgs
	}
	return spill.NewBuffer(js, c), h, stored
}

// TestPublishRepeatedWhenTheAckIsLost: JetStream stores each record but
// its acknowledgement never reaches the ingest. Half-way to the publish
// timeout the records are published again under the same message id;
// JetStream drops the copies and acknowledges them, so each record is
// answered buffered and stored once.
func TestPublishRepeatedWhenTheAckIsLost(t *testing.T) {
	b, h, stored := startBehindHolder(t, "2s")
	h.holdN.Store(20) // the first publish's acknowledgements
	res := b.Publish(t.Context(), spill.Spilled, batchOf(20), "unavailable")
	for i, r := range res {
		require.Equal(t, record.Buffered, r.Outcome, "record %d: %v", i, r.Err)
	}
	assert.EqualValues(t, 20, h.held.Load(), "every first acknowledgement was held")
	assert.EqualValues(t, 20, stored(), "each record stored once: the repeats were dropped as duplicates")
	assert.Zero(t, spill.PendingAcks(b))
}

// TestPublishOutcomeUnknown: when neither the publish nor its repeat is
// acknowledged, the record fails as unavailable (503) with a message that
// says the outcome is unknown: JetStream did store it.
func TestPublishOutcomeUnknown(t *testing.T) {
	b, h, stored := startBehindHolder(t, "1s")
	h.holdAll.Store(true)
	start := time.Now()
	res := b.Publish(t.Context(), spill.Spilled, batchOf(5), "unavailable")
	assert.Less(t, time.Since(start), 5*time.Second, "answered by the publish timeout, with room for a slow machine")
	for _, r := range res {
		require.Equal(t, record.Failed, r.Outcome)
		assert.Equal(t, record.ReasonUnavailable, record.ReasonOf(r.Err))
		assert.Equal(t, spill.ErrOutcomeUnknown, record.ClientMessage(r.Err))
		assert.Contains(t, record.ClientMessage(r.Err), "the outcome is unknown")
	}
	assert.EqualValues(t, 10, h.held.Load(), "both publishes of each record went unanswered")
	assert.EqualValues(t, 5, stored(), "stored, once each, though unanswered")
	assert.Zero(t, spill.PendingAcks(b))
}
