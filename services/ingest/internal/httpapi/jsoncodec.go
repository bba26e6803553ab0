package httpapi

import (
	stdjson "encoding/json"
	"strconv"

	"github.com/labstack/echo/v4"
	fastjson "github.com/segmentio/encoding/json"
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

// validJSON says whether b is one valid JSON value (segmentio/encoding's
// validator: the same answer as encoding/json.Valid, faster).
func validJSON(b []byte) bool { return fastjson.Valid(b) }

// appendJSON appends b as encoding/json would encode it, field by field:
// an answer per request of a single record took about 7% of the ingest's
// CPU through reflection. TestResultJSONMatchesEncodingJSON holds the two
// to the same bytes.
func (b *resultBody) appendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	if b.ID != "" {
		dst = append(dst, `"id":`...)
		dst = appendString(dst, b.ID)
		dst = append(dst, ',')
	}
	dst = append(dst, `"outcome":`...)
	dst = appendString(dst, b.Outcome)
	dst = append(dst, `,"topic":`...)
	dst = appendString(dst, b.Topic)
	if b.Partition != nil {
		dst = append(dst, `,"partition":`...)
		dst = strconv.AppendInt(dst, int64(*b.Partition), 10)
	}
	if b.Offset != nil {
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendInt(dst, *b.Offset, 10)
	}
	if b.Timestamp != nil {
		dst = append(dst, `,"timestamp":`...)
		ts, err := b.Timestamp.MarshalJSON()
		if err != nil { // a year outside 0-9999: as encoding/json, which fails too
			ts = []byte("null")
		}
		dst = append(dst, ts...)
	}
	if b.ErrorCode != 0 {
		dst = append(dst, `,"error_code":`...)
		dst = strconv.AppendInt(dst, int64(b.ErrorCode), 10)
	}
	if b.Message != "" {
		dst = append(dst, `,"message":`...)
		dst = fastjson.AppendEscape(dst, b.Message, fastjson.EscapeHTML)
	}
	return append(dst, '}')
}

// appendString appends s as a JSON string: as it is, quoted, when it has
// nothing to escape (ids, outcomes and topic names, mostly), else escaped
// as encoding/json escapes it.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return fastjson.AppendEscape(dst, s, fastjson.EscapeHTML)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// appendJSON appends b as encoding/json would encode it.
func (b *batchBody) appendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	if b.ErrorCode != 0 {
		dst = append(dst, `"error_code":`...)
		dst = strconv.AppendInt(dst, int64(b.ErrorCode), 10)
		dst = append(dst, ',')
	}
	if b.Message != "" {
		dst = append(dst, `"message":`...)
		dst = fastjson.AppendEscape(dst, b.Message, fastjson.EscapeHTML)
		dst = append(dst, ',')
	}
	dst = append(dst, `"results":`...)
	if b.Results == nil {
		return append(dst, "null}"...)
	}
	dst = append(dst, '[')
	for i := range b.Results {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = b.Results[i].appendJSON(dst)
	}
	return append(dst, "]}"...)
}

// writeJSON answers with body, a line of JSON, as echo's c.JSON does.
func writeJSON(c echo.Context, status int, body []byte) error {
	return c.Blob(status, echo.MIMEApplicationJSON, append(body, '\n'))
}
