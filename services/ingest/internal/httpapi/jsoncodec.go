package httpapi

import (
	stdjson "encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	fastjson "github.com/segmentio/encoding/json"
	valyala "github.com/valyala/fastjson"

	"github.com/spillway/spillway/pkg/record"
)

// jsonSerializer writes echo's JSON answers with segmentio/encoding, which
// encodes a batch's results several times faster than encoding/json with
// the same output; decoding stays with encoding/json, whose error messages
// the API's answers quote.
type jsonSerializer struct{}

func (jsonSerializer) Serialize(c echo.Context, i any, indent string) error {
	enc := fastjson.NewEncoder(c.Response())
	if indent != "" {
		enc.SetIndent("", indent)
	}
	return enc.Encode(i)
}

func (jsonSerializer) Deserialize(c echo.Context, i any) error {
	return stdjson.NewDecoder(c.Request().Body).Decode(i)
}

// validJSON says whether b is one valid JSON value, as encoding/json.Valid
// says (FuzzValidJSON holds them to the same answer): valyala/fastjson's
// validator, three times as fast as segmentio/encoding's, which took 14%
// of the ingest's CPU under NDJSON load. fastjson lets a raw control
// character stand in a string that also holds an escape, and has no
// bound on nesting (it recurses: a body of brackets would exhaust the
// stack), so one pass first refuses both, as encoding/json does, and
// bounds the nesting at its 10,000. That pass skips a string's plain
// bytes in a tight loop: a record's bytes are mostly strings, and a
// byte-by-byte state machine took longer than fastjson itself.
func validJSON(b []byte) bool {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b); i++ {
				for i < len(b) && plainInString[b[i]] {
					i++
				}
				if i == len(b) || b[i] == '"' {
					break
				}
				if b[i] < 0x20 {
					return false
				}
				i++ // a backslash: the next byte is escaped (fastjson checks which)
			}
		case '[', '{':
			if depth++; depth > maxJSONDepth {
				return false
			}
		case ']', '}':
			depth--
		}
	}
	return valyala.ValidateBytes(b) == nil
}

// plainInString says which bytes a JSON string holds as they are: all
// but the quote, the backslash and the control characters.
var plainInString = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// maxJSONDepth is encoding/json's bound on nesting.
const maxJSONDepth = 10000

// appendResult appends one record's outcome, field by field: through
// reflection an answer per request of a single record took about 7% of
// the ingest's CPU. TestResultJSONMatchesEncodingJSON holds it to the
// bytes encoding/json gives.
// Its timestamp is copied from where last wrote the same instant, when
// it did.
func appendResult(dst []byte, r *record.Result, last *lastTime) []byte {
	dst = append(dst, '{')
	if r.ID != "" {
		dst = append(dst, `"id":`...)
		dst = appendString(dst, r.ID)
		dst = append(dst, ',')
	}
	dst = append(dst, `"outcome":`...)
	dst = appendString(dst, r.Outcome.String())
	dst = append(dst, `,"topic":`...)
	dst = appendString(dst, r.Topic)
	switch r.Outcome {
	case record.Delivered:
		dst = append(dst, `,"partition":`...)
		dst = strconv.AppendInt(dst, int64(r.Partition), 10)
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendInt(dst, r.Offset, 10)
		if !r.Timestamp.IsZero() {
			dst = append(dst, `,"timestamp":`...)
			dst = last.append(dst, r.Timestamp)
		}
	case record.Failed:
		he := fromError(r.Err)
		dst = appendError(dst, true, he.body.ErrorCode, he.body.Message)
	}
	return append(dst, '}')
}

// appendError appends error_code and message, each unless empty; comma:
// something comes before them.
func appendError(dst []byte, comma bool, code int, msg string) []byte {
	if code != 0 {
		if comma {
			dst = append(dst, ',')
		}
		dst = append(dst, `"error_code":`...)
		dst = strconv.AppendInt(dst, int64(code), 10)
		comma = true
	}
	if msg != "" {
		if comma {
			dst = append(dst, ',')
		}
		dst = append(dst, `"message":`...)
		dst = appendString(dst, msg)
	}
	return dst
}

// appendBatch appends a batch's answer: a result per record and, when not
// every record made it, the first failure at the top.
func appendBatch(dst []byte, results []record.Result, first *httpError) []byte {
	dst = append(dst, '{')
	if first != nil && (first.body.ErrorCode != 0 || first.body.Message != "") {
		dst = appendError(dst, false, first.body.ErrorCode, first.body.Message)
		dst = append(dst, ',')
	}
	dst = append(dst, `"results":[`...)
	var last lastTime // a request's records mostly share their receive time
	for i := range results {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendResult(dst, &results[i], &last)
	}
	return append(dst, "]}"...)
}

// lastTime is where in an answer the last timestamp was written, and
// its instant: the records of a request share their receive time, which
// is then formatted once (it took 4% of the ingest's CPU under NDJSON
// load, formatted for each record).
type lastTime struct {
	t          time.Time
	start, end int // in the answer; end 0: none yet
}

// append appends t as appendTime does: a copy of the last one written
// when it is the same instant.
func (l *lastTime) append(dst []byte, t time.Time) []byte {
	if l.end > 0 && t.Equal(l.t) {
		return append(dst, dst[l.start:l.end]...)
	}
	start := len(dst)
	dst = appendTime(dst, t.UTC())
	l.t, l.start, l.end = t, start, len(dst)
	return dst
}

// appendTime appends t as encoding/json does (RFC 3339 with nanoseconds,
// quoted), and null for a year it cannot write, where encoding/json fails.
func appendTime(dst []byte, t time.Time) []byte {
	if y := t.Year(); y < 0 || y >= 10000 {
		return append(dst, "null"...)
	}
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// appendString appends s as a JSON string: as it is, quoted, when it has
// nothing to escape (ids, outcomes and topic names, mostly), else escaped
// as encoding/json escapes it.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if !unescaped[s[i]] {
			return fastjson.AppendEscape(dst, s, fastjson.EscapeHTML)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// unescaped says which bytes encoding/json writes in a string as they
// are: printable ASCII but the quote, the backslash, and <, > and &.
var unescaped = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = !strings.ContainsRune(`"\<>&`, rune(c))
	}
	return t
}()

// writeJSON answers with body, a line of JSON, as echo's c.JSON does.
func writeJSON(c echo.Context, status int, body []byte) error {
	return c.Blob(status, echo.MIMEApplicationJSON, append(body, '\n'))
}
