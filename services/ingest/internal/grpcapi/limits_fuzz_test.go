package grpcapi

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
)

// FuzzCappedCodec: whatever bytes a client sends, the capped codec agrees
// with protobuf: the same message up to the cap; past it, the topic and
// limit+1 records for the handler to refuse, never an error protobuf
// would not give for the fields it decodes.
func FuzzCappedCodec(f *testing.F) {
	const limit = 3
	rec := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), []byte{0x12, 0x01, 'v'})
	topic := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "t")
	for _, n := range []int{0, 1, 3, 4, 9} {
		b := append([]byte(nil), topic...)
		for range n {
			b = append(b, rec...)
		}
		f.Add(b)
	}
	f.Add([]byte{0x12, 0xff})
	f.Add([]byte{0x12, 0x00, 0x12, 0x00, 0x12, 0x00, 0x12, 0x00, 0x0a})
	const headerLimit = 5
	c := newCappedCodec(limit, headerLimit)
	f.Fuzz(func(t *testing.T, b []byte) {
		var full, capped ingestv1.ProduceRequest
		fullErr := proto.Unmarshal(b, &full)
		err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &capped)
		switch {
		case err != nil && fullErr == nil:
			t.Fatalf("capped codec refused what protobuf takes: %v", err)
		case err != nil:
		case overHeaders(&capped):
			headers := 0
			for _, r := range full.Records {
				headers += len(r.GetHeaders())
			}
			if fullErr == nil && (headers <= headerLimit || len(capped.Records) != 0 || capped.Topic != full.Topic) {
				t.Fatalf("refused by headers: %d records, topic %q; protobuf: %d headers, topic %q", len(capped.Records), capped.Topic, headers, full.Topic)
			}
		case len(capped.Records) == limit+1:
			for _, r := range capped.Records {
				if r != nil {
					t.Fatalf("over the cap, a record was decoded: %v", r)
				}
			}
			if fullErr == nil && (len(full.Records) <= limit || capped.Topic != full.Topic) {
				t.Fatalf("refused by count: %d records, topic %q; protobuf: %d records, topic %q", len(capped.Records), capped.Topic, len(full.Records), full.Topic)
			}
		case fullErr != nil:
			t.Fatalf("capped codec took what protobuf refuses: %v", fullErr)
		case !proto.Equal(&full, &capped):
			t.Fatalf("under the cap the message differs: %v, protobuf %v", &capped, &full)
		}
	})
}
