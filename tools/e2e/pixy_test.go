package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/tools/e2e/pixypb"
)

// pixyPartition is the partition the Java client's partitioner (and
// kafka-pixy's) gives key among n partitions: murmur2 of the key.
func pixyPartition(key []byte, n int32) int32 {
	const m, r = 0x5bd1e995, 24
	h := uint32(0x9747b28c) ^ uint32(len(key))
	for len(key) >= 4 {
		k := uint32(key[0]) | uint32(key[1])<<8 | uint32(key[2])<<16 | uint32(key[3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h = h*m ^ k
		key = key[4:]
	}
	switch len(key) {
	case 3:
		h ^= uint32(key[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(key[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(key[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h&0x7fffffff) % n
}

// pixyCurl runs curl as kafka-pixy's quick-start does and returns the
// status and the answer.
func pixyCurl(t *testing.T, args ...string) (int, map[string]any) {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "-X", "POST", "-w", "\n%{http_code}"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	text := strings.TrimSpace(string(out))
	i := strings.LastIndexByte(text, '\n')
	code, err := strconv.Atoi(text[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("curl %v answered %q", args, out)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(text[:i]), &body); err != nil {
		t.Fatalf("curl %v: the answer %q is not JSON: %v", args, text[:i], err)
	}
	return code, body
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func findRecord(recs []kcatRecord, payload string) *kcatRecord {
	for i := range recs {
		if recs[i].Payload != nil && *recs[i].Payload == payload {
			return &recs[i]
		}
	}
	return nil
}

// TestKafkaPixyHTTPWithCurl posts as kafka-pixy's quick-start shows, with
// curl, to the built ingest: key, sync and async, base64 headers, both
// routes. kcat reads each record back.
func TestKafkaPixyHTTPWithCurl(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t) // 3 partitions
	in := startIngest(t, broker)
	base := "http://" + in.httpAddr

	calls := []struct {
		args    []string
		payload string
		key     string
		headers map[string]string
	}{
		{[]string{base + "/topics/pixy-curl/messages?key=k1&sync", "-H", "X-Kafka-Trace-Id: " + b64("t-1"), "-d", "msg=Good news everyone!"},
			"Good news everyone!", "k1", map[string]string{"Trace-Id": "t-1"}},
		{[]string{base + "/topics/pixy-curl/messages?key=k2", "-H", "Content-Type: text/plain", "-d", "sent async"},
			"sent async", "k2", nil},
		{[]string{base + "/clusters/default/topics/pixy-curl/messages?key=k3&sync", "-H", "Content-Type: application/json",
			"-H", "X-Kafka-Key: " + b64("a header"), "-H", "X-Kafka-Via: " + b64("curl"), "-d", `{"n":3}`},
			`{"n":3}`, "k3", map[string]string{"Key": "a header", "Via": "curl"}},
	}
	answers := make([]map[string]any, len(calls))
	for i, c := range calls {
		code, body := pixyCurl(t, c.args...)
		if code != 200 || body["outcome"] != "delivered" || body["partition"] == nil || body["offset"] == nil {
			t.Fatalf("call %d: %d %v", i, code, body)
		}
		if p := int32(body["partition"].(float64)); p != pixyPartition([]byte(c.key), 3) {
			t.Errorf("call %d: partition %d, want %d (murmur2 of %q)", i, p, pixyPartition([]byte(c.key), 3), c.key)
		}
		answers[i] = body
	}

	recs := kcatConsume(t, broker, "pixy-curl")
	if len(recs) != len(calls) {
		t.Fatalf("kcat read %d records, want %d: %+v", len(recs), len(calls), recs)
	}
	for i, c := range calls {
		r := findRecord(recs, c.payload)
		if r == nil {
			t.Errorf("call %d: %q is not in Kafka", i, c.payload)
			continue
		}
		if r.Key == nil || *r.Key != c.key {
			t.Errorf("call %d: key %v, want %q", i, r.Key, c.key)
		}
		if float64(r.Partition) != answers[i]["partition"] || float64(r.Offset) != answers[i]["offset"] {
			t.Errorf("call %d: in Kafka at %d/%d, answered %v", i, r.Partition, r.Offset, answers[i])
		}
		for name, want := range c.headers {
			if got := header(*r, name); got != want {
				t.Errorf("call %d: header %s = %q, want %q (headers %v)", i, name, got, want, r.Headers)
			}
		}
		if header(*r, "spillway-id") != answers[i]["id"] {
			t.Errorf("call %d: spillway-id %q, answered id %v", i, header(*r, "spillway-id"), answers[i]["id"])
		}
	}

	code, body := pixyCurl(t, base+"/topics/pixy-curl/messages?sync", "-H", "X-Kafka-Trace: not base64!", "-d", "msg=x")
	if code != 400 || !strings.Contains(fmt.Sprint(body["message"]), "header X-Kafka-Trace is not valid base64") {
		t.Errorf("invalid base64: %d %v", code, body)
	}
	code, body = pixyCurl(t, base+"/clusters/eu/topics/pixy-curl/messages", "-d", "msg=x")
	if code != 404 || !strings.Contains(fmt.Sprint(body["message"]), `cluster "eu" is not known here`) {
		t.Errorf("unknown cluster: %d %v", code, body)
	}
	if n := len(kcatConsume(t, broker, "pixy-curl")); n != len(calls) {
		t.Errorf("refused requests reached Kafka: %d records", n)
	}
}

func dialPixy(t *testing.T, addr string) pixypb.KafkaPixyClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pixypb.NewKafkaPixyClient(conn)
}

// TestKafkaPixyGRPCClient produces with a client generated from
// kafka-pixy's wire format, using every field of ProdRq, and reads each
// record back with kcat where the answer put it.
func TestKafkaPixyGRPCClient(t *testing.T) {
	parallel(t, waits)
	broker := newBroker(t) // 3 partitions
	in := startIngest(t, broker)
	client := dialPixy(t, in.grpcAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tests := []struct {
		name    string
		req     *pixypb.ProdRq
		key     *string // nil: a null key
		headers map[string]string
	}{
		{"every field", &pixypb.ProdRq{Cluster: "default", Topic: "pixy-grpc", KeyValue: []byte("k1"), Message: []byte("full"),
			Headers: []*pixypb.RecordHeader{{Key: "trace", Value: []byte("t-1")}, {Key: "via", Value: []byte("grpc")}}},
			ptr("k1"), map[string]string{"trace": "t-1", "via": "grpc"}},
		{"async_mode", &pixypb.ProdRq{Topic: "pixy-grpc", KeyValue: []byte("k2"), Message: []byte("async"), AsyncMode: true}, ptr("k2"), nil},
		{"empty key", &pixypb.ProdRq{Topic: "pixy-grpc", Message: []byte("empty key")}, ptr(""), nil},
		{"key_undefined", &pixypb.ProdRq{Topic: "pixy-grpc", KeyValue: []byte("ignored"), KeyUndefined: true, Message: []byte("no key")}, nil, nil},
	}
	answers := map[string]*pixypb.ProdRs{}
	for _, tt := range tests {
		rs, err := client.Produce(ctx, tt.req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if rs.Offset < 0 {
			t.Fatalf("%s: answered %v, want Kafka's offset", tt.name, rs)
		}
		if tt.key != nil && rs.Partition != pixyPartition([]byte(*tt.key), 3) {
			t.Errorf("%s: partition %d, want %d (murmur2 of %q)", tt.name, rs.Partition, pixyPartition([]byte(*tt.key), 3), *tt.key)
		}
		answers[string(tt.req.Message)] = rs
	}

	recs := kcatConsume(t, broker, "pixy-grpc")
	if len(recs) != len(tests) {
		t.Fatalf("kcat read %d records, want %d", len(recs), len(tests))
	}
	for _, tt := range tests {
		r := findRecord(recs, string(tt.req.Message))
		if r == nil {
			t.Errorf("%s: not in Kafka", tt.name)
			continue
		}
		if rs := answers[string(tt.req.Message)]; r.Partition != rs.Partition || r.Offset != rs.Offset {
			t.Errorf("%s: in Kafka at %d/%d, answered %d/%d", tt.name, r.Partition, r.Offset, rs.Partition, rs.Offset)
		}
		switch {
		case tt.key == nil && r.Key != nil:
			t.Errorf("%s: key %q, want a null key", tt.name, *r.Key)
		case tt.key != nil && (r.Key == nil || *r.Key != *tt.key):
			t.Errorf("%s: key %v, want %q", tt.name, r.Key, *tt.key)
		}
		for name, want := range tt.headers {
			if got := header(*r, name); got != want {
				t.Errorf("%s: header %s = %q, want %q", tt.name, name, got, want)
			}
		}
	}

	// As docs/kafka-pixy.md shows it: grpcurl through server reflection.
	out := grpcurl(t, "-plaintext", "-emit-defaults", "-d", `{"topic":"pixy-grpcurl","key_value":"YmFy","message":"aGVsbG8="}`, in.grpcAddr, "KafkaPixy/Produce")
	if want := fmt.Sprintf(`"partition": %d`, pixyPartition([]byte("bar"), 3)); !strings.Contains(out, want) || !strings.Contains(out, `"offset"`) {
		t.Errorf("grpcurl KafkaPixy/Produce answered %s, want %s and an offset", out, want)
	}

	for _, e := range []struct {
		req     *pixypb.ProdRq
		code    codes.Code
		message string
	}{
		{&pixypb.ProdRq{Cluster: "eu", Topic: "pixy-grpc", Message: []byte("x")}, codes.NotFound, `cluster "eu" is not known here`},
		{&pixypb.ProdRq{Message: []byte("x")}, codes.InvalidArgument, "invalid topic name: it is empty"},
	} {
		_, err := client.Produce(ctx, e.req)
		if st := status.Convert(err); st.Code() != e.code || !strings.Contains(st.Message(), e.message) {
			t.Errorf("%v: %v, want %v %q", e.req, err, e.code, e.message)
		}
	}
}

func ptr(s string) *string { return &s }

// With Kafka cut off, kafka-pixy's clients are answered as any buffered
// record is: HTTP 202 buffered with the id and no partition or offset,
// gRPC partition -1 and offset -1. That is the API's translation, checked
// without Kafka by httpapi's TestPixyAnswers and grpcapi's
// TestPixyProduceAnswers, and full-stack with Kafka gone by both packages'
// TestPixyBuffered. That buffered records reach Kafka once it is back,
// each once, is TestKafkaDownThenBack's; under the spillway-id they were
// answered with, TestMissingTopicCreatedWhileBuffered's (the resender)
// and TestForwarderDeliversExactly's (with key and headers byte for
// byte). TestKafkaPixyKafkaCutOff, which checked all this for pixy's two
// routes at once, went (issue 25).
