package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spillway/spillway/pkg/record"
)

// The request headers that carry a record's metadata on
// POST /topics/{topic}/messages.
const (
	HeaderKey          = "X-Kafka-Key"
	HeaderKeyBase64    = "X-Kafka-Key-Base64"
	HeaderPartition    = "X-Kafka-Partition"
	HeaderTimestamp    = "X-Kafka-Timestamp"
	HeaderRecordPrefix = "X-Kafka-Header-"
)

func invalid(format string, args ...any) *record.Error {
	return record.Errorf(record.ReasonInvalid, format, args...)
}

// recordMeta is what the X-Kafka-* request headers say about the records
// of one request.
type recordMeta struct {
	key       []byte
	partition int32
	timestamp time.Time
	headers   []record.Header
}

// parseMeta reads the X-Kafka-* request headers.
func parseMeta(h http.Header) (recordMeta, error) {
	return parseMetaWith(h, scanKafkaHeaders(h))
}

// parseMetaWith is parseMeta over the X-Kafka-* header names kh, scanned
// once for the request.
func parseMetaWith(h http.Header, kh kafkaHeaders) (recordMeta, error) {
	m, err := parseMetaFields(h)
	if err != nil {
		return m, err
	}
	for _, name := range kh.names {
		if !strings.HasPrefix(name, HeaderRecordPrefix) || len(name) == len(HeaderRecordPrefix) {
			continue
		}
		key := strings.ToLower(name[len(HeaderRecordPrefix):])
		for _, v := range h[name] {
			m.headers = append(m.headers, record.Header{Key: key, Value: []byte(v)})
		}
	}
	return m, nil
}

// parseMetaFields reads the key, partition and timestamp headers, without
// a scan of every header for record headers.
func parseMetaFields(h http.Header) (recordMeta, error) {
	m := recordMeta{partition: record.AnyPartition}
	if v, ok := h[HeaderKey]; ok {
		m.key = []byte(v[0])
	}
	if v := h.Get(HeaderKeyBase64); v != "" {
		if m.key != nil {
			return m, invalid("give the key in %s or in %s, not both", HeaderKey, HeaderKeyBase64)
		}
		k, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return m, invalid("%s is not valid base64: %v", HeaderKeyBase64, err)
		}
		m.key = k
	}
	if v := h.Get(HeaderPartition); v != "" {
		p, err := parsePartition(v)
		if err != nil {
			return m, invalid("%s: %v", HeaderPartition, err)
		}
		m.partition = p
	}
	if v := h.Get(HeaderTimestamp); v != "" {
		ts, err := parseTimestamp(v)
		if err != nil {
			return m, invalid("%s: %v", HeaderTimestamp, err)
		}
		m.timestamp = ts
	}
	return m, nil
}

func parsePartition(s string) (int32, error) {
	p, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32)
	if err != nil || p < 0 {
		return 0, fmt.Errorf("%q is not a partition; want a whole number of 0 or more", s)
	}
	return int32(p), nil
}

// parseTimestamp accepts milliseconds since the Unix epoch, as Kafka
// counts, or an RFC 3339 time.
func parseTimestamp(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		if ms < 0 {
			return time.Time{}, fmt.Errorf("%q is before 1970", s)
		}
		return time.UnixMilli(ms), nil
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a timestamp; want milliseconds since 1970 or RFC 3339 (2026-11-23T10:00:00Z)", s)
	}
	if ts.Before(time.Unix(0, 0)) {
		return time.Time{}, fmt.Errorf("%q is before 1970", s)
	}
	return ts, nil
}

func (m recordMeta) record(topic string, value []byte) record.Record {
	return record.Record{Topic: topic, Key: m.key, Value: value, Headers: m.headers, Partition: m.partition, Timestamp: m.timestamp}
}

// tooManyRecords refuses a request over server.max_request_records. It
// is answered before the records past the cap are built: a 16 MiB body of
// one-byte records is 8.4 M records, which took the ingest to over 9 GB
// (issue 15).
func tooManyRecords(limit int) error {
	return record.Errorf(record.ReasonTooLarge,
		"the request holds more than %d records, the limit of one request (server.max_request_records): send them in smaller requests", limit)
}

// ParseNDJSON splits an application/x-ndjson body into its values: one
// JSON value per line. Blank lines are skipped; a line that is not JSON is
// an error that names the line. A body of more than limit values is
// refused as soon as the value past the limit is found (limit 0: no
// limit).
func ParseNDJSON(body []byte, limit int) ([][]byte, error) {
	var values [][]byte
	line := 0
	for len(body) > 0 {
		line++
		var v []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			v, body = body[:i], body[i+1:]
		} else {
			v, body = body, nil
		}
		v = bytes.TrimRight(v, "\r")
		if len(bytes.TrimSpace(v)) == 0 {
			continue
		}
		if limit > 0 && len(values) == limit {
			return nil, tooManyRecords(limit)
		}
		if !validJSON(v) {
			return nil, invalid("line %d is not valid JSON: %s", line, jsonError(v))
		}
		values = append(values, v)
	}
	if len(values) == 0 {
		return nil, invalid("the body holds no records: want one JSON value per line")
	}
	return values, nil
}

