package docsync_test

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The rows of the bench table that the model's ingest cores rest on.
// The single-record row's name ends with the load generator it used,
// " (wrk)" or " (loadgen)".
const (
	benchBatched = "ingest, HTTP NDJSON, batches of 500, 8 connections"
	benchSingle  = "ingest, HTTP single records, 256 connections ("
)

// TestScalingModelMatchesBench holds docs/scaling.md to the table that
// `make bench` writes into docs/benchmarks.md, as the metric and
// configuration references are held to the code: when the table is
// written again with other figures, this fails until the model takes
// them. It checks that the model names the table's date; that every
// input whose source is a bench row quotes that row's figures (each bold
// "N µs" is the row's mover CPU per record, each bold "N records/s" its
// records/s); that the model's formulas use the batched and the
// single-record rows' CPU per record, and the multiplier their ratio;
// and that the table's ingest cores and replicas follow from them.
func TestScalingModelMatchesBench(t *testing.T) {
	bench := benchTable(t, readFile(t, "docs/benchmarks.md"))
	doc := readFile(t, "docs/scaling.md")

	stamp := scalingStamp.FindStringSubmatch(doc)
	if assert.NotNil(t, stamp, "docs/scaling.md does not say which `make bench` table it quotes (%q)", scalingStamp) {
		assert.Equal(t, bench.date, stamp[1], "docs/scaling.md quotes the `make bench` table of another day than docs/benchmarks.md's")
		assert.Equal(t, bench.commit, stamp[2], "docs/scaling.md quotes the `make bench` table of another commit than docs/benchmarks.md's")
	}

	cited := 0
	for _, in := range listItems(doc) {
		loc := benchSource.FindStringSubmatchIndex(in)
		if loc == nil {
			continue
		}
		m := []string{in[loc[0]:loc[1]], in[loc[2]:loc[3]]}
		figure := in[:loc[0]]
		cited++
		row, ok := bench.rows[m[1]]
		if !assert.True(t, ok, "docs/scaling.md cites bench row %q, which docs/benchmarks.md's table does not have", m[1]) {
			continue
		}
		figures := boldFigure.FindAllStringSubmatch(figure, -1)
		assert.NotEmpty(t, figures, "docs/scaling.md cites bench row %q without a bold figure from it", m[1])
		for _, f := range figures {
			column := map[string]string{"µs": "mover CPU µs/record", "records/s": "records/s"}[f[2]]
			assert.Equal(t, row[column], f[1], "docs/scaling.md quotes bench row %q's %s as %s %s; docs/benchmarks.md has %s", m[1], column, f[1], f[2], row[column])
		}
	}
	require.NotZero(t, cited, "docs/scaling.md's list of inputs cites no bench row (\"`make bench`, row `NAME`\")")

	batched := bench.cpu(t, benchBatched)
	single := bench.cpu(t, benchSingle)
	var formulas []string
	for _, m := range coresFormula.FindAllStringSubmatch(doc, -1) {
		formulas = append(formulas, m[1])
	}
	assert.Equal(t, []string{batched, single}, formulas, "docs/scaling.md's formulas for ingest cores (%q), batched and then single-record clients, against the bench table's CPU per record", coresFormula)

	if m := multiplier.FindStringSubmatch(doc); assert.NotNil(t, m, "docs/scaling.md does not give the single-record multiplier (%q)", multiplier) {
		assert.Equal(t, []string{single, batched}, m[2:4], "docs/scaling.md's multiplier is not from the bench table's CPU per record")
		assert.Equal(t, fmt.Sprintf("%.1f", parseFloat(t, single)/parseFloat(t, batched)), m[1], "docs/scaling.md's multiplier is not %s / %s", single, batched)
	}

	model := markdownTable(doc, "target")
	require.NotEmpty(t, model, "no model table (first column \"target\") in docs/scaling.md")
	header := model[0]
	columns := 0
	for i, h := range header {
		hm := coresColumn.FindStringSubmatch(h)
		if hm == nil {
			continue
		}
		columns++
		assert.Contains(t, []string{batched, single}, hm[1], "docs/scaling.md's column %q is not from the bench table's CPU per record", h)
		us := parseFloat(t, hm[1])
		for _, r := range model[1:] {
			rm := targetRate.FindStringSubmatch(r[0])
			if !assert.NotNil(t, rm, "docs/scaling.md's model table has a target %q that is not N k or M records/s", r[0]) || !assert.Greater(t, len(r), i+1) {
				continue
			}
			rate := parseFloat(t, rm[1]) * map[string]float64{"k": 1e3, "M": 1e6}[rm[2]]
			cores := rate * us / 1e6 / 0.6
			assert.True(t, roundsTo(t, cores, r[i]), "docs/scaling.md: %s, %q is %s; %s × %s µs / 0.6 is %.3f", r[0], h, r[i], r[0], hm[1], cores)
			replicas := max(2, int(math.Ceil(cores/2-1e-9)))
			assert.Equal(t, strconv.Itoa(replicas), leadingNumber.FindString(r[i+1]), "docs/scaling.md: %s, the replicas after %q (%.3f cores, 2 each, at least 2)", r[0], h, cores)
		}
	}
	assert.Equal(t, 2, columns, "docs/scaling.md's model table has %d columns of ingest cores (%q), want batched and single-record clients", columns, coresColumn)
}

