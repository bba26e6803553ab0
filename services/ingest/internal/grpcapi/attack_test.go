package grpcapi_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/proto/gen/kafkapixy"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// rawCodec sends bytes made by hand, as a hostile client would, and
// decodes answers as protobuf.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// emptyRecords is a message with field topicField set to topic and
// records field recordsField repeated empty until it is size bytes long:
// two bytes a record.
func emptyRecords(topicField, recordsField protowire.Number, topic string, size int) []byte {
	b := protowire.AppendTag(nil, topicField, protowire.BytesType)
	b = protowire.AppendString(b, topic)
	one := protowire.AppendBytes(protowire.AppendTag(nil, recordsField, protowire.BytesType), nil)
	return append(b, bytes.Repeat(one, (size-len(b))/len(one))...)
}

// TestEmptyRecordsAreRefusedByCount: a 4 MiB ProduceRequest of empty
// records is two million records (issue 15, finding 1). It is refused
// with RESOURCE_EXHAUSTED naming server.max_request_records, counted on
// the wire before the records are decoded; so is a ProduceStreamRequest,
// which ends its stream.
func TestEmptyRecordsAreRefusedByCount(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	conn := dial(t, in.GRPC)
	client := ingestv1.NewIngestServiceClient(conn)
	_, err := client.Produce(ctx(t), &ingestv1.ProduceRequest{Topic: "warm", Records: []*ingestv1.Record{{Value: []byte("w")}}})
	require.NoError(t, err)

	const size = 4<<20 - 64 // under server.grpc.max.request.size
	unary := emptyRecords(1, 2, "many", size)
	before := ingesttest.HeapAlloc()
	grew := ingesttest.PeakHeapGrowth(before, func() {
		err = conn.Invoke(ctx(t), ingestv1.IngestService_Produce_FullMethodName, &unary, &ingestv1.ProduceResponse{}, grpc.ForceCodecV2(rawCodec{}))
	})
	t.Logf("a %d-byte request of empty records grew the heap by at most %.1f MB", len(unary), float64(grew)/1e6)
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), "more than 10000 records, the limit of one request (server.max_request_records)")
	assert.Less(t, grew, uint64(64<<20), "the heap grew by %d bytes", grew)

	streamReq := append(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7), emptyRecords(2, 3, "many", size-8)...)
	stream, err := conn.NewStream(ctx(t), &ingestv1.IngestService_ServiceDesc.Streams[0], ingestv1.IngestService_ProduceStream_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	require.NoError(t, err)
	require.NoError(t, stream.SendMsg(&streamReq))
	err = stream.RecvMsg(&ingestv1.ProduceStreamResponse{})
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), "sequence 7: the request holds more than 10000 records, the limit of one request (server.max_request_records)")

	// The cap itself is taken.
	recs := make([]*ingestv1.Record, 10000)
	for i := range recs {
		recs[i] = &ingestv1.Record{Value: []byte("v")}
	}
	resp, err := client.Produce(ctx(t), &ingestv1.ProduceRequest{Topic: "capped", Records: recs})
	require.NoError(t, err)
	assert.Len(t, resp.Results, 10000)
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="too_large",topic="many"}`))
}

// TestProduceStreamsOverTheCapAreRefused: past server.grpc.max_open_streams
// streams open at once, over any number of connections, one more is
// refused with RESOURCE_EXHAUSTED naming the key; once one ends, a new one
// is served.
func TestProduceStreamsOverTheCapAreRefused(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_GRPC_MAX_OPEN_STREAMS=2")
	open := func() (grpc.BidiStreamingClient[ingestv1.ProduceStreamRequest, ingestv1.ProduceStreamResponse], error) {
		s, err := ingestv1.NewIngestServiceClient(dial(t, in.GRPC)).ProduceStream(ctx(t))
		require.NoError(t, err)
		// A stream the server already ended fails Send with io.EOF; its
		// status comes from Recv.
		if err := s.Send(&ingestv1.ProduceStreamRequest{Sequence: 1, Topic: "streams", Records: []*ingestv1.Record{{Value: []byte("v")}}}); err != nil && !errors.Is(err, io.EOF) {
			return s, err
		}
		_, err = s.Recv()
		return s, err
	}
	first, err := open()
	require.NoError(t, err)
	_, err = open()
	require.NoError(t, err)

	_, err = open()
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), "the server has 2 produce streams open, its limit (server.grpc.max_open_streams)")

	require.NoError(t, first.CloseSend())
	_, err = first.Recv()
	require.ErrorIs(t, err, io.EOF)
	require.Eventually(t, func() bool {
		_, err := open()
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "a stream is served once another ended")
}

// TestHTTP2SettingsBoundEachConnection: the server tells every client, in
// its first HTTP/2 SETTINGS, how many streams a connection may open
// (server.grpc.max_concurrent_streams) and how many bytes one stream may
// send ahead of the server's reading (server.grpc.stream_window_bytes).
func TestHTTP2SettingsBoundEachConnection(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_GRPC_MAX_CONCURRENT_STREAMS=7", "SPILLWAY_SERVER_GRPC_STREAM_WINDOW_BYTES=131072")
	c, err := net.Dial("tcp", in.GRPC)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(c, c)
	require.NoError(t, fr.WriteSettings())
	f, err := fr.ReadFrame()
	require.NoError(t, err)
	settings, ok := f.(*http2.SettingsFrame)
	require.True(t, ok, "first frame %T", f)
	streams, ok := settings.Value(http2.SettingMaxConcurrentStreams)
	assert.True(t, ok, "no SETTINGS_MAX_CONCURRENT_STREAMS: a connection may open any number of streams")
	assert.EqualValues(t, 7, streams)
	window, ok := settings.Value(http2.SettingInitialWindowSize)
	assert.True(t, ok, "no SETTINGS_INITIAL_WINDOW_SIZE")
	assert.EqualValues(t, 131072, window)
}

// TestEmptyHeadersAreRefusedByCount: record headers amplify like records
// (4 MiB of empty headers in one kafka-pixy ProdRq grew the heap by 705
// MB). A request over server.max_request_headers, whether its headers are
// in one record (pixy's ProdRq) or spread over records (ProduceRequest),
// is refused with RESOURCE_EXHAUSTED naming the key, counted on the wire
// before the headers are decoded; the cap itself is taken.
func TestEmptyHeadersAreRefusedByCount(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	conn := dial(t, in.GRPC)
	const size = 4<<20 - 64 // under server.grpc.max.request.size
	const want = "more than 100000 record headers, the limit of one request (server.max_request_headers)"

	// pixy's ProdRq: topic (2) and headers (7), each header empty.
	pixy := emptyRecords(2, 7, "headers", size)
	before := ingesttest.HeapAlloc()
	var err error
	grew := ingesttest.PeakHeapGrowth(before, func() {
		err = conn.Invoke(ctx(t), kafkapixy.KafkaPixy_Produce_FullMethodName, &pixy, &kafkapixy.ProdRs{}, grpc.ForceCodecV2(rawCodec{}))
	})
	t.Logf("a %d-byte ProdRq of empty headers grew the heap by at most %.1f MB", len(pixy), float64(grew)/1e6)
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), want)
	assert.Less(t, grew, uint64(64<<20), "the heap grew by %d bytes", grew)

	// ProduceRequest: topic (1) and one record (2) holding the headers (3).
	headers := emptyRecords(1, 3, "", size-16)[2:] // the headers alone, without the empty topic
	unary := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "headers")
	unary = protowire.AppendBytes(protowire.AppendTag(unary, 2, protowire.BytesType), headers)
	before = ingesttest.HeapAlloc()
	grew = ingesttest.PeakHeapGrowth(before, func() {
		err = conn.Invoke(ctx(t), ingestv1.IngestService_Produce_FullMethodName, &unary, &ingestv1.ProduceResponse{}, grpc.ForceCodecV2(rawCodec{}))
	})
	t.Logf("a %d-byte ProduceRequest of empty headers grew the heap by at most %.1f MB", len(unary), float64(grew)/1e6)
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), want)
	assert.Less(t, grew, uint64(64<<20), "the heap grew by %d bytes", grew)

	// The cap itself is taken, spread over two records.
	hs := make([]*ingestv1.Header, 50000)
	for i := range hs {
		hs[i] = &ingestv1.Header{Key: "h"}
	}
	resp, err := ingestv1.NewIngestServiceClient(conn).Produce(ctx(t), &ingestv1.ProduceRequest{Topic: "capped-headers", Records: []*ingestv1.Record{
		{Value: []byte("a"), Headers: hs}, {Value: []byte("b"), Headers: hs},
	}})
	require.NoError(t, err)
	assert.Len(t, resp.Results, 2)
	assert.Equal(t, 2.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="too_large",topic="headers"}`))
}
