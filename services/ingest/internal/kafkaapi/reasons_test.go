package kafkaapi

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// everyClientRetries are the errors on a produce that librdkafka and
// sarama retry; kgo and the Java client retry every error kerr calls
// retriable, those two only these (librdkafka's
// rd_kafka_handle_Produce_error and rd_kafka_err_action: the rest is a
// permanent failure; sarama's async_producer "Retriable errors"). A
// retriable answer outside this list makes those clients drop the record.
var everyClientRetries = []*kerr.Error{
	kerr.UnknownTopicOrPartition, kerr.LeaderNotAvailable, kerr.NotLeaderForPartition,
	kerr.RequestTimedOut, kerr.NotEnoughReplicas, kerr.NotEnoughReplicasAfterAppend, kerr.KafkaStorageError,
}

// TestEveryReasonMapped checks that every failure reason has a row in
// reasonErrors, that a row's error is retried by every client or by none,
// and that a partition whose record failed for it is answered with that
// row's error and the record's message.
func TestEveryReasonMapped(t *testing.T) {
	for reason, e := range reasonErrors {
		if !slices.Contains(record.Reasons(), reason) {
			t.Errorf("reasonErrors has a row for %q, which is not in record.Reasons()", reason)
		}
		if e.Retriable && !slices.Contains(everyClientRetries, e) {
			t.Errorf("%s: %s is retriable for kgo and Java, but librdkafka and sarama drop the record: answer one they retry (NOT_ENOUGH_REPLICAS, ...) or a non-retriable error", reason, e.Message)
		}
		clientsFault := reason.InRecord() || reason == record.ReasonUnauthenticated || reason == record.ReasonForbidden
		switch {
		case reason.Retriable() && !e.Retriable:
			t.Errorf("%s: %s is not retriable, but the failure is Kafka's and may pass", reason, e.Message)
		case clientsFault && e.Retriable:
			t.Errorf("%s: %s tells the client to retry a record that will fail again", reason, e.Message)
		}
	}
	for _, reason := range record.Reasons() {
		t.Run(string(reason), func(t *testing.T) {
			want, ok := reasonErrors[reason]
			if !ok {
				t.Fatalf("reason %q has no row in reasonErrors (produce.go): give it a Kafka error", reason)
			}
			rp := kmsg.NewProduceResponseTopicPartition()
			answer(&rp, []record.Result{
				record.Fail("t", record.Errorf(reason, "failed for %s", reason)),
				record.Fail("t", record.Errorf(reason, "failed for %s", reason)),
			})
			if got := kerr.ErrorForCode(rp.ErrorCode); got != want {
				t.Errorf("answered %v; want %v", got, want)
			}
			if rp.ErrorMessage == nil || *rp.ErrorMessage != "failed for "+string(reason) {
				t.Errorf("error message %v; want the record's", rp.ErrorMessage)
			}
			if len(rp.ErrorRecords) != 1 || rp.ErrorRecords[0].RelativeOffset != 0 || rp.BaseOffset != -1 {
				t.Errorf("error records %+v, base offset %d; want record 0, -1", rp.ErrorRecords, rp.BaseOffset)
			}
		})
	}
}

// TestPartlyStoredIsRetriable: a partition some of whose records were
// stored while another failed is answered with a retriable error, even
// when the record's reason is not, naming the failed record, so that the
// client sends the batch again rather than drop records half stored.
func TestPartlyStoredIsRetriable(t *testing.T) {
	rp := kmsg.NewProduceResponseTopicPartition()
	answer(&rp, []record.Result{
		{Outcome: record.Buffered, Offset: -1},
		record.Fail("t", record.Errorf(record.ReasonInvalid, "refused")),
	})
	if got := kerr.ErrorForCode(rp.ErrorCode); got != kerr.NotEnoughReplicas {
		t.Errorf("answered %v; want NOT_ENOUGH_REPLICAS (retriable)", got)
	}
	if len(rp.ErrorRecords) != 1 || rp.ErrorRecords[0].RelativeOffset != 1 || rp.BaseOffset != -1 {
		t.Errorf("error records %+v, base offset %d; want record 1, -1", rp.ErrorRecords, rp.BaseOffset)
	}
}

// refuseSender is a Sender for a listener that refuses every produce
// before delivery: Send is never called.
type refuseSender struct{}

func (refuseSender) Send(context.Context, string, []record.Record) []record.Result {
	panic("a record was sent without credentials")
}

func (refuseSender) Refuse(context.Context, string, string, int, record.Reason) {}

func (refuseSender) PossibleDuplicates(string, int) {}

// TestUnauthenticatedAnswersAsSignIn checks that the unauthenticated row
// is what a produce without credentials is answered.
func TestUnauthenticatedAnswersAsSignIn(t *testing.T) {
	auth, err := identity.NewAuthenticator(t.Context(), config.Security{RequireCredentials: true}, config.ServerTLS{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{s: New(Options{Sender: refuseSender{}, Auth: auth})}
	req := kmsg.NewPtrProduceRequest()
	rt := kmsg.NewProduceRequestTopic()
	rt.Topic = "t"
	rt.Partitions = append(rt.Partitions, kmsg.NewProduceRequestTopicPartition())
	req.Topics = append(req.Topics, rt)
	resp := c.produce(req, "client")
	got := kerr.ErrorForCode(resp.Topics[0].Partitions[0].ErrorCode)
	if want := reasonErrors[record.ReasonUnauthenticated]; got != want {
		t.Errorf("a produce without credentials is answered %v; the unauthenticated row says %v", got, want)
	}
}

// TestReasonsDocumented checks that docs/api.md's table of the
// listener's errors names each reason in the row of its Kafka error.
func TestReasonsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range record.Reasons() {
		e := reasonErrors[reason]
		found, table := false, false
		for line := range strings.Lines(string(doc)) {
			if strings.HasPrefix(line, "| reason | Kafka error |") {
				table = true
			} else if !strings.HasPrefix(line, "|") {
				table = false
			}
			if table && strings.Contains(line, "`"+string(reason)+"`") {
				found = true
				if want := fmt.Sprintf("| %s (%d)", e.Message, e.Code); !strings.Contains(line, want) {
					t.Errorf("%s: docs/api.md's row %q does not say %s (%d)", reason, strings.TrimSpace(line), e.Message, e.Code)
				}
			}
		}
		if !found {
			t.Errorf("%s: docs/api.md's table of the listener's errors has no row for it", reason)
		}
	}
}
