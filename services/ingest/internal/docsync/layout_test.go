package docsync_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLayoutMatchesTree holds docs/development.md's layout table against
// the folders of the repository that hold Go files: each has a row, and
// each row names such a folder.
func TestLayoutMatchesTree(t *testing.T) {
	doc, err := os.ReadFile(root + "docs/development.md")
	require.NoError(t, err)
	section := string(doc)
	start := strings.Index(section, "\n## Layout\n")
	require.GreaterOrEqual(t, start, 0, "docs/development.md has no ## Layout section")
	section = section[start+1:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\| [^|]+ \\|$").FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1])
	}
	require.NotEmpty(t, documented, "the layout table has no rows")

	var tree []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin" || name == "data" || name == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(name, ".go") {
			dir, err := filepath.Rel(root, filepath.Dir(path))
			if err != nil {
				return err
			}
			tree = append(tree, filepath.ToSlash(dir))
		}
		return nil
	})
	require.NoError(t, err)
	slices.Sort(tree)
	tree = slices.Compact(tree)

	for _, dir := range tree {
		assert.Contains(t, documented, dir, "a folder with Go code that docs/development.md's layout leaves out")
	}
	for _, dir := range documented {
		assert.Contains(t, tree, dir, "a folder in docs/development.md's layout that holds no Go code")
	}
}
