package delivery

import (
	"math/big"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/record"
)

// TestIDsUniqueAndOrdered: every record without an id gets a ULID of
// now, each different, increasing within the batch and across batches; a
// record that has one keeps it.
func TestIDsUniqueAndOrdered(t *testing.T) {
	s := newIDSource()
	seen := map[string]bool{}
	var last ulid.ULID
	for range 20 {
		recs := make([]record.Record, 1000)
		recs[7].ID = "given"
		before := time.Now().Truncate(time.Millisecond)
		s.assign(recs)
		assert.Equal(t, "given", recs[7].ID)
		for i, r := range recs {
			if i == 7 {
				continue
			}
			id, err := ulid.ParseStrict(r.ID)
			require.NoError(t, err, r.ID)
			require.False(t, seen[r.ID], "%s twice", r.ID)
			seen[r.ID] = true
			assert.Positive(t, id.Compare(last), "ids increase")
			last = id
			assert.False(t, ulid.Time(id.Time()).Before(before), "an id of now")
		}
	}
}

// TestIDStepsAreRandom: within a millisecond an id is the one before it
// plus a random step below 2³², so that a client who sees one id cannot
// name the next.
func TestIDStepsAreRandom(t *testing.T) {
	s := newIDSource()
	recs := make([]record.Record, 1000)
	s.assign(recs)
	steps := map[uint64]bool{}
	for i := 1; i < len(recs); i++ {
		a, b := ulid.MustParseStrict(recs[i-1].ID), ulid.MustParseStrict(recs[i].ID)
		if a.Time() != b.Time() {
			continue // a new millisecond starts from new randomness
		}
		ea, eb := new(big.Int).SetBytes(a.Entropy()), new(big.Int).SetBytes(b.Entropy())
		step := new(big.Int).Sub(eb, ea)
		require.True(t, step.Sign() > 0 && step.BitLen() <= 32, "step %v from %s to %s", step, a, b)
		steps[step.Uint64()] = true
	}
	assert.Greater(t, len(steps), 900, "distinct steps among 999")
}

// BenchmarkAssign: ids for a batch of 500 records.
func BenchmarkAssign(b *testing.B) {
	s := newIDSource()
	recs := make([]record.Record, 500)
	b.ReportAllocs()
	for b.Loop() {
		for i := range recs {
			recs[i].ID = ""
		}
		s.assign(recs)
	}
}
