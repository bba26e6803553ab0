package spill

// PendingAcks is how many published messages b still waits for.
func PendingAcks(b *Buffer) int {
	b.pub.mu.Lock()
	defer b.pub.mu.Unlock()
	return len(b.pub.pending)
}