var (
	// benchStamp is the first line bench writes between its markers.
	benchStamp = regexp.MustCompile("Measured by `make bench` \\(`[^`]*`\\) on ([0-9]{4}-[0-9]{2}-[0-9]{2}) at commit ([0-9a-z-]+),")
	// scalingStamp is where docs/scaling.md names the table it quotes.
	scalingStamp = regexp.MustCompile("table\\s+of\\s+`make bench`\\s+on\\s+([0-9]{4}-[0-9]{2}-[0-9]{2})\\s+\\(commit\\s+([0-9a-z-]+)\\)")
	benchSource  = regexp.MustCompile("`make bench`, row `([^`]+)`")
	boldFigure   = regexp.MustCompile(`\*\*([0-9][0-9.]*) (µs|records/s)\*\*`)
	coresFormula = regexp.MustCompile("`rate × ([0-9.]+) µs / 0.6`")
	multiplier   = regexp.MustCompile(`([0-9.]+)\s+times\s+a\s+batched\s+one\s+\(([0-9.]+)\s+/\s+([0-9.]+)\s+µs\)`)
	coresColumn  = regexp.MustCompile(`^ingest cores, .*\(([0-9.]+) µs a record\)$`)
	targetRate   = regexp.MustCompile(`^([0-9]+)(k|M) records/s$`)
	// leadingNumber is a model cell's figure, before any note.
	leadingNumber = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?`)
)

// bench is the table `make bench` wrote into docs/benchmarks.md.
type bench struct {
	date, commit string
	// rows maps a row's measurement (named in the list under the
	// table) to its cells by column name.
	rows map[string]map[string]string
}

// benchTable reads the part of docs/benchmarks.md between bench's
// markers, as tools/bench writes it.
func benchTable(t testing.TB, doc string) bench {
	t.Helper()
	_, part, ok := strings.Cut(doc, "<!-- bench:start -->")
	require.True(t, ok, "no <!-- bench:start --> in docs/benchmarks.md")
	part, _, ok = strings.Cut(part, "<!-- bench:end -->")
	require.True(t, ok, "no <!-- bench:end --> in docs/benchmarks.md")
	stamp := benchStamp.FindStringSubmatch(part)
	require.NotNil(t, stamp, "docs/benchmarks.md's table does not say when it was measured (%q)", benchStamp)
	b := bench{date: stamp[1], commit: stamp[2], rows: map[string]map[string]string{}}
	// The table names a row by its key; the list under it gives each
	// key's measurement, by which docs/scaling.md cites the row.
	measurements := map[string]string{}
	for _, m := range benchKey.FindAllStringSubmatch(part, -1) {
		measurements[m[1]] = m[2]
	}
	table := markdownTable(part, "row")
	require.NotEmpty(t, table, "no bench table (first column \"row\") in docs/benchmarks.md")
	for _, r := range table[1:] {
		cells := map[string]string{}
		for i, name := range table[0] {
			if i < len(r) {
				cells[name] = r[i]
			}
		}
		key := strings.Trim(r[0], "`")
		name, ok := measurements[key]
		require.True(t, ok, "docs/benchmarks.md's table has a row %q that the list under it does not name", key)
		b.rows[name] = cells
	}
	require.Len(t, b.rows, len(measurements), "docs/benchmarks.md's list under the table names rows the table does not have")
	return b
}

// benchKey is an item of the list under the bench table: a row's key and
// its measurement.
var benchKey = regexp.MustCompile("(?m)^- `([^`]+)`: (.+)$")

// cpu is the mover's CPU µs per record of the one row whose name starts
// with prefix, as the table writes it.
func (b bench) cpu(t testing.TB, prefix string) string {
	t.Helper()
	var found []string
	for name, cells := range b.rows {
		if strings.HasPrefix(name, prefix) {
			found = append(found, cells["mover CPU µs/record"])
		}
	}
	require.Len(t, found, 1, "docs/benchmarks.md's table should have one row %q…", prefix)
	require.NotEmpty(t, found[0], "docs/benchmarks.md's row %q… has no mover CPU per record", prefix)
	return found[0]
}

// listItems returns the items of doc's bulleted lists, each with its
// continuation lines joined by spaces: an input of the model is an item
// that names its figure, in bold, and then the bench row it comes from.
func listItems(doc string) []string {
	var out []string
	item := false
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case strings.HasPrefix(line, "- "):
			out = append(out, strings.TrimPrefix(line, "- "))
			item = true
		case item && strings.HasPrefix(line, "  ") && strings.TrimSpace(line) != "":
			out[len(out)-1] += " " + strings.TrimSpace(line)
		default:
			item = false
		}
	}
	return out
}

// markdownTable returns the rows of the first table of doc whose first
// column is named first, the header included, each row as its trimmed
// cells.
func markdownTable(doc, first string) [][]string {
	var out [][]string
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "|") {
			if out != nil {
				break
			}
			continue
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		switch {
		case out == nil && cells[0] == first:
			out = append(out, cells)
		case out != nil && !strings.HasPrefix(cells[0], "---"):
			out = append(out, cells)
		}
	}
	return out
}

// roundsTo says whether cell's figure is v rounded to the decimals the
// cell shows.
func roundsTo(t testing.TB, v float64, cell string) bool {
	t.Helper()
	s := leadingNumber.FindString(cell)
	if s == "" {
		return false
	}
	decimals := 0
	if _, frac, ok := strings.Cut(s, "."); ok {
		decimals = len(frac)
	}
	return strconv.FormatFloat(v, 'f', decimals, 64) == s
}

func parseFloat(t testing.TB, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(s, 64)
	require.NoError(t, err)
	return v
}
