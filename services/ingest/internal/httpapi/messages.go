package httpapi

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/spillway/spillway/pkg/record"
)

// The media types of POST /topics/{topic}/messages.
const (
	mediaText   = "text/plain"
	mediaJSON   = "application/json"
	mediaBinary = "application/octet-stream"
	mediaNDJSON = "application/x-ndjson"
)

// resultBody is one record's outcome on POST /topics/{topic}/messages.
type resultBody struct {
	ID        string     `json:"id,omitempty"`
	Outcome   string     `json:"outcome"`
	Topic     string     `json:"topic"`
	Partition *int32     `json:"partition,omitempty"`
	Offset    *int64     `json:"offset,omitempty"`
	Timestamp *time.Time `json:"timestamp,omitempty"`
	ErrorCode int        `json:"error_code,omitempty"`
	Message   string     `json:"message,omitempty"`
}

func newResultBody(r record.Result) resultBody {
	b := resultBody{ID: r.ID, Outcome: r.Outcome.String(), Topic: r.Topic}
	switch r.Outcome {
	case record.Delivered:
		b.Partition, b.Offset = &r.Partition, &r.Offset
		if !r.Timestamp.IsZero() {
			ts := r.Timestamp.UTC()
			b.Timestamp = &ts
		}
	case record.Failed:
		he := fromError(r.Err)
		b.ErrorCode, b.Message = he.body.ErrorCode, he.body.Message
	}
	return b
}

// batchBody answers a batch: a result per record and, when not every
// record made it, the first failure at the top.
type batchBody struct {
	ErrorCode int          `json:"error_code,omitempty"`
	Message   string       `json:"message,omitempty"`
	Results   []resultBody `json:"results"`
}

// postMessages is kafka-ambassador's route: the body is one record's value,
// or many values, one per line, with Content-Type application/x-ndjson.
func (h *handler) postMessages(c echo.Context) error {
	mt := mediaType(c)
	switch mt {
	case mediaText, mediaJSON, mediaBinary, mediaNDJSON:
	default:
		return unsupportedMediaType(c, "text/plain, application/json, application/octet-stream, or application/x-ndjson for many records")
	}
	topic := c.Param("topic")
	recs, err := h.parseMessages(c, mt, topic)
	if err != nil {
		h.Sender.Refuse(c.Request().Context(), API, topic, 1, refusedFor(err))
		return err
	}

	results := h.Sender.Send(c.Request().Context(), API, recs)
	if mt != mediaNDJSON {
		res := results[0]
		if res.Outcome == record.Failed {
			return fromError(res.Err)
		}
		status := http.StatusOK
		if res.Outcome == record.Buffered {
			status = http.StatusAccepted
		}
		body := newResultBody(res)
		return writeJSON(c, status, body.appendJSON(make([]byte, 0, 160)))
	}
	status, first := batchStatus(results)
	out := batchBody{Results: make([]resultBody, len(results))}
	for i, r := range results {
		out.Results[i] = newResultBody(r)
	}
	if first != nil {
		out.ErrorCode, out.Message = first.body.ErrorCode, first.body.Message
	}
	setRetryAfter(c, first)
	return writeJSON(c, status, out.appendJSON(make([]byte, 0, 32+150*len(out.Results))))
}

// parseMessages reads the records of a kafka-ambassador request: one, or
// one per line of an NDJSON body.
func (h *handler) parseMessages(c echo.Context, mt, topic string) ([]record.Record, error) {
	if err := record.ValidateTopic(topic); err != nil {
		return nil, err
	}
	meta, err := parseMeta(c.Request().Header)
	if err != nil {
		return nil, err
	}
	body, err := h.readBody(c)
	if err != nil {
		return nil, err
	}
	if mt != mediaNDJSON {
		if mt == mediaJSON && !validJSON(body) {
			return nil, invalid("the body is not valid JSON (Content-Type application/json): %s", jsonError(body))
		}
		return []record.Record{meta.record(topic, body)}, nil
	}
	values, err := ParseNDJSON(body, h.MaxRequestRecords)
	if err != nil {
		return nil, err
	}
	recs := make([]record.Record, len(values))
	for i, v := range values {
		recs[i] = meta.record(topic, v)
	}
	return recs, nil
}

// refusedFor is the reason a request refused before Send is counted
// under: too_large for one over a limit, else invalid.
func refusedFor(err error) record.Reason {
	var re *record.Error
	if errors.As(err, &re) {
		return re.Reason
	}
	if fromError(err).status == http.StatusRequestEntityTooLarge {
		return record.ReasonTooLarge
	}
	return record.ReasonInvalid
}

// preallocateBytes is the most readAll reserves up front for a body; a
// larger body grows the buffer as its bytes arrive.
const preallocateBytes = 1 << 20

// readAll reads r, sized by the request's Content-Length when known, but
// never beyond limit or preallocateBytes: a client may claim any length and
// send two bytes, and memory must go to bytes that arrived.
func readAll(r io.Reader, contentLength, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	if contentLength > 0 {
		buf.Grow(int(min(contentLength, limit+1, preallocateBytes)))
	}
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}
