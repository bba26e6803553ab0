package docsync_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/drain"
	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// root is the repository root, from this package's folder.
const root = "../../../../"

// TestMetricsReferenceMatchesCode boots the ingest, the forwarder and the
// resender (with a mirror configured, so that every optional part
// registers its metrics) and compares the metric names each one registers
// with docs/operations.md's metric tables, both ways: every metric a
// service can export is in its table, and every metric in a table is one
// the service registers. The names come from the registries' Describe, so
// a metric vector that has no series yet counts too.
func TestMetricsReferenceMatchesCode(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	mirrors := "mirrors: [{name: dr, topics: [orders], kafka: {brokers: [" + addr + "]}}]\n"
	in := ingesttest.StartYAML(t, addr, mirrors)

	code := map[string]map[string]bool{"ingest": registered(t, in.Registry)}
	for _, role := range []drain.Role{drain.Forwarder, drain.Resender} {
		code[role.Name] = registered(t, startDrain(t, role, addr, in.App.NATSAddr(), in.App.NATSCredentials(), mirrors))
	}

	doc := readFile(t, "docs/operations.md")
	tables := metricTables(doc)
	documented := map[string]map[string]bool{
		"ingest":    union(tables["ingest"], tables["all"]),
		"forwarder": union(tables["drain"], tables["all"]),
		"resender":  union(union(tables["drain"], tables["all"]), tables["resender"]),
	}
	require.NotEmpty(t, documented["ingest"], "no ingest metric table found in docs/operations.md")
	require.NotEmpty(t, documented["forwarder"], "no forwarder and resender metric table found in docs/operations.md")

	// Families documented by a prefix ("`go_*`"): the Go runtime's and the
	// process's, which the client library makes.
	var prefixes []string
	for _, m := range regexp.MustCompile("`([a-z]+_)\\*`").FindAllStringSubmatch(doc, -1) {
		prefixes = append(prefixes, m[1])
	}
	for service, names := range code {
		t.Logf("%s: %d metrics registered: %s", service, len(names), strings.Join(sorted(names), " "))
		for _, name := range sorted(names) {
			if slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
				continue
			}
			assert.True(t, documented[service][name], "the %s exports %s, which docs/operations.md does not list in its table", service, name)
		}
		for _, name := range sorted(documented[service]) {
			assert.True(t, names[name], "docs/operations.md lists %s for the %s, which does not export it", name, service)
		}
	}

	// Every metric named anywhere in the README and the docs (queries,
	// prose) exists in one of the services.
	all := map[string]bool{}
	for _, names := range code {
		maps.Copy(all, names)
	}
	files := []string{"README.md"}
	entries, err := os.ReadDir(root + "docs")
	require.NoError(t, err)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".md") {
			files = append(files, "docs/"+e.Name())
		}
	}
	for _, f := range files {
		for _, name := range metricName.FindAllString(readFile(t, f), -1) {
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suffix); ok && all[b] {
					base = b
				}
			}
			assert.True(t, all[base], "%s names metric %s, which no service exports", f, name)
		}
	}
}

// metricName matches a Spillway metric name in text.
var metricName = regexp.MustCompile(`\bspillway_[a-z0-9_]*[a-z0-9]\b`)

// registered returns the names of every metric registered in reg.
func registered(t *testing.T, reg *prometheus.Registry) map[string]bool {
	t.Helper()
	ch := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	fqName := regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		require.NotNil(t, m, "unexpected descriptor %s", d)
		names[m[1]] = true
	}
	require.NotEmpty(t, names)
	return names
}

// metricTables returns the metric names of docs/operations.md's tables
// (those whose first column is "metric"): the table after "The forwarder
// and resender export" under "drain", the one after "The resender also
// exports" under "resender", the one after "Every service ...
// also exports" under "all", the others under "ingest".
func metricTables(doc string) map[string]map[string]bool {
	out := map[string]map[string]bool{"ingest": {}, "drain": {}, "resender": {}, "all": {}}
	section, inTable := "ingest", false
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case strings.HasPrefix(line, "| metric |"):
			inTable = true
		case inTable && strings.HasPrefix(line, "|"):
			cell, _, _ := strings.Cut(strings.TrimPrefix(line, "|"), "|")
			for _, m := range backticked.FindAllStringSubmatch(cell, -1) {
				out[section][m[1]] = true
			}
		case inTable:
			inTable, section = false, "ingest"
		case strings.Contains(line, "The forwarder and resender export"):
			section = "drain"
		case strings.Contains(line, "The resender also exports"):
			section = "resender"
		case strings.HasPrefix(line, "Every service") && strings.HasSuffix(line, "also exports:"):
			section = "all"
		}
	}
	return out
}

var backticked = regexp.MustCompile("`([a-z0-9_]+)`")

// startDrain runs a forwarder or resender in-process against the broker
// at addr and the ingest's JetStream at natsAddr (signing in with the
// ingest's credentials file), and returns its registry.
func startDrain(t *testing.T, role drain.Role, addr, natsAddr, credentials, yaml string) *prometheus.Registry {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), []string{
		"SPILLWAY_KAFKA_BROKERS=" + addr,
		"SPILLWAY_PRODUCER_WAL_NATS_URLS=nats://" + natsAddr,
		"SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS=" + credentials,
		"SPILLWAY_FORWARD_MONITORING_LISTEN=127.0.0.1:0",
		"SPILLWAY_RESEND_MONITORING_LISTEN=127.0.0.1:0",
		"SPILLWAY_SERVER_SHUTDOWN_TIMEOUT=5s",
	})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(t.Context())
	s, err := drain.NewService(ctx, drain.ServiceOptions{Role: role, Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: reg})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Errorf("the %s did not stop within 10 s", role.Name)
		}
	})
	return reg
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(root + name)
	require.NoError(t, err)
	return string(b)
}

func union(a, b map[string]bool) map[string]bool {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}

func sorted(m map[string]bool) []string { return slices.Sorted(maps.Keys(m)) }
