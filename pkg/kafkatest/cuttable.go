package kafkatest

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Cuttable is a kfake broker that clients reach only through a TCP proxy:
// the broker advertises the proxy's address, so that Cut cuts Kafka off
// (connections reset, new ones closed at once) without losing what Kafka
// holds, as a dead broker's host would.
type Cuttable struct {
	// Addr is the proxy's address: what clients use.
	Addr string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
}

// advertisedListener reports the proxy's address, so that kfake's metadata
// sends clients to the proxy.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// NewCuttable starts a one-broker kfake cluster (auto-creation on, 3
// partitions by default) behind a proxy; both stop at the test's end.
func NewCuttable(t testing.TB) *Cuttable {
	t.Helper()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listener: %v", err)
	}
	var upstream string
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			upstream = ln.Addr().String()
			return advertisedListener{Listener: ln, addr: front.Addr()}, nil
		}))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	k := &Cuttable{Addr: front.Addr().String(), conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { front.Close(); k.Cut(); wg.Wait() })
	wg.Go(func() {
		for {
			client, err := front.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { k.pipe(client, upstream) })
		}
	})
	return k
}

// pipe copies between client and the broker until either side closes or
// the proxy is cut.
func (k *Cuttable) pipe(client net.Conn, upstream string) {
	server, err := net.Dial("tcp", upstream)
	if err != nil {
		client.Close()
		return
	}
	k.mu.Lock()
	if k.down {
		k.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	k.conns[client], k.conns[server] = true, true
	k.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, client); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); done <- struct{}{} }()
	<-done
	client.Close()
	server.Close()
	<-done
	k.mu.Lock()
	delete(k.conns, client)
	delete(k.conns, server)
	k.mu.Unlock()
}

// Cut resets every connection through the proxy and refuses new ones.
func (k *Cuttable) Cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.down = true
	for c := range k.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as a dead broker's host answers
		}
		c.Close()
	}
}

// Restore lets connections through again.
func (k *Cuttable) Restore() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.down = false
}
