package record

// CheckSize refuses a record of size bytes (Size) over max, Kafka's
// record size limit (kafka.message.max.bytes), with reason too_large.
// The ingest checks each record before it sends or buffers it; the
// producer checks again for its other callers (drains, mirrors, whose
// cluster may have a lower limit), counting the headers Spillway adds.
func CheckSize(size, max int) error {
	if size > max {
		return Errorf(ReasonTooLarge, "record of %d bytes is over the limit of %d bytes (kafka.message.max.bytes)", size, max)
	}
	return nil
}
