package spill

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/spillway/spillway/pkg/record"
)

// A buffered record is stored as a spillway.spill.v1.StoredRecord
// (proto/spillway/spill/v1/spill.proto). It is written and read here
// field by field with protowire, not through the generated message and
// proto's reflection: that took 15% of the resender's CPU to read (an
// allocation for the message, its timestamp, each header and a copy of
// the key and value) and a fifth of the spill path's own CPU to write.
// The bytes are those proto.Marshal writes, and Decode accepts and
// refuses what proto.Unmarshal does (TestCodecMatchesProto, FuzzDecode).

// The fields of StoredRecord, Header and google.protobuf.Timestamp.
const (
	fieldID        protowire.Number = 1
	fieldTopic     protowire.Number = 2
	fieldKey       protowire.Number = 3
	fieldValue     protowire.Number = 4
	fieldHeaders   protowire.Number = 5
	fieldPartition protowire.Number = 6
	fieldTimestamp protowire.Number = 7
	fieldReason    protowire.Number = 8

	fieldHeaderKey   protowire.Number = 1
	fieldHeaderValue protowire.Number = 2

	fieldSeconds protowire.Number = 1
	fieldNanos   protowire.Number = 2
)

var (
	errWireFormat  = errors.New("invalid wire-format data")
	errInvalidUTF8 = errors.New("string field contains invalid UTF-8")
	// errUnknown has fields skip a field as unknown, as proto does with a
	// field it does not know or of another wire type than its own.
	errUnknown = errors.New("unknown field")
)

// Encode turns a record into the bytes stored in JetStream.
func Encode(r *record.Record, reason string) ([]byte, error) {
	return appendRecord(make([]byte, 0, encodedSize(r, reason)), r, reason)
}

// encodedSize is the length of r's encoding; every field number is below
// 16, so every tag is one byte.
func encodedSize(r *record.Record, reason string) int {
	n := sizeString(r.ID) + sizeString(r.Topic) + sizeString(reason)
	if r.Key != nil {
		n += 1 + protowire.SizeBytes(len(r.Key))
	}
	if r.Value != nil {
		n += 1 + protowire.SizeBytes(len(r.Value))
	}
	for _, h := range r.Headers {
		n += 1 + protowire.SizeBytes(headerSize(h))
	}
	if r.Partition != record.AnyPartition {
		n += 1 + protowire.SizeVarint(uint64(int64(r.Partition)))
	}
	if !r.Timestamp.IsZero() {
		n += 1 + protowire.SizeBytes(timestampSize(r.Timestamp))
	}
	return n
}

// sizeString is the size of a proto3 string field, absent when empty.
func sizeString(s string) int {
	if s == "" {
		return 0
	}
	return 1 + protowire.SizeBytes(len(s))
}

func headerSize(h record.Header) int {
	n := sizeString(h.Key)
	if len(h.Value) > 0 {
		n += 1 + protowire.SizeBytes(len(h.Value))
	}
	return n
}

func timestampSize(t time.Time) int {
	n := 0
	if s := t.Unix(); s != 0 {
		n += 1 + protowire.SizeVarint(uint64(s))
	}
	if ns := t.Nanosecond(); ns != 0 {
		n += 1 + protowire.SizeVarint(uint64(ns))
	}
	return n
}

// appendRecord appends r's encoding to b. A string that is not UTF-8 is an
// error, as proto.Marshal has it, and leaves b as it was.
func appendRecord(b []byte, r *record.Record, reason string) ([]byte, error) {
	if !utf8.ValidString(r.ID) || !utf8.ValidString(r.Topic) || !utf8.ValidString(reason) {
		return b, errInvalidUTF8
	}
	for _, h := range r.Headers {
		if !utf8.ValidString(h.Key) {
			return b, fmt.Errorf("header key: %w", errInvalidUTF8)
		}
	}
	b = appendString(b, fieldID, r.ID)
	b = appendString(b, fieldTopic, r.Topic)
	if r.Key != nil { // an empty key is not a null key
		b = protowire.AppendTag(b, fieldKey, protowire.BytesType)
		b = protowire.AppendBytes(b, r.Key)
	}
	if r.Value != nil { // an empty value is not a tombstone
		b = protowire.AppendTag(b, fieldValue, protowire.BytesType)
		b = protowire.AppendBytes(b, r.Value)
	}
	for _, h := range r.Headers {
		b = protowire.AppendTag(b, fieldHeaders, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(headerSize(h)))
		b = appendString(b, fieldHeaderKey, h.Key)
		if len(h.Value) > 0 {
			b = protowire.AppendTag(b, fieldHeaderValue, protowire.BytesType)
			b = protowire.AppendBytes(b, h.Value)
		}
	}
	if r.Partition != record.AnyPartition {
		b = protowire.AppendTag(b, fieldPartition, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(r.Partition)))
	}
	if t := r.Timestamp; !t.IsZero() {
		b = protowire.AppendTag(b, fieldTimestamp, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(timestampSize(t)))
		if s := t.Unix(); s != 0 {
			b = protowire.AppendTag(b, fieldSeconds, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(s))
		}
		if ns := t.Nanosecond(); ns != 0 {
			b = protowire.AppendTag(b, fieldNanos, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(ns))
		}
	}
	b = appendString(b, fieldReason, reason)
	return b, nil
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// Decode reads a stored record back. The record's key, value and header
// values are parts of b, not copies: b must not change while the record
// is in use.
func Decode(b []byte) (record.Record, error) {
	r, err := decode(b)
	if err != nil {
		return record.Record{}, fmt.Errorf("decode stored record: %w", err)
	}
	return r, nil
}

