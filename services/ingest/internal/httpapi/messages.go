package httpapi

import (
	"bytes"
	"errors"
	"io"
	"net/http"

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

// The answers of POST /topics/{topic}/messages: one record's outcome
// (appendResult), or a batch's (appendBatch), written field by field;
// jsoncodec_test.go has the structs encoding/json gives the same bytes
// for.

// postMessages is kafka-ambassador's route: the body is one record's value,
// or many values, one per line, with Content-Type application/x-ndjson.
func (h *handler) postMessages(c echo.Context, kh kafkaHeaders) error {
	mt := mediaType(c)
	switch mt {
	case mediaText, mediaJSON, mediaBinary, mediaNDJSON:
	default:
		return unsupportedMediaType(c, "text/plain, application/json, application/octet-stream, or application/x-ndjson for many records")
	}
	topic := c.Param("topic")
	recs, err := h.parseMessages(c, mt, topic, kh)
	results, err := h.deliver(c, topic, recs, err)
	if err != nil {
		return err
	}
	if mt != mediaNDJSON {
		res := results[0]
		if res.Outcome == record.Failed {
			return fromError(res.Err)
		}
		status := http.StatusOK
		if res.Outcome == record.Buffered {
			status = http.StatusAccepted
		}
		return writeJSON(c, status, appendResult(make([]byte, 0, 160), &res, &lastTime{}))
	}
	status, first := batchStatus(results)
	setRetryAfter(c, first)
	return writeJSON(c, status, appendBatch(make([]byte, 0, batchAnswerSize(len(results))), results, first))
}

// parseMessages reads the records of a kafka-ambassador request: one, or
// one per line of an NDJSON body.
func (h *handler) parseMessages(c echo.Context, mt, topic string, kh kafkaHeaders) ([]record.Record, error) {
	meta, err := parseMetaWith(c.Request().Header, kh)
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

// deliver is a handler's one call: the request's records for topic, or
// the error it could not be read for (parseErr), to the delivery path. It
// returns the records' results, or the error to answer the whole request
// with.
func (h *handler) deliver(c echo.Context, topic string, recs []record.Record, parseErr error) ([]record.Result, error) {
	req := record.Request{API: API, Topic: topic, Records: recs}
	if parseErr != nil {
		req.Records, req.Err = nil, refusal(parseErr)
	}
	return h.Sender.Deliver(c.Request().Context(), req)
}

// refusal is err with the reason its request is counted under: its own
// when it has one, too_large for one over a limit, else invalid. The
// answer stays err's (fromError finds it inside).
func refusal(err error) error {
	var re *record.Error
	if errors.As(err, &re) {
		return err
	}
	return &record.Error{Reason: refusedFor(err), Message: err.Error(), Err: err}
}

// refusedFor is the reason a request refused before it was sent is
// counted under: too_large for one over a limit, else invalid.
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
	if contentLength > 0 && contentLength <= min(limit, preallocateBytes) {
		// The declared length, read at once: a bytes.Buffer would grow
		// past it to have 512 bytes free for its last read. net/http ends
		// the body at its Content-Length, and a shorter body fails.
		buf := make([]byte, contentLength)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	var buf bytes.Buffer
	if contentLength > 0 {
		buf.Grow(int(min(contentLength, limit+1, preallocateBytes)))
	}
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}

// batchAnswerSize is room enough for the answer to a batch of n records
// that were delivered, with its newline: about 165 bytes a record, with
// a 26-character id and a short topic.
func batchAnswerSize(n int) int { return 32 + 176*n }
