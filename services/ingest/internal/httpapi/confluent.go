package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	fastjson "github.com/segmentio/encoding/json"

	"github.com/labstack/echo/v4"

	"github.com/spillway/spillway/pkg/record"
)

// The media types of Confluent REST Proxy v2's produce API.
const (
	mediaV2JSON     = "application/vnd.kafka.json.v2+json"
	mediaV2Binary   = "application/vnd.kafka.binary.v2+json"
	mediaV2Response = "application/vnd.kafka.v2+json"
)

// v2Response answers a v2 produce: one offset entry per record, in order.
type v2Response struct {
	ErrorCode     int        `json:"error_code,omitempty"`
	Message       string     `json:"message,omitempty"`
	Offsets       []v2Offset `json:"offsets"`
	KeySchemaID   *int       `json:"key_schema_id"`
	ValueSchemaID *int       `json:"value_schema_id"`
}

// v2Offset is one record's outcome. error_code is Confluent's: 1 when
// retrying will not help, 2 when it may.
type v2Offset struct {
	Partition *int32  `json:"partition"`
	Offset    *int64  `json:"offset"`
	ErrorCode *int    `json:"error_code"`
	Error     *string `json:"error"`
	Outcome   string  `json:"outcome"`
	ID        string  `json:"id,omitempty"`
}

// postV2 is Confluent REST Proxy v2's produce: POST /topics/{topic} with
// records in the json or binary embedded format.
func (h *handler) postV2(c echo.Context) error {
	var format string
	switch mediaType(c) {
	case mediaV2JSON:
		format = formatJSON
	case mediaV2Binary:
		format = formatBinary
	default:
		return unsupportedMediaType(c, mediaV2JSON+" or "+mediaV2Binary+" (avro, protobuf and jsonschema need a schema registry, which Spillway does not use)")
	}
	topic := c.Param("topic")
	recs, err := h.parseV2(c, format, topic)
	results, err := h.deliver(c, topic, recs, err)
	if err != nil {
		return err
	}
	status, first := batchStatus(results)
	out := v2Response{Offsets: make([]v2Offset, len(results))}
	for i, r := range results {
		o := v2Offset{Outcome: r.Outcome.String(), ID: r.ID}
		switch r.Outcome {
		case record.Delivered:
			o.Partition, o.Offset = &r.Partition, &r.Offset
		case record.Failed:
			code := answerOf(record.ReasonOf(r.Err)).v2
			msg := fromError(r.Err).body.Message
			o.ErrorCode, o.Error = &code, &msg
		}
		out.Offsets[i] = o
	}
	if first != nil {
		out.ErrorCode, out.Message = first.body.ErrorCode, first.body.Message
	}
	setRetryAfter(c, first)
	c.Response().Header().Set(echo.HeaderContentType, mediaV2Response)
	c.Response().WriteHeader(status)
	return fastjson.NewEncoder(c.Response()).Encode(out)
}

// parseV2 reads the records of a v2 request.
func (h *handler) parseV2(c echo.Context, format, topic string) ([]record.Record, error) {
	body, err := h.readBody(c)
	if err != nil {
		return nil, err
	}
	return ParseV2(body, format, topic, h.MaxRequestRecords)
}

// v3Result answers one v3 record. error_code is the record's HTTP status.
type v3Result struct {
	ErrorCode   int         `json:"error_code"`
	Message     string      `json:"message,omitempty"`
	Outcome     string      `json:"outcome,omitempty"`
	ID          string      `json:"id,omitempty"`
	ClusterID   string      `json:"cluster_id,omitempty"`
	TopicName   string      `json:"topic_name,omitempty"`
	PartitionID *int32      `json:"partition_id,omitempty"`
	Offset      *int64      `json:"offset,omitempty"`
	Timestamp   *time.Time  `json:"timestamp,omitempty"`
	Key         *v3DataSize `json:"key,omitempty"`
	Value       *v3DataSize `json:"value,omitempty"`
}

type v3DataSize struct {
	Type string `json:"type"`
	Size int    `json:"size"`
}

func newV3Result(clusterID string, p v3Parsed, r record.Result) (int, v3Result) {
	if r.Outcome == record.Failed {
		he := fromError(r.Err)
		return he.status, v3Result{ErrorCode: he.status, Message: he.body.Message, Outcome: r.Outcome.String(), ID: r.ID}
	}
	status := http.StatusOK
	if r.Outcome == record.Buffered {
		status = http.StatusAccepted
	}
	out := v3Result{ErrorCode: status, Outcome: r.Outcome.String(), ID: r.ID, ClusterID: clusterID, TopicName: p.rec.Topic}
	if r.Outcome == record.Delivered {
		out.PartitionID, out.Offset = &r.Partition, &r.Offset
		if !r.Timestamp.IsZero() {
			ts := r.Timestamp.UTC()
			out.Timestamp = &ts
		}
	}
	if p.keyType != "" {
		out.Key = &v3DataSize{Type: p.keyType, Size: len(p.rec.Key)}
	}
	if p.valueType != "" {
		out.Value = &v3DataSize{Type: p.valueType, Size: len(p.rec.Value)}
	}
	return status, out
}

