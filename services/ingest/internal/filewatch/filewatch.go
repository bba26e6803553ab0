// Package filewatch tells when files have changed, by their sizes and
// modification times, for what the ingest reloads without a restart: its
// configuration, its TLS files and a JWK Set. Polling sees a Kubernetes
// Secret or ConfigMap update (a symlink swap) like any other write.
package filewatch

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// Stamp sums up the files' sizes and modification times; a file that
// cannot be read counts as "missing", an empty path as none.
func Stamp(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err != nil {
			fmt.Fprintf(&b, "%s:missing;", p)
		} else {
			fmt.Fprintf(&b, "%s:%d:%d;", p, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return b.String()
}

// Poller says whether files changed since it last said so, looking at
// them at most once per interval. It is safe for concurrent use.
type Poller struct {
	paths []string
	every time.Duration

	mu      sync.Mutex
	checked time.Time
	last    string
}

// NewPoller starts from the files as they are now.
func NewPoller(every time.Duration, paths ...string) *Poller {
	return &Poller{paths: paths, every: every, checked: time.Now(), last: Stamp(paths...)}
}

// Changed reports a change once: the files differ from the last time it
// returned true (or from when the Poller was made). Between two looks it
// returns false without touching the files.
func (p *Poller) Changed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.checked) < p.every {
		return false
	}
	p.checked = time.Now()
	s := Stamp(p.paths...)
	if s == p.last {
		return false
	}
	p.last = s
	return true
}