// jsonError describes why b is not valid JSON, with the byte offset.
func jsonError(b []byte) string {
	var v any
	err := json.Unmarshal(b, &v)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%v at byte %d", se, se.Offset)
	}
	if err != nil {
		return err.Error()
	}
	return "trailing data"
}

// describeDecodeError turns a json.Decoder error into a message that says
// what is wrong and where.
func describeDecodeError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "the body"
		}
		return fmt.Sprintf("%s: want %s, got JSON %s (at byte %d)", field, te.Type, te.Value, te.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "the body ends in the middle of a JSON value"
	default:
		return strings.TrimPrefix(err.Error(), "json: ")
	}
}

// The embedded formats of Confluent REST Proxy v2.
const (
	formatJSON   = "json"
	formatBinary = "binary"
)

type v2Request struct {
	Records       v2Records       `json:"records"`
	KeySchema     json.RawMessage `json:"key_schema"`
	KeySchemaID   json.RawMessage `json:"key_schema_id"`
	ValueSchema   json.RawMessage `json:"value_schema"`
	ValueSchemaID json.RawMessage `json:"value_schema_id"`
}

type v2Record struct {
	Key       json.RawMessage `json:"key"`
	Value     json.RawMessage `json:"value"`
	Partition *int64          `json:"partition"`
}

// v2Records decodes the records array one record at a time, and stops at
// the one past its limit: a body of millions of empty records must not
// become millions of structs before it is refused.
type v2Records struct {
	limit int // 0: no limit
	list  []v2Record
}

func (rs *v2Records) UnmarshalJSON(b []byte) error {
	rs.list = nil
	if string(b) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return invalid("records: want an array of records, got %s", jsonKind(b))
	}
	for dec.More() {
		if rs.limit > 0 && len(rs.list) == rs.limit {
			return tooManyRecords(rs.limit)
		}
		var r v2Record
		if err := dec.Decode(&r); err != nil {
			return invalid("records[%d]: %s", len(rs.list), describeDecodeError(err))
		}
		rs.list = append(rs.list, r)
	}
	return nil
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// ParseV2 parses a Confluent REST Proxy v2 produce body in the json or
// binary embedded format into records for topic. A body of more than
// limit records is refused at the record past the limit (0: no limit).
func ParseV2(body []byte, format, topic string, limit int) ([]record.Record, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	req := v2Request{Records: v2Records{limit: limit}}
	if err := dec.Decode(&req); err != nil {
		var re *record.Error
		if errors.As(err, &re) {
			return nil, err
		}
		return nil, invalid("%s", describeDecodeError(err))
	}
	if dec.More() {
		return nil, invalid("unexpected data after the JSON object at byte %d", dec.InputOffset())
	}
	for _, s := range []json.RawMessage{req.KeySchema, req.KeySchemaID, req.ValueSchema, req.ValueSchemaID} {
		if !isNull(s) {
			return nil, invalid("schemas are not supported: send the json or binary embedded format without key_schema, value_schema or their ids")
		}
	}
	if len(req.Records.list) == 0 {
		return nil, invalid("the body holds no records: want {\"records\":[{\"value\":...}]}")
	}
	recs := make([]record.Record, len(req.Records.list))
	for i, r := range req.Records.list {
		rec := record.Record{Topic: topic, Partition: record.AnyPartition}
		if r.Partition != nil {
			if *r.Partition < 0 || *r.Partition > 1<<31-1 {
				return nil, invalid("records[%d].partition: %d is not a partition; want a whole number of 0 or more", i, *r.Partition)
			}
			rec.Partition = int32(*r.Partition)
		}
		var err error
		if rec.Key, err = v2Data(r.Key, format); err != nil {
			return nil, invalid("records[%d].key: %v", i, err)
		}
		if rec.Value, err = v2Data(r.Value, format); err != nil {
			return nil, invalid("records[%d].value: %v", i, err)
		}
		recs[i] = rec
	}
	return recs, nil
}

// v2Data decodes one key or value: null stays nil; the json format keeps
// the JSON text (compacted); the binary format decodes base64.
func v2Data(raw json.RawMessage, format string) ([]byte, error) {
	if isNull(raw) {
		return nil, nil
	}
	if format == formatBinary {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("want a base64 string in the binary format, got %s", jsonKind(raw))
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("not valid base64: %v", err)
		}
		return b, nil
	}
	if !bytes.ContainsAny(raw, " \t\n\r") {
		return raw, nil // compact already (the decoder checked it is valid JSON)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func jsonKind(raw json.RawMessage) string {
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	default:
		return "a number"
	}
}

// v3Record is one record of Confluent REST Proxy v3's produce API.
type v3Record struct {
	PartitionID *int64     `json:"partition_id"`
	Headers     []v3Header `json:"headers"`
	Key         *v3Data    `json:"key"`
	Value       *v3Data    `json:"value"`
	Timestamp   *string    `json:"timestamp"`
}

