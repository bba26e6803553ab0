package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The processes bench started and has not stopped: stopped by their PID
// when bench ends, also on an error or a signal.
var (
	procMu sync.Mutex
	procs  = map[int]*exec.Cmd{}
	logDir string // the services' output, kept for a failed run
	// tempDirs are removed when bench ends: the ingests' stores, wrk's
	// script.
	tempDirs []string
)

// removeTemp removes bench's temporary folders, and its services'
// output unless keepLogs.
func removeTemp(keepLogs bool) {
	for _, d := range tempDirs {
		_ = os.RemoveAll(d)
	}
	if !keepLogs && logDir != "" {
		_ = os.RemoveAll(logDir)
	}
}

// track starts cmd in its own process group (a Ctrl-C in the terminal
// reaches bench, which stops what it started) and remembers it.
func track(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	procMu.Lock()
	procs[cmd.Process.Pid] = cmd
	procMu.Unlock()
	return nil
}

func untrack(cmd *exec.Cmd) {
	procMu.Lock()
	delete(procs, cmd.Process.Pid)
	procMu.Unlock()
}

// stopAll kills every process bench started and still holds, each by its
// PID.
func stopAll() {
	procMu.Lock()
	defer procMu.Unlock()
	for pid, cmd := range procs {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		delete(procs, pid)
	}
}

// fatal stops what bench started and exits.
func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	if logDir != "" {
		fmt.Fprintln(os.Stderr, "bench: the services' output is in", logDir)
	}
	stopAll()
	removeTemp(true)
	os.Exit(1)
}

// service is a long-running process bench started.
type service struct {
	name string
	cmd  *exec.Cmd
	// dir is removed once the process has ended: an ingest's JetStream
	// store, hundreds of MB after the spill loads.
	dir string
	// cgroup, when set, holds the process and is removed once it ended.
	cgroup *memoryCgroup
}

// start runs a binary of -bin (or bench itself, for name "bench") with
// env added to bench's environment; its output goes to a file in logDir.
func start(name string, env []string, args ...string) *service {
	path := filepath.Join(*binDir, name)
	if name == "bench" {
		self, err := os.Executable()
		if err != nil {
			fatal("%v", err)
		}
		path = self
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	if logDir == "" {
		logDir, _ = os.MkdirTemp("", "spillway-bench-logs")
	}
	if f, err := os.CreateTemp(logDir, name+"-*.log"); err == nil {
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := track(cmd); err != nil {
		fatal("start %s: %v", name, err)
	}
	return &service{name: name, cmd: cmd}
}

func (s *service) pid() int { return s.cmd.Process.Pid }

// stop asks the process to end (SIGINT: a service drains and exits), and
// kills it after 30 seconds.
func (s *service) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		fmt.Fprintf(os.Stderr, "bench: %s (pid %d) did not stop in 30s: killed\n", s.name, s.pid())
		_ = s.cmd.Process.Kill()
		<-done
	}
	untrack(s.cmd)
	s.removeDir()
}

func (s *service) removeDir() {
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
	if s.cgroup != nil {
		s.cgroup.remove()
	}
}

// kill ends the process at once.
func (s *service) kill() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	untrack(s.cmd)
	s.removeDir()
}

// exited says whether the process has ended (it is a zombie or gone).
func (s *service) exited() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid()))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// freeAddr is a loopback address whose port was free a moment ago: the
// port every process bench starts is checked this way first.
func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal("no free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitOK polls url until it answers 200, for at most 30 seconds.
func waitOK(s *service, url string) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if s.exited() {
			fatal("%s exited before it was ready", s.name)
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
	fatal("%s not ready in 30s: %s", s.name, url)
}

// waitListening polls addr until it accepts a connection, for at most 10
// seconds.
func waitListening(s *service, addr string) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if s.exited() {
			fatal("%s exited before it listened on %s", s.name, addr)
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			return
		}
	}
	fatal("%s does not listen on %s after 10s", s.name, addr)
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// Linux.
const clockTicks = 100

// cpuSeconds is a process's user and system CPU time (/proc/PID/stat
// fields 14 and 15, every thread's), in seconds; -1 when it cannot be
// read.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	var u, s float64
	if len(f) <= 12 {
		return -1
	}
	if _, err := fmt.Sscan(f[11], &u); err != nil {
		return -1
	}
	if _, err := fmt.Sscan(f[12], &s); err != nil {
		return -1
	}
	return (u + s) / clockTicks
}

// cpuMark is the CPU time of some processes at one moment.
type cpuMark map[int]float64

func markCPU(pids ...int) cpuMark {
	m := cpuMark{}
	for _, pid := range pids {
		if pid > 0 {
			m[pid] = cpuSeconds(pid)
		}
	}
	return m
}

// usPer is pid's CPU µs between the two marks per one of n; 0 when not
// measured.
func usPer(before, after cpuMark, pid int, n float64) float64 {
	b, ok1 := before[pid]
	a, ok2 := after[pid]
	if pid <= 0 || !ok1 || !ok2 || b < 0 || a < 0 || n <= 0 {
		return 0
	}
	return (a - b) * 1e6 / n
}

// peakRSS is a process's peak resident memory in MB (VmHWM).
func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb / 1024
		}
	}
	return 0
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return fmt.Sprintf("%.0f GiB memory", kb/1024/1024)
		}
	}
	return "memory unknown"
}

// bufferedByReason reads spillway_records_buffered_total from a monitoring
// port, summed per reason.
func bufferedByReason(mon string) map[string]float64 {
	resp, err := http.Get("http://" + mon + "/metrics")
	if err != nil {
		fatal("metrics of %s: %v", mon, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(b.String(), "\n") {
		labels, ok := strings.CutPrefix(line, "spillway_records_buffered_total{")
		if !ok {
			continue
		}
		reason := "?"
		if _, r, ok := strings.Cut(labels, `reason="`); ok {
			reason, _, _ = strings.Cut(r, `"`)
		}
		var v float64
		fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
		out[reason] += v
	}
	return out
}
