package monitor

import "sync"

// OtherLabel replaces a label value once the cap on distinct values is
// reached.
const OtherLabel = "other"

// BoundedLabels keeps a label's set of values bounded: the first max
// distinct values seen are kept, later ones become OtherLabel.
type BoundedLabels struct {
	max  int
	mu   sync.RWMutex
	seen map[string]struct{}
}

// NewBoundedLabels returns a BoundedLabels that keeps max values.
func NewBoundedLabels(max int) *BoundedLabels {
	return &BoundedLabels{max: max, seen: make(map[string]struct{}, max)}
}

// Value returns v, or OtherLabel when v is new and the cap is reached.
func (b *BoundedLabels) Value(v string) string {
	b.mu.RLock()
	_, ok := b.seen[v]
	b.mu.RUnlock()
	if ok {
		return v
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.seen[v]; ok {
		return v
	}
	if len(b.seen) >= b.max {
		return OtherLabel
	}
	b.seen[v] = struct{}{}
	return v
}
