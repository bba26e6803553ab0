package kafkaapi

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/xdg-go/scram"

	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// scramHashes are the SCRAM mechanisms served, with their hash.
var scramHashes = map[string]scram.HashGeneratorFcn{"SCRAM-SHA-256": scram.SHA256, "SCRAM-SHA-512": scram.SHA512}

// mechanisms are the SASL mechanisms served: PLAIN (the password is an
// API key), and SCRAM when security.scram_users has credentials.
func (c *conn) mechanisms() []string {
	m := []string{"PLAIN"}
	if c.s.o.Auth.HasSCRAM() {
		m = append(m, "SCRAM-SHA-256", "SCRAM-SHA-512")
	}
	return m
}

// saslHandshake accepts a mechanism served; SCRAM's exchange starts here,
// against the stored credentials of the user the client will name.
func (c *conn) saslHandshake(req *kmsg.SASLHandshakeRequest) *kmsg.SASLHandshakeResponse {
	resp := req.ResponseKind().(*kmsg.SASLHandshakeResponse)
	resp.SupportedMechanisms = c.mechanisms()
	if !slices.Contains(resp.SupportedMechanisms, req.Mechanism) {
		resp.ErrorCode = kerr.UnsupportedSaslMechanism.Code
		return resp
	}
	var conv *scram.ServerConversation
	if h, ok := scramHashes[req.Mechanism]; ok {
		auth, mech := c.s.o.Auth, req.Mechanism
		srv, err := h.NewServer(func(user string) (scram.StoredCredentials, error) {
			u, ok := auth.SCRAMCredential(mech, user)
			if !ok {
				return scram.StoredCredentials{}, errors.New("invalid credentials: no such SCRAM user")
			}
			return scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: string(u.Salt), Iters: u.Iterations},
				StoredKey: u.StoredKey, ServerKey: u.ServerKey}, nil
		})
		if err != nil {
			resp.ErrorCode = kerr.UnsupportedSaslMechanism.Code
			return resp
		}
		conv = srv.NewConversation()
	}
	c.mu.Lock()
	c.saslReady, c.saslMech, c.scram = true, req.Mechanism, conv
	c.mu.Unlock()
	return resp
}

// saslAuthenticate checks PLAIN's "authzid NUL user NUL password", or
// takes one step of SCRAM's exchange (client-first, then client-final).
// A failure is answered, then the connection closes, as brokers do. A
// success starts a session (KIP-368) that lasts until the credential
// expires, at most security.sasl.max_session_lifetime; v1 answers its
// lifetime, within which the client signs in again on the connection, as
// the same principal.
func (c *conn) saslAuthenticate(req *kmsg.SASLAuthenticateRequest, clientID string) (kmsg.Response, error) {
	resp := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
	c.mu.Lock()
	ready, mech, conv := c.saslReady, c.saslMech, c.scram
	c.saslReady = false
	c.mu.Unlock()
	if !ready {
		resp.ErrorCode = kerr.IllegalSaslState.Code
		resp.ErrorMessage = ptr("SaslAuthenticate before a SaslHandshake")
		return resp, nil
	}
	var cl identity.Client
	var err error
	if conv != nil {
		var out string
		out, err = conv.Step(string(req.SASLAuthBytes))
		switch {
		case err != nil:
			err = errors.New("invalid credentials: " + mech + ": " + err.Error())
		case !conv.Done():
			resp.SASLAuthBytes = []byte(out) // server-first; the client-final comes next
			c.mu.Lock()
			c.saslReady = true
			c.mu.Unlock()
			return resp, nil
		case !conv.Valid():
			err = errors.New("invalid credentials: " + mech + ": the proof does not match")
		default:
			resp.SASLAuthBytes = []byte(out) // server-final: the server's signature
			cl = identity.FromKafkaSCRAM(conv.Username())
		}
	} else {
		parts := bytes.Split(req.SASLAuthBytes, []byte{0})
		err = errors.New("invalid credentials: want PLAIN's authzid, user and password")
		if len(parts) == 3 {
			cl, err = identity.FromKafkaPassword(string(parts[1]), string(parts[2]), c.s.o.Auth)
		}
	}
	c.mu.Lock()
	before := c.authed
	c.mu.Unlock()
	if err == nil && before != nil && before.Key() != cl.Key() {
		// As Kafka: signing in again (KIP-368) keeps the principal.
		err = errors.New("invalid credentials: signing in again on a connection cannot change its principal")
	}
	if err != nil {
		cl.Principal = identity.Anonymous
		_, _ = c.s.o.Sender.Deliver(identity.With(c.context(), cl), record.Request{API: API, Err: &record.Error{Reason: record.ReasonUnauthenticated, Message: "sign-in failed"}})
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		resp.ErrorMessage = ptr(err.Error())
		c.mu.Lock()
		c.stopping = true // closed once the answer is written
		c.scram = nil
		c.mu.Unlock()
		return resp, nil
	}
	now := time.Now()
	end := c.s.o.Auth.SessionEnd(cl, now)
	if !end.IsZero() && req.Version >= 1 {
		resp.SessionLifetimeMillis = max(end.Sub(now).Milliseconds(), 1)
	}
	c.mu.Lock()
	c.authed = &cl
	c.sessionEnd = end
	c.scram = nil
	c.mu.Unlock()
	return resp, nil
}

// sessionOver says whether the connection's SASL session has ended
// (KIP-368): it may then only sign in again (SaslHandshake and
// SaslAuthenticate); any other request closes it, as Kafka's broker
// closes it. A client of SaslAuthenticate v0, which is not told the
// session's lifetime, has its connection closed too, and connects again.
func (c *conn) sessionOver(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.sessionEnd.IsZero() && now.After(c.sessionEnd)
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
