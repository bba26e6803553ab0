package identity

import "crypto/tls"

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
