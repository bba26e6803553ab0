package spill

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spillway/spillway/pkg/record"
	spillv1 "github.com/spillway/spillway/proto/gen/spillway/spill/v1"
)

// protoEncode and protoDecode are the generated message's way, which the
// codec replaces and must match.
func protoEncode(r *record.Record, reason string) ([]byte, error) {
	sr := &spillv1.StoredRecord{Id: r.ID, Topic: r.Topic, Key: r.Key, Value: r.Value, Reason: reason}
	if r.Key != nil && len(r.Key) == 0 {
		sr.Key = []byte{}
	}
	if r.Value != nil && len(r.Value) == 0 {
		sr.Value = []byte{}
	}
	if r.Partition != record.AnyPartition {
		p := r.Partition
		sr.Partition = &p
	}
	if !r.Timestamp.IsZero() {
		sr.Timestamp = timestamppb.New(r.Timestamp)
	}
	for _, h := range r.Headers {
		sr.Headers = append(sr.Headers, &spillv1.Header{Key: h.Key, Value: h.Value})
	}
	return proto.Marshal(sr)
}

func protoDecode(b []byte) (record.Record, error) {
	var sr spillv1.StoredRecord
	if err := proto.Unmarshal(b, &sr); err != nil {
		return record.Record{}, err
	}
	r := record.Record{ID: sr.GetId(), Topic: sr.GetTopic(), Key: sr.Key, Value: sr.Value, Partition: record.AnyPartition}
	if sr.Partition != nil {
		r.Partition = *sr.Partition
	}
	if sr.Timestamp != nil {
		r.Timestamp = sr.Timestamp.AsTime()
	}
	for _, h := range sr.GetHeaders() {
		r.Headers = append(r.Headers, record.Header{Key: h.GetKey(), Value: h.GetValue()})
	}
	return r, nil
}

var codecCases = []struct {
	name   string
	rec    record.Record
	reason string
}{
	{"empty", record.Record{Partition: record.AnyPartition}, ""},
	{"value only", record.Record{ID: "01J", Topic: "t", Value: []byte("v"), Partition: record.AnyPartition}, "breaker_open"},
	{"everything", record.Record{ID: "id-1", Topic: "orders.eu", Key: []byte("k"), Value: []byte{0, 1, 255},
		Headers:   []record.Header{{Key: "traceparent", Value: []byte("00-abc")}, {Key: "empty"}, {Key: "", Value: []byte("no key")}},
		Partition: 2, Timestamp: time.UnixMilli(1700000000789).UTC()}, "unavailable"},
	{"empty key and value", record.Record{ID: "e", Topic: "t", Key: []byte{}, Value: []byte{}, Partition: record.AnyPartition}, "timeout"},
	{"partition 0", record.Record{Topic: "t", Partition: 0}, ""},
	{"partition out of range", record.Record{Topic: "t", Partition: math.MaxInt32}, ""},
	{"negative partition", record.Record{Topic: "t", Partition: -7}, ""},
	{"timestamp at the epoch", record.Record{Topic: "t", Partition: record.AnyPartition, Timestamp: time.Unix(0, 0)}, ""},
	{"timestamp before the epoch", record.Record{Topic: "t", Partition: record.AnyPartition, Timestamp: time.Unix(-5, 999999999)}, ""},
	{"timestamp in nanoseconds, not UTC", record.Record{Topic: "t", Partition: record.AnyPartition, Timestamp: time.Unix(1700000000, 123456789).In(time.FixedZone("x", 3600))}, ""},
	{"large value", record.Record{Topic: "t", Value: make([]byte, 70000), Partition: record.AnyPartition}, ""},
	{"unicode", record.Record{ID: "é", Topic: "tö", Headers: []record.Header{{Key: "ключ", Value: []byte("v")}}, Partition: record.AnyPartition}, "ünavailable"},
}

// TestCodecMatchesProto: Encode writes the bytes proto.Marshal writes for
// the StoredRecord, and Decode reads them back as the generated message
// did, with a null key or value still null and an empty one still empty.
func TestCodecMatchesProto(t *testing.T) {
	for _, c := range codecCases {
		t.Run(c.name, func(t *testing.T) {
			want, err := protoEncode(&c.rec, c.reason)
			require.NoError(t, err)
			got, err := Encode(&c.rec, c.reason)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			assert.Len(t, got, encodedSize(&c.rec, c.reason))

			dec, err := Decode(got)
			require.NoError(t, err)
			ref, err := protoDecode(got)
			require.NoError(t, err)
			assert.Equal(t, ref, dec)
			assert.Equal(t, c.rec.Key == nil, dec.Key == nil, "null key")
			assert.Equal(t, c.rec.Value == nil, dec.Value == nil, "null value (a tombstone)")
			assert.True(t, c.rec.Timestamp.Equal(dec.Timestamp))
		})
	}
}

