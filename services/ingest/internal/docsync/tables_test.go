package docsync_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// maxTableLine is a screen's width: the most bytes a line of a Markdown
// table may have in README.md and docs/*.md. A table wider than that
// wraps in a terminal and in a side-by-side diff, and its cells are
// paragraphs; the long explanations go in a list under the table.
const maxTableLine = 120

// TestTableWidth fails for each line of a Markdown table (a line that
// starts with "|") in README.md or docs/*.md that is longer than
// maxTableLine bytes, naming the file, the line and its length.
func TestTableWidth(t *testing.T) {
	files := []string{"README.md"}
	entries, err := os.ReadDir(root + "docs")
	require.NoError(t, err)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".md") {
			files = append(files, "docs/"+e.Name())
		}
	}
	for _, f := range files {
		for i, line := range strings.Split(readFile(t, f), "\n") {
			if strings.HasPrefix(line, "|") && len(line) > maxTableLine {
				t.Errorf("%s:%d: a table line of %d bytes; at most %d", f, i+1, len(line), maxTableLine)
			}
		}
	}
}
