package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// memoryCgroup is a memory cgroup bench made, below its own, with a limit:
// a process moved into it is killed by the kernel past the limit, as a
// container's would be.
type memoryCgroup struct {
	dir string
	v2  bool
}

// newMemoryCgroup makes a memory cgroup limited to limit bytes below the
// one bench runs in (cgroup v1 or v2; it needs the right to write there,
// root in a container). The error says why it could not.
func newMemoryCgroup(limit int64) (*memoryCgroup, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("spillway-bench-%d", os.Getpid())
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var cg *memoryCgroup
		switch {
		case strings.Contains(","+parts[1]+",", ",memory,"):
			cg = &memoryCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", parts[2], name)}
		case parts[0] == "0" && parts[1] == "":
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
				continue // a v1 host's empty v2 hierarchy
			}
			cg = &memoryCgroup{dir: filepath.Join("/sys/fs/cgroup", parts[2], name), v2: true}
		default:
			continue
		}
		if err := os.Mkdir(cg.dir, 0o755); err != nil {
			return nil, err
		}
		file, value := "memory.limit_in_bytes", strconv.FormatInt(limit, 10)
		if cg.v2 {
			file = "memory.max"
		}
		if err := os.WriteFile(filepath.Join(cg.dir, file), []byte(value), 0o644); err != nil {
			cg.remove()
			return nil, err
		}
		return cg, nil
	}
	return nil, errors.New("no memory cgroup in /proc/self/cgroup")
}

// add moves pid into the cgroup.
func (cg *memoryCgroup) add(pid int) error {
	return os.WriteFile(filepath.Join(cg.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

// remove deletes the cgroup, once the processes in it have ended.
func (cg *memoryCgroup) remove() { _ = os.Remove(cg.dir) }
