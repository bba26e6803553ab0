package filewatch

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPoller(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(path, []byte("one"), 0o600))
	p := NewPoller(0, path)
	assert.False(t, p.Changed(), "nothing changed yet")
	require.NoError(t, os.WriteFile(path, []byte("two!"), 0o600))
	assert.True(t, p.Changed())
	assert.False(t, p.Changed(), "a change is reported once")
	require.NoError(t, os.Remove(path))
	assert.True(t, p.Changed(), "a file gone is a change")

	slow := NewPoller(time.Hour, path)
	require.NoError(t, os.WriteFile(path, []byte("three"), 0o600))
	assert.False(t, slow.Changed(), "not looked at again within the interval")
}
