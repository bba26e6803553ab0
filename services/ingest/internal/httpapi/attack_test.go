package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/kafkatest"
	"github.com/spillway/spillway/services/ingest/internal/ingesttest"
)

// TestLyingContentLengthCostsLittle: requests that claim a large body and
// send two bytes must not make the ingest reserve what they claim. Eight
// of them that claim almost 64 MiB each took the heap from 3 to 515 MB,
// held until the read timeout (issue 15, finding 2); the target is under
// 64 MB.
func TestLyingContentLengthCostsLittle(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_HTTP_MAX_BODY_BYTES=67108864")
	host := strings.TrimPrefix(in.URL, "http://")
	status, body := ingesttest.Post(t, in.URL+"/topics/warm/messages", "text/plain", "warm")
	require.Equal(t, http.StatusOK, status, body)
	before := ingesttest.HeapAlloc()

	const liars = 8
	for range liars {
		c, err := net.Dial("tcp", host)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = fmt.Fprintf(c, "POST /topics/lies/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\nab", host, 64<<20-1)
		require.NoError(t, err)
	}
	// A request behind them is answered: the server has taken the liars'
	// requests too, and their handlers wait for the bytes promised.
	status, body = ingesttest.Post(t, in.URL+"/topics/honest/messages", "text/plain", "honest")
	require.Equal(t, http.StatusOK, status, body)

	var most uint64
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		if now := ingesttest.HeapAlloc(); now > before && now-before > most {
			most = now - before
		}
	}
	t.Logf("heap grew by %.1f MB with %d requests claiming 64 MiB each", float64(most)/1e6, liars)
	require.Less(t, most, uint64(64<<20), "the heap grew by %d bytes for %d requests that sent 2 bytes each", most, liars)
}

// postRaw posts body and returns the status, the Retry-After header and
// the answer.
func postRaw(t *testing.T, url, contentType string, body []byte) (int, string, string) {
	t.Helper()
	resp, err := http.Post(url, contentType, bytes.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
}

// attackBodyBytes is the size of the bodies of the many-records attacks:
// the default server.http.max_body_bytes.
const attackBodyBytes = 16 << 20

// TestManyTinyRecordsAreRefusedCheaply: a 16 MiB NDJSON body of "1\n"
// lines is 8.4 M records. It took the ingest from about 70 MB to over
// 9 GB before it answered (issue 15, finding 1). It is refused with 413
// naming server.max_request_records, and the heap grows by less than
// 256 MB while it is read and refused; so is a v2 body of 16 MiB of empty
// records, and a v2 or v3 body one record over the cap.
func TestManyTinyRecordsAreRefusedCheaply(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr)
	status, body := ingesttest.Post(t, in.URL+"/topics/warm/messages", "text/plain", "warm")
	require.Equal(t, http.StatusOK, status, body)

	ndjson := bytes.Repeat([]byte("1\n"), attackBodyBytes/2)
	v2 := append(append([]byte(`{"records":[`), bytes.Repeat([]byte(`{},`), (attackBodyBytes-20)/3)...), []byte(`{}]}`)...)
	for _, tt := range []struct {
		name, path, contentType string
		body                    []byte
	}{
		{"ndjson", "/topics/many/messages", "application/x-ndjson", ndjson},
		{"v2", "/topics/many", "application/vnd.kafka.json.v2+json", v2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var status int
			var answer string
			before := ingesttest.HeapAlloc()
			grew := ingesttest.PeakHeapGrowth(before, func() {
				status, _, answer = postRaw(t, in.URL+tt.path, tt.contentType, tt.body)
			})
			t.Logf("a %d-byte %s body grew the heap by at most %.1f MB", len(tt.body), tt.name, float64(grew)/1e6)
			require.Equal(t, http.StatusRequestEntityTooLarge, status, answer)
			assert.Contains(t, answer, `"error_code":41301`)
			assert.Contains(t, answer, "more than 10000 records, the limit of one request (server.max_request_records)")
			assert.Less(t, grew, uint64(256<<20), "the heap grew by %d bytes", grew)
		})
	}

	// One over a lower cap, in each format; the cap itself passes.
	in = ingesttest.Start(t, addr, "SPILLWAY_SERVER_MAX_REQUEST_RECORDS=3")
	for _, tt := range []struct {
		name, path, contentType, ok, over string
	}{
		{"ndjson", "/topics/few/messages", "application/x-ndjson", "1\n2\n\n3\n", "1\n2\n3\n4\n"},
		{"v2", "/topics/few", "application/vnd.kafka.json.v2+json", `{"records":[{"value":1},{"value":2},{"value":3}]}`, `{"records":[{"value":1},{"value":2},{"value":3},{"value":4}]}`},
		{"v3", "/v3/clusters/c/topics/few/records", "application/json", `{"value":{"data":1}} {"value":{"data":2}} {"value":{"data":3}}`, `{"value":{"data":1}} {"value":{"data":2}} {"value":{"data":3}} {"value":{"data":4}}`},
	} {
		t.Run("cap "+tt.name, func(t *testing.T) {
			status, _, answer := postRaw(t, in.URL+tt.path, tt.contentType, []byte(tt.ok))
			require.Equal(t, http.StatusOK, status, answer)
			status, _, answer = postRaw(t, in.URL+tt.path, tt.contentType, []byte(tt.over))
			require.Equal(t, http.StatusRequestEntityTooLarge, status, answer)
			assert.Contains(t, answer, "more than 3 records, the limit of one request (server.max_request_records)")
		})
	}
	assert.Equal(t, 3.0, ingesttest.Metric(t, in.Monitor, `spillway_records_failed_total{reason="too_large",topic="few"}`))
}

