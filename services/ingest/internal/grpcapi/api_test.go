package grpcapi

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
	"github.com/spillway/spillway/proto/gen/kafkapixy"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/delivertest"
)

// The API tables: each gRPC service's answer to every outcome the answer
// Sender (scripted_test.go) gives, over a loopback connection, without
// Kafka or the ingest: the call's status (code and message) or the
// response on the wire, and the records the Sender was handed.

// scriptedConn serves the gRPC API over a Sender scripted with script.
func scriptedConn(t *testing.T, script map[string]answer) (*grpc.ClientConn, *delivertest.Sender) {
	t.Helper()
	sender := &delivertest.Sender{ByValue: script}
	srv := New(Options{Sender: sender, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.DiscardHandler), LatencyBuckets: prometheus.DefBuckets,
		Config: config.GRPC{MaxRequestSize: 1 << 20, StreamWindow: 4}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn, sender
}

// wantResult is a record's result as IngestService answers it.
func wantResult(value string, a answer) *ingestv1.RecordResult {
	r := &ingestv1.RecordResult{Id: "id-" + value}
	switch a.Outcome {
	case record.Delivered:
		r.Outcome = ingestv1.Outcome_OUTCOME_DELIVERED
		r.Partition, r.Offset = a.Partition, a.Offset
		r.Timestamp = timestamppb.New(scriptTime)
	case record.Buffered:
		r.Outcome = ingestv1.Outcome_OUTCOME_BUFFERED
	default:
		r.Outcome = ingestv1.Outcome_OUTCOME_FAILED
		r.ErrorCode = int32(codeOf(a.Reason))
		r.ErrorReason = string(a.Reason)
		r.ErrorMessage = failMessage(a.Reason)
	}
	return r
}

func assertProto(t *testing.T, want, got proto.Message) {
	t.Helper()
	if !proto.Equal(want, got) {
		t.Errorf("answered\n%s\nwant\n%s", prototext.Format(got), prototext.Format(want))
	}
}

// assertStatus checks that err is the gRPC status code with message msg.
func assertStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || st.Message() != msg {
		t.Errorf("answered %v; want code %s, message %q", err, code, msg)
	}
}

// TestAnchorCodes pins a few rows of the reason table to the codes the
// proto's comments document, so that the tables below, which read every
// other row from it, stand on known ground.
func TestAnchorCodes(t *testing.T) {
	for reason, want := range map[record.Reason]codes.Code{
		record.ReasonInvalid:      codes.InvalidArgument,
		record.ReasonUnknownTopic: codes.NotFound,
		record.ReasonForbidden:    codes.PermissionDenied,
		record.ReasonBufferFull:   codes.ResourceExhausted,
		record.ReasonUnavailable:  codes.Unavailable,
		record.ReasonTimeout:      codes.DeadlineExceeded,
	} {
		assert.Equal(t, want, codeOf(reason), reason)
	}
}

// batchCase is a request of three records, a, b and c, with the answer
// the script gives each.
type batchCase struct {
	name    string
	a, b, c answer
	// fails: the call fails with this code and the first failure's
	// message (every record failed with one code); else it answers a
	// result per record.
	fails bool
	code  codes.Code
	msg   string
}

func batchCases() []batchCase {
	cases := []batchCase{
		{name: "all delivered", a: delivered(0, 10), b: delivered(1, 20), c: delivered(0, 11)},
		{name: "some buffered", a: delivered(0, 10), b: buffered(), c: buffered()},
		{name: "delivered, buffered and failed", a: delivered(0, 10), b: buffered(), c: failed(record.ReasonRejected)},
		{name: "failed with different codes", a: failed(record.ReasonInvalid), b: failed(record.ReasonUnavailable), c: failed(record.ReasonInvalid)},
		{name: "failed with one code, two reasons", a: failed(record.ReasonTooLarge), b: failed(record.ReasonBufferFull), c: failed(record.ReasonTooLarge),
			fails: codeOf(record.ReasonTooLarge) == codeOf(record.ReasonBufferFull), code: codeOf(record.ReasonTooLarge), msg: failMessage(record.ReasonTooLarge)},
	}
	for _, reason := range record.Reasons() {
		cases = append(cases, batchCase{name: "all " + string(reason), a: failed(reason), b: failed(reason), c: failed(reason),
			fails: true, code: codeOf(reason), msg: failMessage(reason)})
	}
	return cases
}

func (c batchCase) script() map[string]answer { return map[string]answer{"a": c.a, "b": c.b, "c": c.c} }

func (c batchCase) results() []*ingestv1.RecordResult {
	return []*ingestv1.RecordResult{wantResult("a", c.a), wantResult("b", c.b), wantResult("c", c.c)}
}