// postV3 is Confluent REST Proxy v3's produce. A body of one record is
// answered with that record's status. A body of several concatenated
// records, or a chunked body (streaming mode), is answered 200 with one
// JSON result per record, in order, each written as soon as it is known;
// a failed record's result carries its status in error_code.
func (h *handler) postV3(c echo.Context) error {
	if mediaType(c) != mediaJSON {
		return unsupportedMediaType(c, mediaJSON)
	}
	topic := c.Param("topic")
	req := c.Request()
	if req.ContentLength < 0 {
		// A stream's records are each one request; the stream is refused
		// first when its topic is not a topic.
		if _, err := h.deliver(c, topic, nil, nil); err != nil {
			return err
		}
		return h.streamV3(c, topic)
	}
	parsed, err := h.parseV3(c, topic)
	recs := make([]record.Record, len(parsed))
	for i, p := range parsed {
		recs[i] = p.rec
	}
	results, err := h.deliver(c, topic, recs, err)
	if err != nil {
		return err
	}
	clusterID := c.Param("cluster_id")
	if len(parsed) == 1 {
		status, out := newV3Result(clusterID, parsed[0], results[0])
		if results[0].Outcome == record.Failed {
			setRetryAfter(c, fromError(results[0].Err))
		}
		return c.JSON(status, out)
	}
	c.Response().Header().Set(echo.HeaderContentType, mediaJSON)
	c.Response().WriteHeader(http.StatusOK)
	enc := fastjson.NewEncoder(c.Response())
	for i := range parsed {
		_, out := newV3Result(clusterID, parsed[i], results[i])
		if err := enc.Encode(out); err != nil {
			return nil // the client is gone
		}
	}
	return nil
}

// parseV3 reads the records of a v3 request whose length is known: one,
// or several concatenated.
func (h *handler) parseV3(c echo.Context, topic string) ([]v3Parsed, error) {
	body, err := h.readBody(c)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var parsed []v3Parsed
	for {
		if h.MaxRequestRecords > 0 && len(parsed) == h.MaxRequestRecords && dec.More() {
			return nil, tooManyRecords(h.MaxRequestRecords)
		}
		p, err := decodeV3(dec, topic)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if len(parsed) > 0 {
				return nil, invalid("record %d: %s", len(parsed), record.ClientMessage(err))
			}
			return nil, err
		}
		parsed = append(parsed, p)
	}
	if len(parsed) == 0 {
		return nil, invalid("the body holds no record: want {\"value\":{\"type\":\"JSON\",\"data\":...}}")
	}
	return parsed, nil
}

// streamWindow is how many records of one v3 stream may wait for Kafka at
// once. A full window stops reading the stream, which pushes back on the
// client through TCP.
const streamWindow = 512

type v3Pending struct {
	parsed v3Parsed
	err    error // a parse error: the stream ends after it
	done   chan struct{}
	res    record.Result
}

