package config

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSnappyEncodedAsKafkaClientsDo: kafka.compression.codec snappy
// writes each block in the plain snappy encoding (as librdkafka and the
// Java client do), not kafka-go's default "better" one, in the xerial
// frame Kafka reads, and reads it back.
func TestSnappyEncodedAsKafkaClientsDo(t *testing.T) {
	var src []byte
	for i := range 2000 {
		src = fmt.Appendf(src, `{"user":"u%06d","event":"click","page":"/products/%d","n":%d}`, i*7919%100000, i%50, i)
	}
	codec := CompressionSnappy.Codec().Codec()
	var framed bytes.Buffer
	w := codec.NewWriter(&framed)
	_, err := w.Write(src)
	require.NoError(t, err)
	require.NoError(t, w.Close())

	r := codec.NewReader(bytes.NewReader(framed.Bytes()))
	back, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.Equal(t, src, back, "read back")

	// The xerial frame: a 16-byte header, then blocks each led by its
	// length (4 bytes, big-endian).
	rest := framed.Bytes()
	require.Greater(t, len(rest), 16)
	require.Equal(t, "\x82SNAPPY\x00", string(rest[:8]))
	rest = rest[16:]
	blocks := 0
	for len(rest) > 0 {
		require.GreaterOrEqual(t, len(rest), 4)
		n := int(binary.BigEndian.Uint32(rest))
		require.GreaterOrEqual(t, len(rest), 4+n)
		block := rest[4 : 4+n]
		chunk, err := s2.Decode(nil, block)
		require.NoError(t, err)
		assert.Equal(t, s2.EncodeSnappy(nil, chunk), block, "block %d: the plain snappy encoding", blocks)
		assert.NotEqual(t, s2.EncodeSnappyBetter(nil, chunk), block, "block %d: not the better one", blocks)
		rest = rest[4+n:]
		blocks++
	}
	assert.Positive(t, blocks)
}