func decode(b []byte) (record.Record, error) {
	r := record.Record{Partition: record.AnyPartition}
	var seconds int64
	var nanos int32
	stamped := false
	err := fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		switch {
		case num == fieldID && typ == protowire.BytesType:
			return consumeString(b, &r.ID)
		case num == fieldTopic && typ == protowire.BytesType:
			return consumeString(b, &r.Topic)
		case num == fieldKey && typ == protowire.BytesType:
			return consumeBytes(b, &r.Key)
		case num == fieldValue && typ == protowire.BytesType:
			return consumeBytes(b, &r.Value)
		case num == fieldHeaders && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, errWireFormat
			}
			h, err := decodeHeader(v)
			r.Headers = append(r.Headers, h)
			return n, err
		case num == fieldPartition && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			r.Partition = int32(v)
			return n, nil
		case num == fieldTimestamp && typ == protowire.BytesType:
			// A second timestamp field merges into the first, as in proto.
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, errWireFormat
			}
			stamped = true
			return n, decodeTimestamp(v, &seconds, &nanos)
		case num == fieldReason && typ == protowire.BytesType:
			var reason string // not part of the record; checked as proto does
			return consumeString(b, &reason)
		}
		return 0, errUnknown
	})
	if err != nil {
		return record.Record{}, err
	}
	if stamped {
		r.Timestamp = time.Unix(seconds, int64(nanos)).UTC()
	}
	return r, nil
}

func decodeHeader(b []byte) (record.Header, error) {
	var h record.Header
	err := fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		switch {
		case num == fieldHeaderKey && typ == protowire.BytesType:
			return consumeString(b, &h.Key)
		case num == fieldHeaderValue && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if len(v) > 0 { // proto3 bytes: an empty value reads as nil
				h.Value = v[:len(v):len(v)]
			} else {
				h.Value = nil
			}
			return n, nil
		}
		return 0, errUnknown
	})
	return h, err
}

func decodeTimestamp(b []byte, seconds *int64, nanos *int32) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if typ != protowire.VarintType || (num != fieldSeconds && num != fieldNanos) {
			return 0, errUnknown
		}
		v, n := protowire.ConsumeVarint(b)
		if num == fieldSeconds {
			*seconds = int64(v)
		} else {
			*nanos = int32(v)
		}
		return n, nil
	})
}

// fields walks the fields of the message b, calling field with each one's
// number and wire type and the bytes from its value on. field returns the
// length of the value it read (negative when it is malformed), or
// errUnknown to have the field skipped.
func fields(b []byte, field func(protowire.Number, protowire.Type, []byte) (int, error)) error {
	for len(b) > 0 {
		tag, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return errWireFormat
		}
		b = b[n:]
		num, typ := tag>>3, protowire.Type(tag&7)
		if num < uint64(protowire.MinValidNumber) || num > uint64(protowire.MaxValidNumber) || typ == protowire.EndGroupType {
			return errWireFormat // an end group outside of a group
		}
		n, err := field(protowire.Number(num), typ, b)
		if errors.Is(err, errUnknown) {
			n, err = protowire.ConsumeFieldValue(protowire.Number(num), typ, b), nil
		}
		if err != nil {
			return err
		}
		if n < 0 {
			return errWireFormat
		}
		b = b[n:]
	}
	return nil
}

func consumeString(b []byte, s *string) (int, error) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return 0, errWireFormat
	}
	if !utf8.Valid(v) {
		return 0, errInvalidUTF8
	}
	*s = string(v)
	return n, nil
}

// consumeBytes reads an optional bytes field: present, even empty, is not
// nil.
func consumeBytes(b []byte, p *[]byte) (int, error) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return 0, errWireFormat
	}
	*p = v[:len(v):len(v)]
	return n, nil
}
