package httpapi

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/spillway/spillway/pkg/record"
)

// PixyCluster is the one cluster name that POST
// /clusters/{cluster}/topics/{topic}/messages accepts: Spillway produces
// to one Kafka, and kafka-pixy calls its first cluster "default".
const PixyCluster = "default"

// pixyHeaderPrefix starts kafka-pixy's record headers: X-Kafka-{Name}
// with a base64 value is the header {Name}.
const pixyHeaderPrefix = "X-Kafka-"

// codeUnknownCluster answers a /clusters/... request for another cluster.
const codeUnknownCluster = 40402

// pixyBody answers a kafka-pixy produce request. Pixy's clients read
// partition and offset; a buffered record has neither, and says so in
// outcome, with the id it carries into Kafka (the spillway-id header).
type pixyBody struct {
	ID        string `json:"id,omitempty"`
	Outcome   string `json:"outcome"`
	Partition *int32 `json:"partition,omitempty"`
	Offset    *int64 `json:"offset,omitempty"`
}

// isPixy says whether a request on the route that kafka-ambassador and
// kafka-pixy share (POST /topics/{topic}/messages) is kafka-pixy's: it
// has the query parameter sync or key, or a form body with a msg field
// (pixy's quick-start posts one with curl -d), and no X-Kafka-Header-*
// header, which only Spillway's own scheme uses. form is the parsed form
// body, nil when the body is not a form. A form without msg stays
// Spillway's, which refuses its Content-Type with 415: the usual mistake
// of a curl -d without -H 'Content-Type: text/plain'.
func isPixy(r *http.Request, form url.Values) bool {
	return pixyRequest(r, scanKafkaHeaders(r.Header), form)
}

// pixyRequest is isPixy over the request's X-Kafka-* headers, scanned
// once.
func pixyRequest(r *http.Request, kh kafkaHeaders, form url.Values) bool {
	if kh.own {
		return false
	}
	q := r.URL.Query()
	return q.Has("sync") || q.Has("key") || form.Has("msg")
}

// kafkaHeaders are a request's X-Kafka-* header names, from one scan of
// its headers: routing (isPixy), Spillway's record headers (parseMeta)
// and kafka-pixy's (parsePixy) read them, not the whole header map.
type kafkaHeaders struct {
	names []string
	own   bool // one is X-Kafka-Header-*, Spillway's record header scheme
}

func scanKafkaHeaders(h http.Header) kafkaHeaders {
	var kh kafkaHeaders
	for name := range h {
		if strings.HasPrefix(name, pixyHeaderPrefix) {
			kh.names = append(kh.names, name)
			kh.own = kh.own || strings.HasPrefix(name, HeaderRecordPrefix)
		}
	}
	return kh
}

// isForm says whether the request's body is a form.
func isForm(r *http.Request) bool {
	mt, _, _ := strings.Cut(r.Header.Get(echo.HeaderContentType), ";")
	return strings.EqualFold(strings.TrimSpace(mt), echo.MIMEApplicationForm)
}

// postTopicMessages serves the shared route: kafka-pixy's request when
// isPixy says so, else kafka-ambassador's and Spillway's.
func (h *handler) postTopicMessages(c echo.Context) error {
	req := c.Request()
	var f *pixyForm
	if isForm(req) {
		body, err := h.readBody(c)
		if err != nil {
			_, err = h.deliver(c, c.Param("topic"), nil, err)
			return err
		}
		req.Body = io.NopCloser(bytes.NewReader(body)) // for postMessages, which refuses a form
		f = &pixyForm{body: body}
		f.values, f.err = url.ParseQuery(string(body))
	}
	var values url.Values
	if f != nil {
		values = f.values
	}
	kh := scanKafkaHeaders(req.Header)
	if pixyRequest(req, kh, values) {
		return h.postPixy(c, false, f, kh)
	}
	return h.postMessages(c, kh)
}

// pixyForm is a form body, read and parsed once.
type pixyForm struct {
	body   []byte
	values url.Values
	err    error // what url.ParseQuery said of it
}

