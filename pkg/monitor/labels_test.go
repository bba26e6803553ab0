package monitor

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestBoundedLabels(t *testing.T) {
	b := NewBoundedLabels(2)
	assert.Equal(t, "a", b.Value("a"))
	assert.Equal(t, "b", b.Value("b"))
	assert.Equal(t, OtherLabel, b.Value("c"))
	assert.Equal(t, "a", b.Value("a"), "a value seen before the cap stays")
}