var threeRecords = []*ingestv1.Record{
	{Key: []byte("k1"), Value: []byte("a"), Headers: []*ingestv1.Header{{Key: "h", Value: []byte("x")}}},
	{Value: []byte("b"), Partition: proto.Int32(1)},
	{Key: []byte{}, Value: []byte("c")},
}

// assertThreeRecords checks what the Sender was handed for threeRecords.
func assertThreeRecords(t *testing.T, recs []record.Record) {
	t.Helper()
	require.Len(t, recs, 3)
	for _, r := range recs {
		assert.Equal(t, "orders", r.Topic)
	}
	assert.Equal(t, "k1", string(recs[0].Key))
	assert.Equal(t, []record.Header{{Key: "h", Value: []byte("x")}}, recs[0].Headers)
	assert.Equal(t, record.AnyPartition, recs[0].Partition)
	assert.Nil(t, recs[1].Key)
	assert.Equal(t, int32(1), recs[1].Partition)
	assert.NotNil(t, recs[2].Key, "an empty key is a key")
	assert.Empty(t, recs[2].Key)
}

// TestIngestProduceAnswers: IngestService.Produce answers a result per
// record, or fails the call when every record failed with one code.
func TestIngestProduceAnswers(t *testing.T) {
	for _, c := range batchCases() {
		t.Run(c.name, func(t *testing.T) {
			conn, sender := scriptedConn(t, c.script())
			resp, err := ingestv1.NewIngestServiceClient(conn).Produce(t.Context(), &ingestv1.ProduceRequest{Topic: "orders", Records: threeRecords})
			if c.fails {
				assertStatus(t, err, c.code, c.msg)
			} else {
				require.NoError(t, err)
				assertProto(t, &ingestv1.ProduceResponse{Results: c.results()}, resp)
			}
			assertThreeRecords(t, sender.Records())
		})
	}
}

// TestIngestProduceStreamAnswers: IngestService.ProduceStream answers each
// request's sequence with a result per record, whatever became of them:
// a failure ends neither the request nor the stream.
func TestIngestProduceStreamAnswers(t *testing.T) {
	for _, c := range batchCases() {
		t.Run(c.name, func(t *testing.T) {
			conn, sender := scriptedConn(t, c.script())
			stream, err := ingestv1.NewIngestServiceClient(conn).ProduceStream(t.Context())
			require.NoError(t, err)
			require.NoError(t, stream.Send(&ingestv1.ProduceStreamRequest{Sequence: 7, Topic: "orders", Records: threeRecords}))
			require.NoError(t, stream.CloseSend())
			resp, err := stream.Recv()
			require.NoError(t, err)
			assertProto(t, &ingestv1.ProduceStreamResponse{Sequence: 7, Results: c.results()}, resp)
			_, err = stream.Recv()
			assert.ErrorIs(t, err, io.EOF, "the stream ends cleanly after its last answer")
			assertThreeRecords(t, sender.Records())
		})
	}
}

// TestPixyProduceAnswers: KafkaPixy.Produce answers Kafka's partition and
// offset, -1 and -1 for a buffered record, or fails the call.
func TestPixyProduceAnswers(t *testing.T) {
	type pixyCase struct {
		name string
		a    answer
	}
	cases := []pixyCase{{"delivered", delivered(2, 7)}, {"buffered", buffered()}}
	for _, reason := range record.Reasons() {
		cases = append(cases, pixyCase{string(reason), failed(reason)})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, sender := scriptedConn(t, map[string]answer{"m": c.a})
			resp, err := kafkapixy.NewKafkaPixyClient(conn).Produce(t.Context(), &kafkapixy.ProdRq{Topic: "orders", KeyValue: []byte("k"), Message: []byte("m"),
				Headers: []*kafkapixy.RecordHeader{{Key: "h", Value: []byte("x")}}})
			switch c.a.Outcome {
			case record.Delivered:
				require.NoError(t, err)
				assertProto(t, &kafkapixy.ProdRs{Partition: 2, Offset: 7}, resp)
			case record.Buffered:
				require.NoError(t, err)
				assertProto(t, &kafkapixy.ProdRs{Partition: -1, Offset: -1}, resp)
			default:
				assertStatus(t, err, codeOf(c.a.Reason), failMessage(c.a.Reason))
			}
			recs := sender.Records()
			require.Len(t, recs, 1)
			assert.Equal(t, "orders", recs[0].Topic)
			assert.Equal(t, "k", string(recs[0].Key))
			assert.Equal(t, []record.Header{{Key: "h", Value: []byte("x")}}, recs[0].Headers)
		})
	}
}