// TestEncodeRefusesInvalidUTF8 as proto.Marshal does: a string field that
// is not UTF-8 cannot be stored.
func TestEncodeRefusesInvalidUTF8(t *testing.T) {
	for _, r := range []record.Record{
		{ID: "\xff", Topic: "t"},
		{Topic: "t\xfe"},
		{Topic: "t", Headers: []record.Header{{Key: "k\xc0"}}},
	} {
		_, err := protoEncode(&r, "")
		require.Error(t, err)
		_, err = Encode(&r, "")
		assert.ErrorIs(t, err, errInvalidUTF8)
	}
	_, err := Encode(&record.Record{Topic: "t"}, "\xff")
	assert.ErrorIs(t, err, errInvalidUTF8)
}

// decodeCases are malformed messages and unusual ones.
func decodeCases() map[string][]byte {
	tag := func(b []byte, num protowire.Number, typ protowire.Type) []byte {
		return protowire.AppendTag(b, num, typ)
	}
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(tag(nil, num, protowire.BytesType), s)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	ts := func(sec, ns uint64) []byte {
		inner := protowire.AppendVarint(tag(nil, 1, protowire.VarintType), sec)
		if ns > 0 {
			inner = protowire.AppendVarint(tag(inner, 2, protowire.VarintType), ns)
		}
		return protowire.AppendBytes(tag(nil, fieldTimestamp, protowire.BytesType), inner)
	}
	cases := map[string][]byte{
		"truncated length":            {0x0a, 0x05, 'a'},
		"truncated varint":            {0x30, 0xff},
		"varint overflow":             cat([]byte{0x30}, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}),
		"field number 0":              {0x02, 0x00},
		"end group outside a group":   {0x0c},
		"reserved wire type":          {0x0e},
		"invalid UTF-8 id":            str(fieldID, "\xff"),
		"invalid UTF-8 reason":        str(fieldReason, "\xff"),
		"invalid UTF-8 header key":    protowire.AppendBytes(tag(nil, fieldHeaders, protowire.BytesType), str(1, "\xff")),
		"unknown fields":              cat(str(99, "x"), str(fieldID, "a"), protowire.AppendVarint(tag(nil, 1000, protowire.VarintType), 5), protowire.AppendFixed32(tag(nil, 17, protowire.Fixed32Type), 1)),
		"a group":                     cat(tag(nil, 20, protowire.StartGroupType), str(1, "in"), tag(nil, 20, protowire.EndGroupType), str(fieldTopic, "t")),
		"a group ended wrong":         cat(tag(nil, 20, protowire.StartGroupType), tag(nil, 21, protowire.EndGroupType)),
		"id as a varint":              protowire.AppendVarint(tag(nil, fieldID, protowire.VarintType), 3),
		"partition as bytes":          str(fieldPartition, "x"),
		"headers as a varint":         protowire.AppendVarint(tag(nil, fieldHeaders, protowire.VarintType), 1),
		"repeated scalar: last wins":  cat(str(fieldID, "a"), str(fieldID, "b"), protowire.AppendVarint(tag(nil, fieldPartition, protowire.VarintType), 1), protowire.AppendVarint(tag(nil, fieldPartition, protowire.VarintType), 2)),
		"timestamps merge":            cat(ts(100, 5), ts(200, 0)),
		"negative int32 partition":    protowire.AppendVarint(tag(nil, fieldPartition, protowire.VarintType), uint64(math.MaxUint64-2)),
		"partition of 64 bits":        protowire.AppendVarint(tag(nil, fieldPartition, protowire.VarintType), 1<<40+3),
		"header with an empty value":  protowire.AppendBytes(tag(nil, fieldHeaders, protowire.BytesType), cat(str(1, "k"), str(2, ""))),
		"header with unknown fields":  protowire.AppendBytes(tag(nil, fieldHeaders, protowire.BytesType), cat(str(7, "k"), str(2, "v"))),
		"timestamp malformed":         protowire.AppendBytes(tag(nil, fieldTimestamp, protowire.BytesType), []byte{0x08}),
		"timestamp with bytes fields": protowire.AppendBytes(tag(nil, fieldTimestamp, protowire.BytesType), str(1, "x")),
		"empty input":                 {},
	}
	return cases
}

// TestDecodeLikeProto: malformed, unknown and repeated fields are read or
// refused as proto.Unmarshal does.
func TestDecodeLikeProto(t *testing.T) {
	for name, b := range decodeCases() {
		t.Run(name, func(t *testing.T) {
			want, wantErr := protoDecode(b)
			got, err := Decode(b)
			if wantErr != nil {
				assert.Error(t, err, "proto refuses it: %v", wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

// FuzzDecode: for any input, Decode refuses what proto.Unmarshal refuses
// and otherwise reads the same record.
func FuzzDecode(f *testing.F) {
	for _, c := range codecCases {
		b, err := Encode(&c.rec, c.reason)
		require.NoError(f, err)
		f.Add(b)
	}
	for _, b := range decodeCases() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want, wantErr := protoDecode(b)
		got, err := Decode(b)
		if (wantErr != nil) != (err != nil) {
			t.Fatalf("proto: %v; Decode: %v", wantErr, err)
		}
		if err != nil {
			return
		}
		if !assert.Equal(t, want, got) {
			return
		}
		// What decodes encodes back to what proto writes.
		again, err := Encode(&got, "")
		require.NoError(t, err)
		ref, err := protoEncode(&want, "")
		require.NoError(t, err)
		assert.Equal(t, ref, again, fmt.Sprintf("%+v", got))
	})
}
