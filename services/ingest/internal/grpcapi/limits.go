package grpcapi

import (
	"fmt"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	encproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
)

// tooManyRecords is the status of a request over server.max_request_records.
func tooManyRecords(limit int) *status.Status {
	return status.Newf(codes.ResourceExhausted,
		"the request holds more than %d records, the limit of one request (server.max_request_records): send them in smaller requests", limit)
}

// overCap says whether a request holds more records than limit allows.
func overCap(n, limit int) bool { return limit > 0 && n > limit }

// cappedCodec is gRPC's proto codec, except that it counts the records of
// a produce request on the wire before it decodes them. A 4 MiB message
// of empty records is two million records; decoded, they cost hundreds of
// megabytes before any handler could refuse them. A request over the cap
// is decoded without its records, and its records field is given limit+1
// empty entries, so that the handler, which checks the count first,
// refuses it (a codec's own error would reach the client as INTERNAL).
type cappedCodec struct {
	encoding.CodecV2
	limit int
}

func newCappedCodec(limit int) cappedCodec {
	return cappedCodec{CodecV2: encoding.GetCodecV2(encproto.Name), limit: limit}
}

func (c cappedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	var field protowire.Number
	switch v.(type) {
	case *ingestv1.ProduceRequest:
		field = 2
	case *ingestv1.ProduceStreamRequest:
		field = 3
	}
	if field == 0 || c.limit <= 0 {
		return c.CodecV2.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	rest, n := withoutField(b, field)
	if n <= c.limit {
		return proto.Unmarshal(b, v.(proto.Message))
	}
	if err := proto.Unmarshal(rest, v.(proto.Message)); err != nil {
		return err
	}
	over := make([]*ingestv1.Record, c.limit+1)
	switch m := v.(type) {
	case *ingestv1.ProduceRequest:
		m.Records = over
	case *ingestv1.ProduceStreamRequest:
		m.Records = over
	}
	return nil
}

// withoutField counts the occurrences of field (length-delimited) in the
// message b and
// returns b without them; when b is not a valid message it returns b as
// it is, for proto.Unmarshal to refuse.
func withoutField(b []byte, field protowire.Number) ([]byte, int) {
	var rest []byte
	n := 0
	for in := b; len(in) > 0; {
		num, typ, tagLen := protowire.ConsumeTag(in)
		if tagLen < 0 {
			return b, 0
		}
		valLen := protowire.ConsumeFieldValue(num, typ, in[tagLen:])
		if valLen < 0 {
			return b, 0
		}
		if num == field && typ == protowire.BytesType { // another type is an unknown field to protobuf
			n++
		} else {
			rest = append(rest, in[:tagLen+valLen]...)
		}
		in = in[tagLen+valLen:]
	}
	return rest, n
}

// streamLimit refuses a produce stream beyond max open at once on the
// server, over all connections (server.grpc.max_open_streams): each
// stream holds a window of requests, and HTTP/2's per-connection limit
// does not bound how many connections a client opens.
type streamLimit struct {
	max  int64
	open atomic.Int64
}

func (l *streamLimit) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if l.max <= 0 || strings.HasPrefix(info.FullMethod, "/grpc.") { // health watches, reflection
		return handler(srv, ss)
	}
	defer l.open.Add(-1)
	if n := l.open.Add(1); n > l.max {
		return status.Error(codes.ResourceExhausted, fmt.Sprintf(
			"the server has %d produce streams open, its limit (server.grpc.max_open_streams): retry later, or send on a stream already open", n-1))
	}
	return handler(srv, ss)
}
