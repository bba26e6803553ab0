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

// statusOf maps a failure reason to its HTTP status and error code.
func statusOf(reason record.Reason) (status, code int) {
	switch reason {
	case record.ReasonInvalid:
		return http.StatusBadRequest, 40001
	case record.ReasonTooLarge:
		return http.StatusRequestEntityTooLarge, 41301
	case record.ReasonUnknownTopic:
		return http.StatusNotFound, 40401
	case record.ReasonNotAuthorized:
		// Kafka refused Spillway's own credentials: not the client's fault.
		// Seen only where the record could not be spilled.
		return http.StatusServiceUnavailable, 50304
	case record.ReasonForbidden:
		return http.StatusForbidden, 40302
	case record.ReasonTimeout:
		return http.StatusGatewayTimeout, 50401
	case record.ReasonBufferFull:
		return http.StatusInsufficientStorage, 50701
	case record.ReasonOverloaded:
		return http.StatusServiceUnavailable, 50303
	case record.ReasonRateLimited:
		return http.StatusTooManyRequests, 42901
	case record.ReasonRejected:
		return http.StatusUnprocessableEntity, 42201
	default:
		return http.StatusServiceUnavailable, 50301
	}
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
