package httpapi

import (
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/spillway/spillway/pkg/record"
)

// errorBody is every error answer: a code a program can switch on (the
// HTTP status times 100 plus a number, as Confluent's REST Proxy does) and
// a message that says what is wrong.
type errorBody struct {
	ErrorCode int    `json:"error_code"`
	Message   string `json:"message"`
}

// Error codes that are not a record's failure reason.
const (
	codeRouteNotFound        = 40400
	codeMethodNotAllowed     = 40500
	codeBodyTooLarge         = 41302
	codeUnsupportedMediaType = 41501
	codeInternal             = 50000
)

// Confluent REST Proxy v2's error_code of a failed record in a 200 or
// 207 answer's offsets: whether sending it again may succeed.
const (
	v2Fatal     = 1 // retrying will not help
	v2Retriable = 2 // the record may be taken if sent again (later)
)

// reasonAnswer is how the HTTP APIs answer a record failed for one
// reason: the status and error code (the status times 100 plus a number),
// and Confluent v2's per-record error_code.
type reasonAnswer struct{ status, code, v2 int }

// reasonAnswers is the answer to each failure reason, for every API over
// HTTP: Spillway's, Confluent's, kafka-pixy's and kafka-ambassador's.
// Every reason in record.Reasons has a row (TestEveryReasonMapped), and a
// row's v2 code is retriable exactly when its status is 429 or 5xx, which
// tell an HTTP client to come back.
var reasonAnswers = map[record.Reason]reasonAnswer{
	record.ReasonInvalid:         {http.StatusBadRequest, 40001, v2Fatal},
	record.ReasonTooLarge:        {http.StatusRequestEntityTooLarge, 41301, v2Fatal},
	record.ReasonUnknownTopic:    {http.StatusNotFound, 40401, v2Fatal},
	record.ReasonNotAuthorized:   {http.StatusServiceUnavailable, 50304, v2Retriable}, // Kafka refused Spillway's own credentials: not the client's fault
	record.ReasonUnavailable:     {http.StatusServiceUnavailable, 50301, v2Retriable},
	record.ReasonTimeout:         {http.StatusGatewayTimeout, 50401, v2Retriable},
	record.ReasonBufferFull:      {http.StatusInsufficientStorage, 50701, v2Retriable},
	record.ReasonOverloaded:      {http.StatusServiceUnavailable, 50303, v2Retriable},
	record.ReasonForbidden:       {http.StatusForbidden, 40302, v2Fatal},
	record.ReasonRateLimited:     {http.StatusTooManyRequests, 42901, v2Retriable},
	record.ReasonRejected:        {http.StatusUnprocessableEntity, 42201, v2Fatal},
	record.ReasonUnauthenticated: {http.StatusUnauthorized, 40101, v2Fatal}, // as identify answers
}

// answerOf is the row of reason. A reason without a row
// (TestEveryReasonMapped sees that none is) is answered as unavailable,
// as record.ReasonOf names an error without one.
func answerOf(reason record.Reason) reasonAnswer {
	a, ok := reasonAnswers[reason]
	if !ok {
		a = reasonAnswers[record.ReasonUnavailable]
	}
	return a
}

// statusOf maps a failure reason to its HTTP status and error code.
func statusOf(reason record.Reason) (status, code int) {
	a := answerOf(reason)
	return a.status, a.code
}

// httpError is an error answered with its own status and code.
type httpError struct {
	status int
	body   errorBody
}

func (e *httpError) Error() string { return e.body.Message }

func newHTTPError(status, code int, msg string) *httpError {
	return &httpError{status: status, body: errorBody{ErrorCode: code, Message: msg}}
}

// fromError makes the answer for err: a record.Error by its reason, an
// *httpError as it is.
func fromError(err error) *httpError {
	var he *httpError
	if errors.As(err, &he) {
		return he
	}
	status, code := statusOf(record.ReasonOf(err))
	return newHTTPError(status, code, record.ClientMessage(err))
}

// errorHandler answers echo's own errors (no route, wrong method) and any
// error a handler returns in the same JSON shape.
func errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	he := fromError(err)
	setRetryAfter(c, he)
	var ee *echo.HTTPError
	if errors.As(err, &ee) {
		msg := http.StatusText(ee.Code)
		if m, ok := ee.Message.(string); ok {
			msg = m
		}
		switch ee.Code {
		case http.StatusNotFound:
			he = newHTTPError(ee.Code, codeRouteNotFound, "no such route: "+c.Request().Method+" "+c.Request().URL.Path)
		case http.StatusMethodNotAllowed:
			he = newHTTPError(ee.Code, codeMethodNotAllowed, "method "+c.Request().Method+" is not allowed on "+c.Request().URL.Path)
		default:
			he = newHTTPError(ee.Code, ee.Code*100, msg)
		}
	}
	_ = c.JSON(he.status, he.body)
}

// setRetryAfter tells a client refused for overload when to come back.
func setRetryAfter(c echo.Context, he *httpError) {
	if he != nil && (he.body.ErrorCode == 50303 || he.body.ErrorCode == 42901) {
		c.Response().Header().Set("Retry-After", "1")
	}
}
