package kafkaapi

import (
	"bytes"
	"context"
	"errors"
	"reflect"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// saslHandshake accepts PLAIN: the password is an API key.
func (c *conn) saslHandshake(req *kmsg.SASLHandshakeRequest) *kmsg.SASLHandshakeResponse {
	resp := req.ResponseKind().(*kmsg.SASLHandshakeResponse)
	resp.SupportedMechanisms = []string{"PLAIN"}
	if req.Mechanism != "PLAIN" {
		resp.ErrorCode = kerr.UnsupportedSaslMechanism.Code
		return resp
	}
	c.mu.Lock()
	c.saslReady = true
	c.mu.Unlock()
	return resp
}

// saslAuthenticate checks PLAIN's "authzid NUL user NUL password". A
// failure is answered, then the connection closes, as brokers do.
func (c *conn) saslAuthenticate(req *kmsg.SASLAuthenticateRequest, clientID string) (kmsg.Response, error) {
	resp := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
	c.mu.Lock()
	ready := c.saslReady
	c.saslReady = false
	c.mu.Unlock()
	if !ready {
		resp.ErrorCode = kerr.IllegalSaslState.Code
		resp.ErrorMessage = ptr("SaslAuthenticate before a SaslHandshake")
		return resp, nil
	}
	parts := bytes.Split(req.SASLAuthBytes, []byte{0})
	var cl identity.Client
	err := errors.New("invalid credentials: want PLAIN's authzid, user and password")
	if len(parts) == 3 {
		cl, err = identity.FromKafkaPassword(string(parts[1]), string(parts[2]), c.s.o.Auth)
	}
	if err != nil {
		cl.Principal = identity.Anonymous
		c.s.o.Sender.Refuse(identity.With(context.Background(), cl), API, "", 0, record.ReasonUnauthenticated)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		resp.ErrorMessage = ptr(err.Error())
		c.mu.Lock()
		c.stopping = true // closed once the answer is written
		c.mu.Unlock()
		return resp, nil
	}
	c.mu.Lock()
	c.authed = &cl
	c.mu.Unlock()
	return resp, nil
}

// unsupported answers a request for an API Spillway does not serve with
// UNSUPPORTED_VERSION in the response's top-level error code; an API
// whose response has none gets the connection closed.
func unsupported(req kmsg.Request) (kmsg.Response, error) {
	resp := req.ResponseKind()
	v := reflect.ValueOf(resp).Elem()
	if f := v.FieldByName("ErrorCode"); f.IsValid() && f.Kind() == reflect.Int16 && f.CanSet() {
		f.SetInt(int64(kerr.UnsupportedVersion.Code))
		return resp, nil
	}
	return nil, errors.New("api key " + kmsg.NameForKey(req.Key()) + " is not served and its response has no error code")
}
