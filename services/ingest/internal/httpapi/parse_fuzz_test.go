package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/spillway/spillway/pkg/record"
)

// requireInvalid fails unless err is a record.Error with ReasonInvalid:
// every parse failure must become a 400, never a 500.
func requireInvalid(t *testing.T, err error) {
	t.Helper()
	var re *record.Error
	if !errors.As(err, &re) || re.Reason != record.ReasonInvalid || re.Message == "" {
		t.Fatalf("parse error is not an invalid-record error with a message: %#v", err)
	}
}

// fuzzCap is the record cap the fuzz targets parse under, beside no cap.
const fuzzCap = 3

// requireSameUnderCap fails unless a parse under fuzzCap (n records, err)
// agrees with the parse without a cap (all records, allErr): the same
// answer, or too_large when there are more than fuzzCap records or the
// cap was reached before a later error.
func requireSameUnderCap(t *testing.T, n int, err error, all int, allErr error) {
	t.Helper()
	if record.ReasonOf(err) == record.ReasonTooLarge {
		if allErr == nil && all <= fuzzCap {
			t.Fatalf("%d records refused under a cap of %d: %v", all, fuzzCap, err)
		}
		return
	}
	if (err == nil) != (allErr == nil) || n != all {
		t.Fatalf("under the cap: %d records, %v; without: %d records, %v", n, err, all, allErr)
	}
}

func FuzzParseNDJSON(f *testing.F) {
	for _, s := range []string{"1\n2\n\n3\n4\nx", "{\"a\":1}\n", "1\n2\n3", "\n\n", "{\"a\":\n", "\"x\"\r\n[1,2]\n", "nul"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		values, err := ParseNDJSON(body, 0)
		capped, cerr := ParseNDJSON(body, fuzzCap)
		requireSameUnderCap(t, len(capped), cerr, len(values), err)
		if err != nil {
			requireInvalid(t, err)
			return
		}
		if len(values) == 0 {
			t.Fatal("no error and no values")
		}
		for _, v := range values {
			if !json.Valid(v) || bytes.ContainsRune(v, '\n') {
				t.Fatalf("value %q is not one line of JSON", v)
			}
		}
	})
}

func FuzzParseV2(f *testing.F) {
	for _, s := range []string{
		`{"records":[{"key":"k","value":{"a":1},"partition":0}]}`,
		`{"records":[{"value":"AAE="}]}`,
		`{"records":[]}`,
		`{"records":[{"value":null}]} trailing`,
		`{"value_schema_id":1,"records":[{"value":1}]}`,
		`{"records":[{"partition":-1,"value":1}]}`,
		`{"records":[{},{},{},{},{"valu":1}]}`,
		`{"records":null}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, binary bool) {
		format := formatJSON
		if binary {
			format = formatBinary
		}
		recs, err := ParseV2(body, format, "t", 0)
		capped, cerr := ParseV2(body, format, "t", fuzzCap)
		requireSameUnderCap(t, len(capped), cerr, len(recs), err)
		if err != nil {
			requireInvalid(t, err)
			return
		}
		if len(recs) == 0 {
			t.Fatal("no error and no records")
		}
		for _, r := range recs {
			if r.Topic != "t" || r.Partition < record.AnyPartition {
				t.Fatalf("bad record %+v", r)
			}
			if format == formatJSON && r.Value != nil && !json.Valid(r.Value) {
				t.Fatalf("json format value %q is not JSON", r.Value)
			}
		}
	})
}

func FuzzDecodeV3(f *testing.F) {
	for _, s := range []string{
		`{"partition_id":1,"headers":[{"name":"h","value":"AAE="}],"key":{"type":"BINARY","data":"AAE="},"value":{"type":"JSON","data":{"a":1}},"timestamp":"2026-01-02T03:04:05Z"}`,
		`{"value":{"type":"STRING","data":"x"}} {"value":{"data":[1]}}`,
		`{"value":{"type":"AVRO","data":1}}`,
		`{"value":{"schema_id":1,"data":1}}`,
		`{"headers":[{"name":"","value":null}]}`,
		`{"value": nope}`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		for range 100 {
			p, err := decodeV3(dec, "t")
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				requireInvalid(t, err)
				return
			}
			if p.rec.Topic != "t" || p.rec.Partition < record.AnyPartition {
				t.Fatalf("bad record %+v", p.rec)
			}
		}
	})
}

func FuzzParseMeta(f *testing.F) {
	f.Add("k", "", "1", "1700000000000", "trace", "v")
	f.Add("", "AAE=", "", "2026-01-02T03:04:05Z", "", "")
	f.Add("k", "AAE=", "-1", "yesterday", "x", "y")
	f.Fuzz(func(t *testing.T, key, keyB64, partition, timestamp, hname, hvalue string) {
		h := http.Header{}
		for name, v := range map[string]string{HeaderKey: key, HeaderKeyBase64: keyB64, HeaderPartition: partition, HeaderTimestamp: timestamp} {
			if v != "" {
				h.Set(name, v)
			}
		}
		if hname != "" {
			h.Set(HeaderRecordPrefix+hname, hvalue)
		}
		m, err := parseMeta(h)
		if err != nil {
			requireInvalid(t, err)
			return
		}
		if m.partition < record.AnyPartition {
			t.Fatalf("partition %d", m.partition)
		}
	})
}

// FuzzValidJSON: the fast validator answers as encoding/json does.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `[1,2`, `"x"`, `1e5`, `nul`, "\"\xff\"", ` {} `, `{"a":1}{}`, `"a\"b"`, `"\\"`, `"\`, "\"a\tb\"", "\"\\\x01\"", `["\"]"]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if validJSON(b) != json.Valid(b) {
			t.Fatalf("%q: validJSON %v, encoding/json %v", b, validJSON(b), json.Valid(b))
		}
	})
}
