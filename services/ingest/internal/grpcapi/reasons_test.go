package grpcapi

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/proto/gen/kafkaambassador"
	"github.com/spillway/spillway/proto/gen/kafkapixy"
	ingestv1 "github.com/spillway/spillway/proto/gen/spillway/ingest/v1"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// topicSender fails every record with the reason its topic names.
type topicSender struct{}

func (topicSender) Send(_ context.Context, _ string, recs []record.Record) []record.Result {
	out := make([]record.Result, len(recs))
	for i, r := range recs {
		out[i] = record.Fail(r.Topic, record.Errorf(record.Reason(r.Topic), "failed for %s", r.Topic))
	}
	return out
}

func (topicSender) Refuse(context.Context, string, string, int, record.Reason) {}

// TestEveryReasonMapped checks that every failure reason has a row in
// reasonCodes, and that each gRPC service answers a record failed for it
// with that row's code.
func TestEveryReasonMapped(t *testing.T) {
	// The codes gRPC clients and retry policies take as "try again".
	transient := []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.Aborted}
	for reason, c := range reasonCodes {
		if !slices.Contains(record.Reasons(), reason) {
			t.Errorf("reasonCodes has a row for %q, which is not in record.Reasons()", reason)
		}
		clientsFault := reason.InRecord() || reason == record.ReasonUnauthenticated || reason == record.ReasonForbidden
		switch {
		case reason.Retriable() && !slices.Contains(transient, c):
			t.Errorf("%s: %s is no code clients retry, but the failure is Kafka's and may pass", reason, c)
		case clientsFault && slices.Contains(transient, c):
			t.Errorf("%s: %s tells the client to retry a request that will fail again", reason, c)
		}
	}

	srv := New(Options{Sender: topicSender{}, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.DiscardHandler), LatencyBuckets: prometheus.DefBuckets,
		Config: config.GRPC{MaxRequestSize: 1 << 20, StreamWindow: 1}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ingest := ingestv1.NewIngestServiceClient(conn)
	pixy := kafkapixy.NewKafkaPixyClient(conn)
	ambassador := kafkaambassador.NewKafkaAmbassadorClient(conn)

	for _, reason := range record.Reasons() {
		t.Run(string(reason), func(t *testing.T) {
			want, ok := reasonCodes[reason]
			if !ok {
				t.Fatalf("reason %q has no row in reasonCodes (grpcapi.go): give it a gRPC status code", reason)
			}
			ctx := t.Context()
			topic := string(reason)
			check := func(service string, got codes.Code) {
				t.Helper()
				if got != want {
					t.Errorf("%s: answered %s; want %s", service, got, want)
				}
			}

			_, err := ingest.Produce(ctx, &ingestv1.ProduceRequest{Topic: topic, Records: []*ingestv1.Record{{Value: []byte("v")}}})
			check("IngestService.Produce", status.Code(err))

			stream, err := ingest.ProduceStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&ingestv1.ProduceStreamRequest{Sequence: 1, Topic: topic, Records: []*ingestv1.Record{{Value: []byte("v")}}}); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil || len(resp.GetResults()) != 1 {
				t.Fatalf("IngestService.ProduceStream: %v, %v", resp, err)
			}
			check("IngestService.ProduceStream error_code", codes.Code(resp.GetResults()[0].GetErrorCode()))
			_ = stream.CloseSend()

			_, err = pixy.Produce(ctx, &kafkapixy.ProdRq{Topic: topic, Message: []byte("v")})
			check("KafkaPixy.Produce", status.Code(err))

			amb, err := ambassador.Produce(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := amb.Send(&kafkaambassador.ProdRq{Topic: topic, Message: []byte("v"), StreamOffset: 1}); err != nil {
				t.Fatal(err)
			}
			_, err = amb.Recv()
			check("KafkaAmbassador.Produce", status.Code(err))
		})
	}
}

// TestUnauthenticatedAnswersAsSignIn checks that the unauthenticated row
// is what a call without credentials is answered.
func TestUnauthenticatedAnswersAsSignIn(t *testing.T) {
	auth, err := identity.NewAuthenticator(t.Context(), config.Security{RequireCredentials: true}, config.ServerTLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Sender: topicSender{}, Auth: auth}
	_, err = o.identify(t.Context(), ingestv1.IngestService_Produce_FullMethodName)
	if got, want := status.Code(err), reasonCodes[record.ReasonUnauthenticated]; got != want {
		t.Errorf("a call without credentials is answered %s; the unauthenticated row says %s", got, want)
	}
}

// TestReasonsDocumented checks that docs/api.md's table of gRPC status
// codes lists every code a reason is answered with.
func TestReasonsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range record.Reasons() {
		c := reasonCodes[reason]
		if row := fmt.Sprintf("\n| `%s` (%d) | ", upperSnake(c.String()), c); !strings.Contains(string(doc), row) {
			t.Errorf("%s: docs/api.md has no row %q in its table of gRPC status codes", reason, strings.TrimSpace(row))
		}
	}
}

// upperSnake turns a Go name (DeadlineExceeded) into gRPC's constant
// name (DEADLINE_EXCEEDED).
func upperSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}
