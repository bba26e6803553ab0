package identity

import (
	"crypto/tls"
	"time"

	"github.com/spillway/spillway/pkg/config"
)

// FromKafka is the client of a Kafka-protocol connection that did not
// authenticate with SASL: its verified client certificate (state: the
// connection's TLS, nil without), else the client id of its request
// header, checked as FromHTTP checks a claimed one (refused when
// credentials are required).
func FromKafka(id string, auth *Authenticator, state *tls.ConnectionState) (Client, error) {
	return claimed(clientID(id)).authenticate(auth, "", verifiedCertificate(state))
}

// FromKafkaPassword is the client of a Kafka-protocol connection that
// signed in with SASL PLAIN: the password is an API key (or a JWT), as
// the bearer token of an HTTP request, and the user name is the client
// id it claims.
func FromKafkaPassword(user, password string, auth *Authenticator) (Client, error) {
	c := claimed(clientID(user))
	if auth == nil {
		return c, nil
	}
	return c.authenticate(auth, "Bearer "+password, nil)
}

// SCRAMCredential is the stored SCRAM credential of user for mechanism
// (SCRAM-SHA-256 or SCRAM-SHA-512), from security.scram_users.
func (a *Authenticator) SCRAMCredential(mechanism, user string) (config.SCRAMUser, bool) {
	if a == nil {
		return config.SCRAMUser{}, false
	}
	u, ok := a.scram[mechanism+" "+user]
	return u, ok
}

// HasSCRAM says whether any SCRAM credential is configured.
func (a *Authenticator) HasSCRAM() bool { return a != nil && len(a.scram) > 0 }

// FromKafkaSCRAM is the client of a Kafka-protocol connection that signed
// in with SASL SCRAM as user, whose proof the caller checked. Its
// principal is of kind key, as an API key's: a SCRAM user is the Kafka
// listener's form of the same credential, and shares its ACLs and limits.
func FromKafkaSCRAM(user string) Client {
	return Client{Principal: user, Kind: APIKey, Name: user}
}

// SessionEnd is when the SASL session of c, signed in at now, ends
// (KIP-368): security.sasl.max_session_lifetime after now, or sooner when
// c's credential expires (a JWT's exp, with the leeway), as a gRPC stream
// ends then. Zero: it does not end (nothing is checked).
func (a *Authenticator) SessionEnd(c Client, now time.Time) time.Time {
	if a == nil {
		return time.Time{}
	}
	end := c.Until
	if a.maxSession > 0 && (end.IsZero() || now.Add(a.maxSession).Before(end)) {
		end = now.Add(a.maxSession)
	}
	return end
}