// TestConcurrentRequestsAreBoundedInBytes: many concurrent requests of
// half a megabyte each, while Kafka is slow, are held up to
// server.max_in_flight_bytes; the others are refused with 503 and
// Retry-After rather than held in memory, and those held are delivered
// once Kafka answers.
func TestConcurrentRequestsAreBoundedInBytes(t *testing.T) {
	c, addr := kafkatest.NewCluster(t)
	const bound = 4 << 20
	in := ingesttest.Start(t, addr, fmt.Sprintf("SPILLWAY_SERVER_MAX_IN_FLIGHT_BYTES=%d", bound), "SPILLWAY_PRODUCER_WAL_MODE=disable")
	status, body := ingesttest.Post(t, in.URL+"/topics/bulk/messages", "text/plain", "warm-up")
	require.Equal(t, http.StatusOK, status, body)

	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		<-release
		return nil, nil, false
	})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	// 512 records of 999 bytes: 511,488 bytes and 512 × 1 KiB of
	// overhead, 1,035,776 bytes in all; four fit under 4 MiB, a fifth
	// does not.
	line := strings.Repeat("7", 999) + "\n"
	payload := []byte(strings.Repeat(line, 512))
	const requests, held = 16, 4
	type answer struct {
		status     int
		retryAfter string
		body       string
	}
	answers := make(chan answer, requests)
	for range requests {
		go func() {
			s, ra, b := postRaw(t, in.URL+"/topics/bulk/messages", "application/x-ndjson", payload)
			answers <- answer{s, ra, b}
		}()
	}
	for range requests - held {
		a := <-answers
		require.Equal(t, http.StatusServiceUnavailable, a.status, a.body)
		assert.Equal(t, "1", a.retryAfter)
		assert.Contains(t, a.body, `"error_code":50303`)
		assert.Contains(t, a.body, "bytes of records in flight")
		assert.Contains(t, a.body, fmt.Sprintf("(server.max_in_flight_bytes %d): retry later", bound))
	}
	assert.Equal(t, float64(held*1035776), ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight_bytes"))
	assert.Equal(t, float64(held*512), ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight"))

	close(release)
	for range held {
		a := <-answers
		assert.Equal(t, http.StatusOK, a.status, a.body)
	}
	assert.Equal(t, 0.0, ingesttest.Metric(t, in.Monitor, "spillway_records_in_flight_bytes"))
}

// v3Stream is a chunked v3 produce request that a test writes into and
// whose answer lines it reads.
type v3Stream struct {
	w     *io.PipeWriter
	resp  *http.Response
	lines chan v3Line
}

type v3Line struct {
	ErrorCode int    `json:"error_code"`
	Message   string `json:"message"`
	Offset    int64  `json:"offset"`
	eof       bool
}

// openV3Stream opens a stream whose first record is first, and returns it
// once the answer's headers came.
func openV3Stream(t *testing.T, url, first string) *v3Stream {
	t.Helper()
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	req, err := http.NewRequest(http.MethodPost, url, io.MultiReader(strings.NewReader(first), pr))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	s := &v3Stream{w: pw, resp: resp, lines: make(chan v3Line, 16)}
	if resp.StatusCode != http.StatusOK {
		return s
	}
	go func() {
		dec := json.NewDecoder(resp.Body)
		for {
			var l v3Line
			if err := dec.Decode(&l); err != nil {
				s.lines <- v3Line{eof: true, Message: err.Error()}
				return
			}
			s.lines <- l
		}
	}()
	return s
}

// next is the stream's next answer line, or a failure after 10 s.
func (s *v3Stream) next(t *testing.T) v3Line {
	t.Helper()
	select {
	case l := <-s.lines:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no answer line within 10 s: the stream is still held open")
		return v3Line{}
	}
}

// TestV3StreamIdleIsEnded: a v3 stream that sends one record and then
// nothing was held open for ever (issue 15, finding 8). Past
// server.http.stream_idle_timeout its record is answered, a last line
// says it is ended and why, and the answer ends.
func TestV3StreamIdleIsEnded(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_HTTP_STREAM_IDLE_TIMEOUT=500ms")
	s := openV3Stream(t, in.URL+"/v3/clusters/c/topics/idle/records", `{"value":{"type":"STRING","data":"r0"}}`)
	require.Equal(t, http.StatusOK, s.resp.StatusCode)
	assert.Equal(t, 200, s.next(t).ErrorCode)
	last := s.next(t)
	assert.Equal(t, 408, last.ErrorCode, last.Message)
	assert.Contains(t, last.Message, "the stream sent nothing for 500ms (server.http.stream_idle_timeout): it is ended")
	assert.True(t, s.next(t).eof, "the answer ends after the idle line")
	got := kafkatest.Consume(t, addr, "idle", 1, 10*time.Second)
	require.Len(t, got, 1)
	assert.Equal(t, "r0", string(got[0].Value))
}

// TestV3StreamsOverTheCapAreRefused: nothing limited how many v3 streams
// were open (issue 15, finding 8). Past server.http.max_streams one more
// is refused with 503 and Retry-After naming the key; once one ends, a
// new one is served.
func TestV3StreamsOverTheCapAreRefused(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_HTTP_MAX_STREAMS=2")
	url := in.URL + "/v3/clusters/c/topics/capped/records"
	first := openV3Stream(t, url, `{"value":{"data":1}}`)
	require.Equal(t, http.StatusOK, first.resp.StatusCode)
	assert.Equal(t, 200, first.next(t).ErrorCode)
	second := openV3Stream(t, url, `{"value":{"data":2}}`)
	require.Equal(t, http.StatusOK, second.resp.StatusCode)
	assert.Equal(t, 200, second.next(t).ErrorCode)

	third := openV3Stream(t, url, `{"value":{"data":3}}`)
	require.Equal(t, http.StatusServiceUnavailable, third.resp.StatusCode, "a third stream is served")
	b, _ := io.ReadAll(third.resp.Body)
	assert.Equal(t, "1", third.resp.Header.Get("Retry-After"))
	assert.Contains(t, string(b), `"error_code":50303`)
	assert.Contains(t, string(b), "the ingest has 2 v3 streams open, its limit (server.http.max_streams): retry later")

	require.NoError(t, first.w.Close())
	assert.True(t, first.next(t).eof)
	require.Eventually(t, func() bool {
		s := openV3Stream(t, url, `{"value":{"data":4}}`)
		defer s.w.Close()
		return s.resp.StatusCode == http.StatusOK && s.next(t).ErrorCode == 200
	}, 5*time.Second, 20*time.Millisecond, "a stream is served once another ended")
}

// TestV3StreamEndsOnShutdown: after SIGTERM a v3 stream kept reading, and
// its late records were duplicated (issue 15, finding 8). When shutdown
// begins the stream stops reading, answers what it took, says it ends,
// and the ingest stops without waiting for the client.
func TestV3StreamEndsOnShutdown(t *testing.T) {
	_, addr := kafkatest.NewCluster(t)
	in := ingesttest.Start(t, addr, "SPILLWAY_SERVER_SHUTDOWN_TIMEOUT=10s")
	s := openV3Stream(t, in.URL+"/v3/clusters/c/topics/closing/records", `{"value":{"type":"STRING","data":"r0"}}`)
	require.Equal(t, http.StatusOK, s.resp.StatusCode)
	assert.Equal(t, 200, s.next(t).ErrorCode)

	stopped := make(chan error, 1)
	go func() { stopped <- in.Stop() }()
	last := s.next(t)
	assert.Equal(t, 503, last.ErrorCode, last.Message)
	assert.Contains(t, last.Message, "the server is shutting down: the records answered above were taken; send the rest again on a new stream")
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(8 * time.Second):
		t.Fatal("the ingest waits for the open stream to end")
	}
	got := kafkatest.Consume(t, addr, "closing", 1, 10*time.Second)
	require.Len(t, got, 1)
	assert.Equal(t, "r0", string(got[0].Value))
}