type v3Header struct {
	Name  string  `json:"name"`
	Value *string `json:"value"` // base64
}

type v3Data struct {
	Type                string          `json:"type"`
	Data                json.RawMessage `json:"data"`
	SchemaID            json.RawMessage `json:"schema_id"`
	SchemaVersion       json.RawMessage `json:"schema_version"`
	Subject             json.RawMessage `json:"subject"`
	SubjectNameStrategy json.RawMessage `json:"subject_name_strategy"`
}

// The v3 data types Spillway takes. Schema-based types (AVRO, PROTOBUF,
// JSONSCHEMA) need a schema registry, which Spillway does not use.
const (
	v3Binary = "BINARY"
	v3JSON   = "JSON"
	v3String = "STRING"
)

// v3Parsed is one parsed v3 record and the types its key and value were
// given in, which the answer repeats.
type v3Parsed struct {
	rec       record.Record
	keyType   string
	valueType string
}

// decodeV3 reads the next v3 record from dec. It returns io.EOF at the
// clean end of the body.
func decodeV3(dec *json.Decoder, topic string) (v3Parsed, error) {
	var r v3Record
	if err := dec.Decode(&r); err != nil {
		if errors.Is(err, io.EOF) {
			return v3Parsed{}, io.EOF
		}
		return v3Parsed{}, invalid("%s", describeDecodeError(err))
	}
	rec, err := r.toRecord(topic)
	return v3Parsed{rec: rec, keyType: r.Key.typeName(), valueType: r.Value.typeName()}, err
}

// typeName is the type the data was given in; "" for an absent key or
// value.
func (d *v3Data) typeName() string {
	switch {
	case d == nil:
		return ""
	case d.Type == "":
		return v3JSON
	default:
		return strings.ToUpper(d.Type)
	}
}

func (r *v3Record) toRecord(topic string) (record.Record, error) {
	rec := record.Record{Topic: topic, Partition: record.AnyPartition}
	if r.PartitionID != nil {
		if *r.PartitionID < 0 || *r.PartitionID > 1<<31-1 {
			return rec, invalid("partition_id: %d is not a partition; want a whole number of 0 or more", *r.PartitionID)
		}
		rec.Partition = int32(*r.PartitionID)
	}
	var err error
	if rec.Key, err = r.Key.bytes(); err != nil {
		return rec, invalid("key: %v", err)
	}
	if rec.Value, err = r.Value.bytes(); err != nil {
		return rec, invalid("value: %v", err)
	}
	for i, h := range r.Headers {
		if h.Name == "" {
			return rec, invalid("headers[%d].name is empty", i)
		}
		var v []byte
		if h.Value != nil {
			if v, err = base64.StdEncoding.DecodeString(*h.Value); err != nil {
				return rec, invalid("headers[%d].value is not valid base64: %v", i, err)
			}
		}
		rec.Headers = append(rec.Headers, record.Header{Key: h.Name, Value: v})
	}
	if r.Timestamp != nil {
		ts, err := time.Parse(time.RFC3339Nano, *r.Timestamp)
		if err != nil {
			return rec, invalid("timestamp: %q is not an RFC 3339 time such as 2026-11-23T10:00:00Z", *r.Timestamp)
		}
		if ts.Before(time.Unix(0, 0)) {
			return rec, invalid("timestamp: %q is before 1970", *r.Timestamp)
		}
		rec.Timestamp = ts
	}
	return rec, nil
}

// bytes decodes a v3 key or value. An absent one, or null data, is nil.
// A missing type means JSON.
func (d *v3Data) bytes() ([]byte, error) {
	if d == nil {
		return nil, nil
	}
	for _, s := range []json.RawMessage{d.SchemaID, d.SchemaVersion, d.Subject, d.SubjectNameStrategy} {
		if !isNull(s) {
			return nil, errors.New("schemas are not supported: use type BINARY, JSON or STRING without schema_id, schema_version or subject")
		}
	}
	typ := strings.ToUpper(d.Type)
	if typ == "" {
		typ = v3JSON
	}
	if isNull(d.Data) {
		if typ != v3JSON && typ != v3Binary && typ != v3String {
			return nil, fmt.Errorf("type %q is not supported; want BINARY, JSON or STRING", d.Type)
		}
		return nil, nil
	}
	switch typ {
	case v3Binary:
		var s string
		if err := json.Unmarshal(d.Data, &s); err != nil {
			return nil, fmt.Errorf("type BINARY wants base64 data in a string, got %s", jsonKind(d.Data))
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("data is not valid base64: %v", err)
		}
		return b, nil
	case v3String:
		var s string
		if err := json.Unmarshal(d.Data, &s); err != nil {
			return nil, fmt.Errorf("type STRING wants a string, got %s", jsonKind(d.Data))
		}
		return []byte(s), nil
	case v3JSON:
		var buf bytes.Buffer
		if err := json.Compact(&buf, d.Data); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	default:
		return nil, fmt.Errorf("type %q is not supported; want BINARY, JSON or STRING", d.Type)
	}
}
