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

// reasonAnswers is the HTTP status and error code of each failure reason,
// for every API over HTTP: Spillway's, Confluent's, kafka-pixy's and
// kafka-ambassador's. Every reason in record.Reasons has a row
// (TestEveryReasonMapped).
var reasonAnswers = map[record.Reason]struct{ status, code int }{
	record.ReasonInvalid:         {http.StatusBadRequest, 40001},
	record.ReasonTooLarge:        {http.StatusRequestEntityTooLarge, 41301},
	record.ReasonUnknownTopic:    {http.StatusNotFound, 40401},
	record.ReasonNotAuthorized:   {http.StatusServiceUnavailable, 50304}, // Kafka refused Spillway's own credentials: not the client's fault
	record.ReasonUnavailable:     {http.StatusServiceUnavailable, 50301},
	record.ReasonTimeout:         {http.StatusGatewayTimeout, 50401},
	record.ReasonBufferFull:      {http.StatusInsufficientStorage, 50701},
	record.ReasonOverloaded:      {http.StatusServiceUnavailable, 50303},
	record.ReasonForbidden:       {http.StatusForbidden, 40302},
	record.ReasonRateLimited:     {http.StatusTooManyRequests, 42901},
	record.ReasonRejected:        {http.StatusUnprocessableEntity, 42201},
	record.ReasonUnauthenticated: {http.StatusUnauthorized, 40101}, // as identify answers
}

// statusOf maps a failure reason to its HTTP status and error code. A
// reason without a row (TestEveryReasonMapped sees that none is) is
// answered as unavailable, as record.ReasonOf names an error without one.
func statusOf(reason record.Reason) (status, code int) {
	a, ok := reasonAnswers[reason]
	if !ok {
		a = reasonAnswers[record.ReasonUnavailable]
	}
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
