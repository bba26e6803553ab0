package delivery

import (
	crand "crypto/rand"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/spillway/spillway/pkg/record"
)

// idSource gives records their ULIDs (spillway-id): monotonic within a
// millisecond, as ulid.Make's, from a ChaCha8 stream seeded from the
// system's randomness. Within a millisecond each id is the one before it
// plus a random step below 2³², so the next id cannot be guessed.
type idSource struct {
	mu      sync.Mutex
	entropy *ulid.MonotonicEntropy
	id      ulid.ULID // the last id; kept here, so that filling it allocates nothing
}

func newIDSource() *idSource {
	var seed [32]byte
	_, _ = crand.Read(seed[:]) // never fails (crypto/rand panics instead)
	return &idSource{entropy: ulid.Monotonic(rand.NewChaCha8(seed), 0)}
}

// assign gives each record of recs without an id a new one: one clock
// reading, one lock and one allocation per batch rather than per record.
func (s *idSource) assign(recs []record.Record) {
	n := 0
	for i := range recs {
		if recs[i].ID == "" {
			n++
		}
	}
	if n == 0 {
		return
	}
	buf := make([]byte, n*ulid.EncodedSize)
	ms := ulid.Timestamp(time.Now())
	s.mu.Lock()
	for j := range n {
		_ = s.id.SetTime(ms) // now is within ULID's time range
		if err := s.entropy.MonotonicRead(ms, s.id[6:]); err != nil {
			s.id = ulid.Make() // this millisecond's entropy ran out
		}
		_ = s.id.MarshalTextTo(buf[j*ulid.EncodedSize : (j+1)*ulid.EncodedSize])
	}
	s.mu.Unlock()
	ids := string(buf)
	j := 0
	for i := range recs {
		if recs[i].ID == "" {
			recs[i].ID = ids[j*ulid.EncodedSize : (j+1)*ulid.EncodedSize]
			j++
		}
	}
}
