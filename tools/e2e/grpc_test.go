package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spillway/spillway/tools/e2e/ambassadorpb"
)

// splitArgs takes the command-line arguments (those starting with "-",
// such as "-config=FILE") out of a list of environment settings.
func splitArgs(list []string) (args, env []string) {
	for _, e := range list {
		if strings.HasPrefix(e, "-") {
			args = append(args, e)
		} else {
			env = append(env, e)
		}
	}
	return args, env
}

func newBroker(t *testing.T) string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

func grpcurlPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("GRPCURL"); p != "" {
		return p
	}
	p, err := exec.LookPath("grpcurl")
	if err != nil {
		t.Fatalf("grpcurl not found: run `make tools` (it builds the pinned version into .tools/bin) or set GRPCURL")
	}
	return p
}

func grpcurl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(grpcurlPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("grpcurl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestGRPCWithGrpcurl checks the gRPC API of the built binary with grpcurl
// through server reflection, as the README shows.
func TestGRPCWithGrpcurl(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t)
	in := startIngest(t, broker)

	services := grpcurl(t, "-plaintext", in.grpcAddr, "list")
	for _, want := range []string{"spillway.ingest.v1.IngestService", "KafkaAmbassador", "grpc.health.v1.Health"} {
		if !strings.Contains(services, want) {
			t.Errorf("reflection does not list %s:\n%s", want, services)
		}
	}
	health := grpcurl(t, "-plaintext", in.grpcAddr, "grpc.health.v1.Health/Check")
	if !strings.Contains(health, "SERVING") {
		t.Errorf("health: %s", health)
	}

	out := grpcurl(t, "-plaintext", "-d", `{"topic":"grpcurl","records":[{"key":"azE=","value":"aGVsbG8=","headers":[{"key":"via","value":"Z3JwY3VybA=="}]}]}`,
		in.grpcAddr, "spillway.ingest.v1.IngestService/Produce")
	var resp struct {
		Results []struct {
			Outcome string `json:"outcome"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.Results) != 1 || resp.Results[0].Outcome != "OUTCOME_DELIVERED" {
		t.Fatalf("Produce answered %s (%v)", out, err)
	}
	recs := kcatConsume(t, broker, "grpcurl")
	if len(recs) != 1 || *recs[0].Key != "k1" || *recs[0].Payload != "hello" || header(recs[0], "via") != "grpcurl" || header(recs[0], "spillway-id") == "" {
		t.Fatalf("in Kafka: %+v", recs)
	}

	topics := grpcurl(t, "-plaintext", in.grpcAddr, "spillway.ingest.v1.IngestService/ListTopics")
	if !strings.Contains(topics, `"grpcurl"`) {
		t.Errorf("ListTopics: %s", topics)
	}
}

// TestKafkaAmbassadorClient streams records with a client generated from
// an unchanged copy of kafka-ambassador's proto (testdata/kafka-ambassador).
func TestKafkaAmbassadorClient(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t)
	in := startIngest(t, broker)
	conn, err := grpc.NewClient(in.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := ambassadorpb.NewKafkaAmbassadorClient(conn).Produce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	go func() {
		for i := range uint64(n) {
			if stream.Send(&ambassadorpb.ProdRq{Topic: "ambassador", Message: fmt.Appendf(nil, "message-%d", i), StreamOffset: 100 + i}) != nil {
				return
			}
		}
		_ = stream.CloseSend()
	}()
	want := uint64(100)
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if resp.StreamOffset != want {
			t.Fatalf("acknowledged streamOffset %d, want %d", resp.StreamOffset, want)
		}
		want++
	}
	if want != 100+n {
		t.Fatalf("acknowledged %d records, want %d", want-100, n)
	}
	recs := kcatConsume(t, broker, "ambassador")
	if len(recs) != n {
		t.Fatalf("kcat found %d records, want %d", len(recs), n)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		seen[*r.Payload] = true
	}
	for i := range n {
		if !seen[fmt.Sprintf("message-%d", i)] {
			t.Errorf("message-%d is not in Kafka", i)
		}
	}
}
