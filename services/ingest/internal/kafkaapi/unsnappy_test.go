package kafkaapi

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
)

// xerialFrame frames chunks as xerial snappy's stream does (the Java
// client writes it): a 16-byte header, then each chunk as a big-endian
// length and a snappy block.
func xerialFrame(chunks ...[]byte) []byte {
	out := append([]byte{}, xerial...)
	out = binary.BigEndian.AppendUint32(out, 1) // version
	out = binary.BigEndian.AppendUint32(out, 1) // oldest compatible version
	for _, c := range chunks {
		block := s2.EncodeSnappy(nil, c)
		out = binary.BigEndian.AppendUint32(out, uint32(len(block)))
		out = append(out, block...)
	}
	return out
}

// TestUnsnappy: a raw block and xerial chunks decode to their bytes, in
// order; past room the answer is MESSAGE_TOO_LARGE, and a damaged chunk
// is CORRUPT_MESSAGE.
func TestUnsnappy(t *testing.T) {
	a := bytes.Repeat([]byte("first chunk "), 300)
	b := []byte("second")
	c := bytes.Repeat([]byte{7, 8, 9}, 5000)
	all := append(append(append([]byte{}, a...), b...), c...)
	tooLarge := &parseError{code: kerr.MessageTooLarge.Code}

	got, perr := unsnappy(s2.EncodeSnappy(nil, all), len(all), tooLarge)
	require.Nil(t, perr)
	assert.Equal(t, all, got, "a raw block")

	got, perr = unsnappy(xerialFrame(a, b, c), len(all), tooLarge)
	require.Nil(t, perr)
	assert.Equal(t, all, got, "xerial chunks, each after the one before")

	_, perr = unsnappy(xerialFrame(a, b, c), len(all)-1, tooLarge)
	assert.Same(t, tooLarge, perr, "one byte past room")

	// A block that says it holds 10 bytes, and holds a literal of 3.
	damaged := xerialFrame(a)
	damaged = binary.BigEndian.AppendUint32(damaged, 5)
	damaged = append(damaged, 10, 2<<2, 'x', 'y', 'z')
	_, perr = unsnappy(damaged, len(all), tooLarge)
	require.NotNil(t, perr)
	assert.Equal(t, kerr.CorruptMessage.Code, perr.code)
}
