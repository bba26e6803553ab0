package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestBufferWaitNoQuorumAtStart starts an ingest while only one of the
// three JetStream nodes runs (no quorum: the stream cannot be created): it
// stays up, /readyz answers 503 with the reason, records still go to
// Kafka (mode fallback, Kafka healthy), and it is ready soon after a second
// node starts: within 4 s of the stream having a leader.
func TestBufferWaitNoQuorumAtStart(t *testing.T) {
	broker := newBroker(t)
	nc := startNATSCluster(t)
	nc.kill(nc.nodes[1])
	nc.kill(nc.nodes[2])
	p := spawnIngest(t, broker, "SPILLWAY_PRODUCER_WAL_NATS_URLS="+nc.urls(), "SPILLWAY_PRODUCER_WAL_REPLICAS=3")
	readyz := "http://" + p.monitorAddr(t) + "/readyz"

	const reason = "not ready: buffer: create or update stream SPILLWAY: "
	var body string
	eventually(t, 30*time.Second, "/readyz to name the buffer", func() bool {
		var status int
		status, body = get(readyz)
		return status == http.StatusServiceUnavailable && strings.HasPrefix(body, reason)
	})
	t.Logf("/readyz: %q", body)

	// Started, serving: a record goes to Kafka meanwhile.
	httpAddr := p.loggedAddr(t, "ingest started", "http")
	status, answer := postStatus(t, httpAddr, "bufferwait", "while waiting")
	if status != http.StatusOK || !strings.Contains(answer, `"outcome":"delivered"`) {
		t.Errorf("a record posted while the buffer waits: %d %s; want 200 delivered", status, answer)
	}
	eventually(t, 10*time.Second, "the record in Kafka", func() bool {
		recs := kcatConsume(t, broker, "bufferwait")
		return len(recs) == 1 && recs[0].Payload != nil && *recs[0].Payload == "while waiting"
	})

	// Some seconds on, it still waits: up, and not ready.
	for until := time.Now().Add(5 * time.Second); time.Now().Before(until); time.Sleep(200 * time.Millisecond) {
		if !p.alive() {
			t.Fatalf("the ingest exited while waiting for the buffer: %v", p.err)
		}
		if status, body := get(readyz); status != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: buffer: ") {
			t.Fatalf("/readyz while there is no quorum: %d %q; want 503 %q...", status, body, "not ready: buffer: ")
		}
	}

	// Ready within 10 s of the second node starting, when JetStream's
	// elections allow it: nats-server elects the meta leader, then the
	// stream's, each after a randomized timeout; with a node back, this
	// took 0.2-10 s for the meta leader and 1.1-5.0 s more for the
	// stream's here, and the ingest was ready 1.7-8.8 s after the node
	// started in ten of twelve runs (12.4 s and over 10 s in the other
	// two). What the ingest adds is checked apart: ready at most one try
	// that JetStream leaves unanswered and one pause (spill.TryTimeout +
	// 1 s) after the stream has a leader, with 1 s for the answer and the
	// polls.
	nc.restart(nc.nodes[1])
	restarted := time.Now()
	var led, ready time.Time
	eventually(t, 30*time.Second, "the ingest ready once a second node runs", func() bool {
		if led.IsZero() && nc.leader("SPILLWAY") != nil {
			led = time.Now()
		}
		if status, _ := get(readyz); status == http.StatusOK {
			ready = time.Now()
			if led.IsZero() { // the ingest's answer came before the poll saw the leader
				led = ready
			}
			return true
		}
		return false
	})
	t.Logf("ready %v after the second node started; the stream had a leader %v after it started",
		ready.Sub(restarted).Round(100*time.Millisecond), led.Sub(restarted).Round(100*time.Millisecond))
	if d := ready.Sub(led); d > 4*time.Second {
		t.Errorf("ready %v after the stream had a leader; want at most 4s", d.Round(100*time.Millisecond))
	}
	if d := ready.Sub(restarted); d > 10*time.Second {
		t.Logf("NOTE: over 10s, as JetStream's elections took %v of it", led.Sub(restarted).Round(100*time.Millisecond))
	}
	if !p.alive() {
		t.Fatalf("the ingest exited: %v", p.err)
	}
	p.logged(t, "buffer ready")
}