// TestAmbassadorProduceAnswers: KafkaAmbassador.Produce acknowledges each
// streamOffset in order while records are durable (delivered or
// buffered), and ends the stream at the first failure with its code and
// a message naming its streamOffset; records after it are not
// acknowledged.
func TestAmbassadorProduceAnswers(t *testing.T) {
	type ambCase struct {
		name   string
		script map[string]answer
		acks   []uint64
		code   codes.Code // OK: the stream ends cleanly
		msg    string
	}
	cases := []ambCase{
		{"all delivered", map[string]answer{"1": delivered(0, 1), "2": delivered(0, 2), "3": delivered(1, 1)}, []uint64{1, 2, 3}, codes.OK, ""},
		{"delivered and buffered", map[string]answer{"1": buffered(), "2": delivered(0, 2), "3": buffered()}, []uint64{1, 2, 3}, codes.OK, ""},
	}
	for _, reason := range record.Reasons() {
		cases = append(cases, ambCase{"second " + string(reason), map[string]answer{"1": delivered(0, 1), "2": failed(reason), "3": delivered(0, 2)},
			[]uint64{1}, codeOf(reason), "streamOffset 2: " + failMessage(reason)})
	}
	cases = append(cases, ambCase{"first fails", map[string]answer{"1": failed(record.ReasonForbidden), "2": buffered(), "3": buffered()},
		nil, codeOf(record.ReasonForbidden), "streamOffset 1: " + failMessage(record.ReasonForbidden)})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, sender := scriptedConn(t, c.script)
			stream, err := kafkaambassador.NewKafkaAmbassadorClient(conn).Produce(t.Context())
			require.NoError(t, err)
			for _, off := range []uint64{1, 2, 3} {
				err := stream.Send(&kafkaambassador.ProdRq{Topic: "orders", Message: []byte{byte('0' + off)}, StreamOffset: off})
				if errors.Is(err, io.EOF) {
					break // the server ended the stream at a failure already: Recv tells how
				}
				require.NoError(t, err)
			}
			require.NoError(t, stream.CloseSend())
			var acks []uint64
			for {
				rs, err := stream.Recv()
				if err != nil {
					if c.code == codes.OK {
						assert.True(t, errors.Is(err, io.EOF), "the stream ends cleanly: %v", err)
					} else {
						assertStatus(t, err, c.code, c.msg)
					}
					break
				}
				acks = append(acks, rs.GetStreamOffset())
			}
			assert.Equal(t, c.acks, acks)
			for _, r := range sender.Records() {
				assert.Equal(t, "orders", r.Topic)
				assert.Nil(t, r.Key)
			}
		})
	}
}

// TestIngestProduceRefusals: a record IngestService could not parse is
// answered in its place with its refusal, the others as the script has
// them (the Sender is handed those only); a topic that is not one fails
// the call before any record is sent.
func TestIngestProduceRefusals(t *testing.T) {
	before1970 := timestamppb.New(time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC))
	recs := []*ingestv1.Record{{Value: []byte("a")}, {Value: []byte("b"), Timestamp: before1970}, {Value: []byte("c")}}

	t.Run("a record refused in its place", func(t *testing.T) {
		conn, sender := scriptedConn(t, map[string]answer{"a": delivered(0, 10), "c": buffered()})
		resp, err := ingestv1.NewIngestServiceClient(conn).Produce(t.Context(), &ingestv1.ProduceRequest{Topic: "orders", Records: recs})
		require.NoError(t, err)
		refused := &ingestv1.RecordResult{Outcome: ingestv1.Outcome_OUTCOME_FAILED, ErrorCode: int32(codes.InvalidArgument),
			ErrorReason: string(record.ReasonInvalid), ErrorMessage: "records[1]: timestamp 1969-12-31T00:00:00Z is before 1970"}
		assertProto(t, &ingestv1.ProduceResponse{Results: []*ingestv1.RecordResult{wantResult("a", delivered(0, 10)), refused, wantResult("c", buffered())}}, resp)
		sent := sender.Records()
		require.Len(t, sent, 2)
		assert.Equal(t, "a", string(sent[0].Value))
		assert.Equal(t, "c", string(sent[1].Value))
	})

	t.Run("a topic that is not one", func(t *testing.T) {
		conn, sender := scriptedConn(t, nil)
		_, err := ingestv1.NewIngestServiceClient(conn).Produce(t.Context(), &ingestv1.ProduceRequest{Topic: "no/such", Records: recs[:1]})
		assertStatus(t, err, codes.InvalidArgument,
			`invalid topic name "no/such": character '/' at byte 2; allowed are a-z, A-Z, 0-9, '.', '_' and '-'`)
		assert.Empty(t, sender.Records())
	})
}