// postClusterMessages is kafka-pixy's POST
// /clusters/{cluster}/topics/{topic}/messages; every X-Kafka-{Name}
// request header there is a base64 record header.
func (h *handler) postClusterMessages(c echo.Context) error {
	if cluster := c.Param("cluster"); cluster != PixyCluster {
		he := newHTTPError(http.StatusNotFound, codeUnknownCluster,
			"cluster "+strconv.Quote(cluster)+" is not known here: Spillway produces to one Kafka cluster, called "+strconv.Quote(PixyCluster))
		// Counted under no topic: the cluster is refused before its topic
		// is looked at, as over gRPC.
		_, err := h.Sender.Deliver(c.Request().Context(), record.Request{API: API,
			Err: &record.Error{Reason: record.ReasonUnknownTopic, Message: he.body.Message, Err: he}})
		return err
	}
	return h.postPixy(c, true, nil, scanKafkaHeaders(c.Request().Header))
}

// postPixy delivers a kafka-pixy request's record and answers once it is
// durable, whether or not the request asked for sync: 200 with Kafka's
// partition and offset, or 202 buffered with the record's id.
func (h *handler) postPixy(c echo.Context, clusterRoute bool, form *pixyForm, kh kafkaHeaders) error {
	topic := c.Param("topic")
	rec, err := h.parsePixy(c, topic, clusterRoute, form, kh)
	results, err := h.deliver(c, topic, []record.Record{rec}, err)
	if err != nil {
		return err
	}
	res := results[0]
	out := pixyBody{ID: res.ID, Outcome: res.Outcome.String()}
	switch res.Outcome {
	case record.Delivered:
		out.Partition, out.Offset = &res.Partition, &res.Offset
		return c.JSON(http.StatusOK, out)
	case record.Buffered:
		return c.JSON(http.StatusAccepted, out)
	default:
		he := fromError(res.Err)
		setRetryAfter(c, he)
		return he
	}
}

// parsePixy reads a kafka-pixy request's record: the body is the message
// (or, in a form body, its msg field); the query or form parameter key,
// when present even empty, is the key; X-Kafka-{Name} headers are base64
// record headers. On the shared route Spillway's own X-Kafka-Key,
// X-Kafka-Key-Base64, X-Kafka-Partition and X-Kafka-Timestamp keep their
// meaning. form is the form body when postTopicMessages read one.
func (h *handler) parsePixy(c echo.Context, topic string, clusterRoute bool, f *pixyForm, kh kafkaHeaders) (record.Record, error) {
	rec := record.Record{Topic: topic, Partition: record.AnyPartition}
	req := c.Request()
	if f == nil && isForm(req) { // the cluster route
		body, err := h.readBody(c)
		if err != nil {
			return rec, err
		}
		f = &pixyForm{body: body}
		f.values, f.err = url.ParseQuery(string(body))
	}
	params := req.URL.Query()
	if f == nil {
		body, err := h.readBody(c)
		if err != nil {
			return rec, err
		}
		rec.Value = body
	} else {
		form, err := f.values, f.err
		if err != nil {
			return rec, invalid("the form body cannot be read: %v", err)
		}
		if !form.Has("msg") {
			return rec, invalid("the form body has no msg field: it carries the message (or send the message as the body, Content-Type text/plain)")
		}
		rec.Value = []byte(form.Get("msg"))
		for k, v := range form {
			if !params.Has(k) {
				params[k] = v
			}
		}
	}
	reserved := map[string]bool{}
	if !clusterRoute {
		meta, err := parseMetaFields(req.Header) // isPixy saw no X-Kafka-Header-*
		if err != nil {
			return rec, err
		}
		if meta.key != nil && params.Has("key") {
			return rec, invalid("give the key in the key parameter or in %s, not both", HeaderKey)
		}
		rec.Key, rec.Partition, rec.Timestamp = meta.key, meta.partition, meta.timestamp
		for _, name := range []string{HeaderKey, HeaderKeyBase64, HeaderPartition, HeaderTimestamp} {
			reserved[name] = true
		}
	}
	if params.Has("key") {
		rec.Key = []byte(params.Get("key")) // an empty key is a key, hashed like any other
	}
	for _, name := range kh.names {
		if len(name) == len(pixyHeaderPrefix) || reserved[name] {
			continue
		}
		key := name[len(pixyHeaderPrefix):]
		for _, v := range req.Header[name] {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return rec, invalid("header %s is not valid base64 (kafka-pixy's record headers are X-Kafka-{Name}: base64 of the value): %v", name, err)
			}
			rec.Headers = append(rec.Headers, record.Header{Key: key, Value: b})
		}
	}
	return rec, nil
}
