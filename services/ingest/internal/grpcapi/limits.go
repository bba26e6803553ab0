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

	"github.com/spillway/spillway/proto/gen/kafkapixy"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
)

// tooManyRecords is the status of a request over server.max_request_records.
func tooManyRecords(limit int) *status.Status {
	return status.Newf(codes.ResourceExhausted,
		"the request holds more than %d records, the limit of one request (server.max_request_records): send them in smaller requests", limit)
}

// tooManyHeaders is the status of a request over server.max_request_headers.
func tooManyHeaders(limit int) *status.Status {
	return status.Newf(codes.ResourceExhausted,
		"the request holds more than %d record headers, the limit of one request (server.max_request_headers): send them in smaller requests", limit)
}

// overHeadersField marks a request the codec found over the header cap:
// an unknown field no message of ours declares, read by overHeaders.
const overHeadersField protowire.Number = protowire.MaxValidNumber

// overHeaders says whether the codec found m over the header cap.
func overHeaders(m proto.Message) bool {
	for b := m.ProtoReflect().GetUnknown(); len(b) > 0; {
		num, typ, n := protowire.ConsumeField(b)
		if n < 0 {
			return false
		}
		if num == overHeadersField && typ == protowire.VarintType {
			return true
		}
		b = b[n:]
	}
	return false
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
//
// Record headers are counted the same way, against their own cap
// (headerLimit): 4 MiB of empty headers cost 705 MB decoded. A request
// over it is decoded without its records (or, for pixy's ProdRq, its
// headers) and marked (overHeadersField) for the handler to refuse.
type cappedCodec struct {
	encoding.CodecV2
	limit       int
	headerLimit int
}

func newCappedCodec(limit, headerLimit int) cappedCodec {
	return cappedCodec{CodecV2: encoding.GetCodecV2(encproto.Name), limit: limit, headerLimit: headerLimit}
}

func (c cappedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	// field holds the records; headers is the headers' field inside each
	// record, or, with field 0, in the message itself (pixy's ProdRq).
	var field, headers protowire.Number
	switch v.(type) {
	case *ingestv1.ProduceRequest:
		field, headers = 2, 3
	case *ingestv1.ProduceStreamRequest:
		field, headers = 3, 3
	case *kafkapixy.ProdRq:
		headers = 7
	}
	if headers == 0 || (c.limit <= 0 && c.headerLimit <= 0) {
		return c.CodecV2.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	if c.headerLimit > 0 {
		strip := field
		if strip == 0 {
			strip = headers
		}
		if countHeaders(b, field, headers) > c.headerLimit {
			rest, _ := withoutField(b, strip)
			if err := proto.Unmarshal(rest, v.(proto.Message)); err != nil {
				return err
			}
			m := v.(proto.Message).ProtoReflect()
			m.SetUnknown(append(m.GetUnknown(), protowire.AppendVarint(protowire.AppendTag(nil, overHeadersField, protowire.VarintType), 1)...))
			return nil
		}
	}
	if field == 0 || c.limit <= 0 {
		return proto.Unmarshal(b, v.(proto.Message))
	}
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

// countHeaders counts the headers (length-delimited field headers) of the
// message b: in each of its records (field records), or in b itself when
// records is 0. An invalid message counts 0, for proto.Unmarshal to refuse.
func countHeaders(b []byte, records, headers protowire.Number) int {
	if records == 0 {
		_, n := countField(b, headers)
		return n
	}
	total := 0
	for in := b; len(in) > 0; {
		num, typ, tagLen := protowire.ConsumeTag(in)
		if tagLen < 0 {
			return 0
		}
		valLen := protowire.ConsumeFieldValue(num, typ, in[tagLen:])
		if valLen < 0 {
			return 0
		}
		if num == records && typ == protowire.BytesType {
			rec, _ := protowire.ConsumeBytes(in[tagLen:])
			_, n := countField(rec, headers)
			total += n
		}
		in = in[tagLen+valLen:]
	}
	return total
}

// countField counts the occurrences of field (length-delimited) in b; ok
// is false when b is not a valid message.
func countField(b []byte, field protowire.Number) (ok bool, n int) {
	for in := b; len(in) > 0; {
		num, typ, tagLen := protowire.ConsumeTag(in)
		if tagLen < 0 {
			return false, n
		}
		valLen := protowire.ConsumeFieldValue(num, typ, in[tagLen:])
		if valLen < 0 {
			return false, n
		}
		if num == field && typ == protowire.BytesType {
			n++
		}
		in = in[tagLen+valLen:]
	}
	return true, n
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
