package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"time"
)

// check applies the rules that involve more than one key.
func check(c *Config, g *getter) {
	for _, t := range c.Producer.WAL.AlwaysTopics {
		if slices.Contains(c.Producer.WAL.DisableTopics, t) {
			g.fail("producer.wal.always_topics", fmt.Errorf("topic %q is also in producer.wal.disable_topics; a topic can be in only one", t))
		}
	}
	checkTimeouts(c, g)
	kafkaRequestBytes(c, g)
	checkServerTLS(c.Server.TLS, g)
	checkJWT(c.Security.JWT, g)
	if len(c.Security.ACL) > 0 && !c.Security.RequireCredentials {
		g.warn("security.acl is set but security.require_credentials is false: a client that sends no credential is held only to security.allow_topics, not to any principal's ACL")
	}
}

// The key that bounds the Kafka listener's requests, and the one that
// bounded them before it had its own.
const (
	kafkaRequestBytesKey = "server.kafka.max_request_bytes"
	httpBodyBytesKey     = "server.http.max_body_bytes"
)

// kafkaRequestBytes honours server.http.max_body_bytes for the Kafka
// listener when only it is set: it bounded the listener's requests before
// server.kafka.max_request_bytes existed, and a file written then must
// keep its bound. The service is told to set the new key.
func kafkaRequestBytes(c *Config, g *getter) {
	if g.given == nil || g.given(kafkaRequestBytesKey) || !g.given(httpBodyBytesKey) || c.Server.Kafka.Listen == "" {
		return
	}
	c.Server.Kafka.MaxRequestBytes = int(c.Server.HTTP.MaxBodyBytes)
	g.warn(fmt.Sprintf("%s is not set, so %s (%d) bounds the Kafka listener's requests, as it did before the listener had its own key; set %s to bound them apart from HTTP bodies",
		kafkaRequestBytesKey, httpBodyBytesKey, c.Server.HTTP.MaxBodyBytes, kafkaRequestBytesKey))
}

// checkTimeouts checks the timeouts that must fit inside one another, so
// that a client is answered before its connection is cut and a buffered
// record is not sent twice because JetStream gave up on its drain. Pairs
// that kafka-ambassador's files break (its message.timeout.ms of 60000
// against the 60 s write timeout) are clamped with a warning, so that they
// still load; the others are refused.
func checkTimeouts(c *Config, g *getter) {
	write, publish := c.Server.HTTP.WriteTimeout, c.Producer.WAL.PublishTimeout
	cb := &c.Producer.CB
	if write <= publish {
		g.fail("server.http.write_timeout", fmt.Errorf("%v is not above producer.wal.publish_timeout (%v): a spilled record's answer could not be written before the connection is cut", write, publish))
		return
	}
	// A record waits for Kafka, then may be spilled: both must end
	// before the write timeout cuts the client off.
	if room := write - publish; c.Kafka.MessageTimeout > room {
		g.warn(fmt.Sprintf("kafka.message.timeout.ms (%v) leaves no time under server.http.write_timeout (%v) to spill a record that timed out (producer.wal.publish_timeout %v): the client would be cut off, retry, and the record arrive twice; kafka.message.timeout.ms is lowered to %v",
			c.Kafka.MessageTimeout, write, publish, room))
		c.Kafka.MessageTimeout = room
	}
	if room := write - publish; cb.MaxWait > room {
		g.warn(fmt.Sprintf("producer.cb.max_wait (%v) leaves no time under server.http.write_timeout (%v) to spill the record (producer.wal.publish_timeout %v); producer.cb.max_wait is lowered to %v",
			cb.MaxWait, write, publish, room))
		cb.MaxWait = room
	}
	if cb.SlowCall >= cb.MaxWait {
		g.warn(fmt.Sprintf("producer.cb.slow_call (%v) is not below producer.cb.max_wait (%v): clients stop waiting before a hung Kafka's produces count as slow, so the breaker opens only after every client waited producer.cb.max_wait", cb.SlowCall, cb.MaxWait))
	}
	// A drain holds its batch until Kafka answered or
	// kafka.message.timeout.ms passed; JetStream must not redeliver the
	// batch meanwhile, or it is sent twice.
	if ack := c.Producer.WAL.AckWait; ack <= c.Kafka.MessageTimeout {
		g.fail("producer.wal.ack_wait", fmt.Errorf("%v is not above kafka.message.timeout.ms (%v): JetStream would redeliver a drain's batch while Kafka may still take it, and its records arrive twice", ack, c.Kafka.MessageTimeout))
	}
	if st := c.Server.ShutdownTimeout; st < cb.MaxWait+publish {
		g.warn(fmt.Sprintf("server.shutdown_timeout (%v) is below producer.cb.max_wait plus producer.wal.publish_timeout (%v): at shutdown, records waiting for Kafka are spilled early, and some may arrive twice", st, cb.MaxWait+publish))
	}
}

// checkJWT checks security.jwt.* once a JWK Set turns JWTs on.
func checkJWT(j JWT, g *getter) {
	if !j.Enabled() {
		return
	}
	if j.JWKSFile != "" && j.JWKSURL != "" {
		g.fail("security.jwt.jwks_file", errors.New("and security.jwt.jwks_url are both set; set one"))
	}
	if j.JWKSURL != "" {
		if err := checkJWKSURL(j.JWKSURL); err != nil {
			g.fail("security.jwt.jwks_url", err)
		}
	}
	if j.Issuer == "" {
		g.fail("security.jwt.issuer", errors.New("is empty; with a JWKS set, every token's issuer is checked: set the issuer"))
	}
	if j.Audience == "" {
		g.fail("security.jwt.audience", errors.New("is empty; with a JWKS set, every token's audience is checked: set the audience"))
	}
	if j.PrincipalClaim == "" {
		g.fail("security.jwt.principal_claim", errors.New("is empty; set the claim that names the principal, such as sub"))
	}
	if j.RefreshInterval < time.Second {
		g.fail("security.jwt.refresh_interval", fmt.Errorf("%v is too short; want 1s or more", j.RefreshInterval))
	}
}

// checkJWKSURL accepts https, and http only to this host: keys fetched
// in the clear could be swapped on the way, and tokens forged with them.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("is not a URL; want https://HOST/PATH")
	}
	switch {
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && (u.Hostname() == "localhost" || net.ParseIP(u.Hostname()).IsLoopback()):
		return nil
	case u.Scheme == "http":
		return errors.New("is http to another host: the keys could be swapped on the way; use https (http only to localhost)")
	default:
		return fmt.Errorf("has scheme %q; want https", u.Scheme)
	}
}

// checkServerTLS checks that the server.tls.* files come as a set.
func checkServerTLS(t ServerTLS, g *getter) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		g.fail("server.tls.cert", errors.New("and server.tls.key go together; set both or neither"))
	}
	if !t.Enabled() && (t.ClientCAFile != "" || t.ClientAuth != ClientAuthNone) {
		g.fail("server.tls.client_ca", errors.New("and server.tls.client_auth need TLS on the listeners; set server.tls.cert and server.tls.key"))
	}
	if t.ClientAuth != ClientAuthNone && t.ClientCAFile == "" {
		g.fail("server.tls.client_auth", fmt.Errorf("%s needs server.tls.client_ca, the CA that signs client certificates", t.ClientAuth))
	}
	if t.ClientCAFile != "" && t.ClientAuth == ClientAuthNone {
		g.fail("server.tls.client_ca", errors.New("is set but server.tls.client_auth is none; set it to optional or require"))
	}
}