// streamV3 serves v3's streaming mode: records are read, sent and answered
// concurrently; answers keep the records' order. At most MaxStreams are
// open at once. A stream that sends nothing for StreamIdleTimeout, or that
// is open when shutdown begins, stops being read: the records it took are
// answered, then a last line says why the stream ends.
func (h *handler) streamV3(c echo.Context, topic string) error {
	if n := h.streams.Add(1); h.MaxStreams > 0 && n > int64(h.MaxStreams) {
		h.streams.Add(-1)
		// Without it, net/http would read the stream's body, which may
		// never end, before it answers.
		c.Response().Header().Set(echo.HeaderConnection, "close")
		return newHTTPError(http.StatusServiceUnavailable, 50303, fmt.Sprintf(
			"the ingest has %d v3 streams open, its limit (server.http.max_streams): retry later", n-1))
	}
	defer h.streams.Add(-1)
	req := c.Request()
	ctx := req.Context()
	rc := http.NewResponseController(c.Response().Writer)
	if err := rc.EnableFullDuplex(); err != nil {
		h.Logger.Debug("v3 stream: full duplex unavailable", "error", err)
	}
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})

	body := &recordLimitReader{r: req.Body, limit: h.MaxBodyBytes, rc: rc, idle: h.StreamIdleTimeout}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	body.dec = dec
	read := make(chan struct{})
	defer func() { <-read }()
	go func() { // shutdown stops the reading
		select {
		case <-h.Draining:
			body.stop()
		case <-read:
		}
	}()

	queue := make(chan *v3Pending, streamWindow)
	go func() {
		defer close(read)
		defer close(queue)
		for ctx.Err() == nil {
			p, err := decodeV3(dec, topic)
			if errors.Is(err, io.EOF) {
				return
			}
			pending := &v3Pending{parsed: p, done: make(chan struct{})}
			if err != nil {
				switch {
				case body.stopped():
					err = newHTTPError(http.StatusServiceUnavailable, 50305,
						"the server is shutting down: the records answered above were taken; send the rest again on a new stream")
				case body.timedOut():
					err = newHTTPError(http.StatusRequestTimeout, 40801, fmt.Sprintf(
						"the stream sent nothing for %s (server.http.stream_idle_timeout): it is ended; the records answered above were taken", h.StreamIdleTimeout))
				case body.over:
					err = record.Errorf(record.ReasonTooLarge, "a record in the stream is over the limit of %d bytes (server.http.max_body_bytes)", h.MaxBodyBytes)
					_, _ = h.Sender.Deliver(ctx, record.Request{API: API, Topic: topic, Err: err})
				default:
					_, _ = h.Sender.Deliver(ctx, record.Request{API: API, Topic: topic, Err: &record.Error{Reason: record.ReasonOf(err), Message: record.ClientMessage(err), Err: err}})
				}
				pending.err = err
				close(pending.done)
				queue <- pending
				return
			}
			queue <- pending
			go func() {
				// A record taken is answered, delivered or buffered, even
				// when the reading ends (idle, shutdown) or the client
				// leaves: the stream's context ends with its reading.
				res, err := h.Sender.Deliver(context.WithoutCancel(ctx), record.Request{API: API, Topic: topic, Records: []record.Record{p.rec}})
				if err != nil { // the stream's topic was checked: not met
					res = []record.Result{record.Fail(topic, err)}
				}
				pending.res = res[0]
				close(pending.done)
			}()
		}
	}()

	c.Response().Header().Set(echo.HeaderContentType, mediaJSON)
	c.Response().WriteHeader(http.StatusOK)
	enc := fastjson.NewEncoder(c.Response())
	clusterID := c.Param("cluster_id")
	writing := true
	for pending := range queue {
		<-pending.done
		if !writing {
			continue // the client is gone; drain so the reader ends
		}
		var out v3Result
		if pending.err != nil {
			he := fromError(pending.err)
			out = v3Result{ErrorCode: he.status, Message: he.body.Message, Outcome: record.Failed.String()}
		} else {
			_, out = newV3Result(clusterID, pending.parsed, pending.res)
		}
		if err := enc.Encode(out); err != nil {
			writing = false
			continue
		}
		if len(queue) == 0 {
			_ = rc.Flush()
		}
	}
	return nil
}

// recordLimitReader fails a stream whose current record grows past limit
// bytes, so that one endless record cannot exhaust memory. With idle set,
// each read must bring a byte within idle; stop ends the reading at once.
type recordLimitReader struct {
	r     io.Reader
	dec   *json.Decoder
	limit int64
	read  int64
	over  bool
	rc    *http.ResponseController
	idle  time.Duration

	mu       sync.Mutex // orders stop against the deadline a Read sets
	stopping bool
	timeout  bool
}

var errStreamStopped = errors.New("the stream is no longer read")

// stop makes the pending and later reads fail.
func (l *recordLimitReader) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopping = true
	_ = l.rc.SetReadDeadline(time.Now())
}

func (l *recordLimitReader) stopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopping
}

func (l *recordLimitReader) timedOut() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.timeout
}

var errRecordTooLarge = errors.New("record over the size limit")

func (l *recordLimitReader) Read(p []byte) (int, error) {
	if l.dec != nil && l.read-l.dec.InputOffset() > l.limit {
		l.over = true
		return 0, errRecordTooLarge
	}
	l.mu.Lock()
	if l.stopping {
		l.mu.Unlock()
		return 0, errStreamStopped
	}
	if l.idle > 0 && l.rc != nil {
		_ = l.rc.SetReadDeadline(time.Now().Add(l.idle))
	}
	l.mu.Unlock()
	n, err := l.r.Read(p)
	l.read += int64(n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		l.mu.Lock()
		l.timeout = !l.stopping
		l.mu.Unlock()
	}
	return n, err
}
