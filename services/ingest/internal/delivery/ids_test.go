package delivery

import (
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
