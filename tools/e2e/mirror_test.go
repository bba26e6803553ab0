package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestFaultMirrorCutOff: a mirror cluster behind the fault proxy is cut
// off mid-load. Every request is still answered 200 by the primary
// cluster (its rate and latency are reported before and during the cut),
// the copies spill to the mirror's own subject, and once the mirror is
// back the resender carries every acknowledged record to it, with its key
// and value.
func TestFaultMirrorCutOff(t *testing.T) {
	parallel(t, loaded)
	// mirrorWorkers is how many batches a mirror sends at once
	// (services/ingest/internal/mirror), one record each here: what may be
	// in flight at the cut. The mirror's message.timeout.ms is long enough
	// (5 s) that no copy times out before the cut on a loaded machine, which
	// would be one more duplicate; the cut itself fails at once.
	const mirrorWorkers = 2
	primary := newBroker(t)
	mirror := newFaultyKafka(t)
	config := filepath.Join(t.TempDir(), "spillway.yaml")
	if err := os.WriteFile(config, []byte(`
mirrors:
  - name: dr
    topics: ["mirrored"]
    kafka:
      brokers: ["`+mirror.addr+`"]
      message.timeout.ms: 5000
`), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startIngest(t, primary, "-config="+config, "SPILLWAY_PRODUCER_CB_TIMEOUT=1s", "SPILLWAY_PRODUCER_CB_FAILS=2")
	natsAddr := in.natsAddr
	mirrored := func(outcome string) float64 {
		return metricValue(t, in.monitorAddr, `spillway_mirror_records_total{mirror="dr",outcome="`+outcome+`"}`)
	}

	loadStart := time.Now()
	l := startLoad(in.httpAddr, "mirrored", 4)
	eventually(t, 30*time.Second, "records mirrored", func() bool { return mirrored("mirrored") >= 200 })
	upFrom, cutAt := loadStart, time.Now()
	mirror.cut()
	before := l.count()
	eventually(t, 30*time.Second, "copies spilled while the mirror is cut off", func() bool {
		return mirrored("spilled") >= 300 && l.count() >= before+300
	})
	restoreAt := time.Now()
	mirror.restore()
	l.finish()

	upRate, upP50, upP99 := l.stats(upFrom, cutAt)
	cutRate, cutP50, cutP99 := l.stats(cutAt, restoreAt)
	t.Logf("primary with the mirror up: %.0f records/s, p50 %v, p99 %v; with the mirror cut off: %.0f records/s, p50 %v, p99 %v",
		upRate, upP50, upP99, cutRate, cutP50, cutP99)
	// Every request answered, and answered 200: not one buffered (202),
	// refused or lost because of the mirror.
	l.requireAnswers(t, http.StatusOK)
	if l.statuses[http.StatusOK] != l.sent || len(l.delivered) != l.sent {
		t.Fatalf("the primary must answer every request 200 whatever the mirror: %d sent, statuses %v, %d distinct ids delivered", l.sent, l.statuses, len(l.delivered))
	}
	waitAllInKafka(t, primary, "mirrored", l, 30*time.Second)

	// The resender, with the same configuration, carries the spilled copies.
	resender := startResender(t, primary, natsAddr, "-config="+config)
	waitInKafka(t, mirror.addr, "mirrored", l, 90*time.Second, promise{
		duplicates: mirrorWorkers,
		why:        "a copy in flight to the mirror at the cut (one per mirror worker) may have reached it before it was spilled",
	})
	if v := metricValue(t, resender, `spillway_records_retried_total{consumer="mirror-dr",reason="timeout"}`); v > 0 {
		t.Logf("the resender retried %v copies after a timeout", v)
	}
	t.Logf("mirror outcomes: mirrored %v, spilled %v, dead-lettered %v, dropped %v",
		mirrored("mirrored"), mirrored("spilled"), mirrored("dead_lettered"), mirrored("dropped"))
	if d := mirrored("dropped"); d != 0 {
		t.Fatalf("%v copies dropped", d)
	}
}

// TestReloadOnSIGHUP: the binary reloads its file on SIGHUP, and keeps
// the rules in force when the new file is bad.
func TestReloadOnSIGHUP(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t)
	config := filepath.Join(t.TempDir(), "spillway.yaml")
	write := func(s string) {
		t.Helper()
		// The file is also watched: make the change invisible to the
		// watcher by keeping the size and the modification time, so that
		// only SIGHUP reloads it.
		fi, err := os.Stat(config)
		if err := os.WriteFile(config, []byte(fmt.Sprintf("%-60s\n", s)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err == nil {
			_ = os.Chtimes(config, fi.ModTime(), fi.ModTime())
		}
	}
	write("security: {allow_topics: [a]}")
	in := startIngest(t, broker, "-config="+config)
	if s, _ := postStatus(t, in.httpAddr, "b", "x"); s != 403 {
		t.Fatalf("topic b before the reload: %d, want 403", s)
	}
	write("security: {allow_topics: [a, b]}")
	if err := in.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the reload", func() bool {
		return metricValue(t, in.monitorAddr, `spillway_config_reloads_total{result="applied"}`) == 1
	})
	if s, _ := postStatus(t, in.httpAddr, "b", "x"); s != 200 {
		t.Fatalf("topic b after the reload: %d, want 200", s)
	}
	write(`security: {allow_topics: ["["]}`)
	if err := in.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the rejected reload", func() bool {
		return metricValue(t, in.monitorAddr, `spillway_config_reloads_total{result="rejected"}`) == 1
	})
	if s, _ := postStatus(t, in.httpAddr, "b", "x"); s != 200 {
		t.Fatalf("topic b after a rejected reload: %d, want 200 (the rules before it)", s)
	}
}
