package spill

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// TryTimeout bounds each try of a step of the buffer's set-up (creating
// the stream, a consumer). JetStream leaves a request about a stream
// without a leader unanswered, and an update it applies then is never
// answered at all; a request that reached a cluster without a meta leader
// is not answered once one is elected (4-9 s later, nats-server's election
// timeout). Short tries, each a new request, get through soon after the
// leaders are there; one long try waits out its whole deadline. Creating
// a 3-replica stream took about 0.1-0.3 s here; a try cut short by the
// deadline is only asked again.
const TryTimeout = 2 * time.Second

// The pause between two tries grows from firstBackoff to maxBackoff: a try
// and a pause together last at most 3 s, so that the buffer is ready at
// most that long after JetStream can answer.
const (
	firstBackoff = 250 * time.Millisecond
	maxBackoff   = time.Second
)

// configErrorCodes are JetStream's answers that no retry can change: the
// stream or consumer exists with a configuration Spillway's cannot replace,
// or Spillway's is not valid on this server.
var configErrorCodes = map[jetstream.ErrorCode]bool{
	10025: true, // invalid JSON
	10052: true, // invalid stream configuration (a change of retention policy among them)
	10053: true, // stream limits (over the account's)
	10058: true, // stream name already in use with a different configuration
	10061: true, // replicas configuration can not be updated
	10065: true, // subjects overlap with an existing stream
	10074: true, // replicas > 1 not supported in non-clustered mode
	10013: true, // consumer name already in use
	10100: true, // filtered consumer not unique on workqueue stream
	10126: true, // consumer replica count exceeds the stream's
	10133: true, // replicas count cannot be negative
	10138: true, // consumer subject filters cannot overlap
	10148: true, // consumer already exists
}

// IsConfigError says whether err is a configuration that waiting cannot
// make work, so that the service must stop: JetStream refusing the
// stream's or a consumer's configuration, a NATS server refusing the
// credentials, TLS that one side wants and the other cannot give (a
// server certificate the configured CA does not vouch for, TLS asked of a
// server without it), or a credentials or TLS file that cannot be used. Anything
// else (no NATS server reachable, no answer in time, no responders,
// "temporarily unavailable", no suitable peers while nodes are down) may
// pass once the servers are up and the cluster has its leaders.
//
// A refused sign-in is a configuration error although a server could in
// principle be given the user later: nats.go itself stops reconnecting
// after the same refusal twice, and a process that exits says at once
// (and in its restarts) that its credentials are wrong, where one that
// waits would only be not ready.
func IsConfigError(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && configErrorCodes[apiErr.ErrorCode] {
		return true
	}
	var cfgErr configError
	return errors.As(err, &cfgErr) || isAuthError(err)
}

// configError marks an error of the service's own files (credentials, TLS):
// IsConfigError.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

// isAuthError says whether err is a NATS server refusing the connection's
// credentials, or the two sides disagreeing on TLS: the server requires it
// and its certificate is not one the configured CA (or the system's)
// vouches for, or the client asks for TLS of a server that has none.
func isAuthError(err error) bool {
	for _, authErr := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired,
		nats.ErrSecureConnRequired, nats.ErrSecureConnWanted} {
		if errors.Is(err, authErr) {
			return true
		}
	}
	var certErr *tls.CertificateVerificationError
	return errors.As(err, &certErr)
}

// Retry runs one step of the buffer's set-up until JetStream answers: each
// try gets TryTimeout, with a growing pause between tries, until it
// succeeds, fails with a configuration error, or ctx ends. It logs once
// when it starts waiting and once when the wait is over, not each try
// (each try at debug level). Logger is required.
type Retry struct {
	Step   string // what is tried, for the log: "stream SPILLWAY"
	Logger *slog.Logger
	// Report, when set, is called with the error of each failed try (the
	// reason the service is not ready) and with nil once a try succeeded.
	Report func(error)

	waiting bool
	pause   time.Duration
}

// Once tries once, within TryTimeout.
func (r *Retry) Once(ctx context.Context, try func(context.Context) error) error {
	tctx, cancel := context.WithTimeout(ctx, TryTimeout)
	err := try(tctx)
	cancel()
	if err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("%w (JetStream did not answer within %v: no meta leader, no quorum, or the stream has no leader yet)", err, TryTimeout)
	}
	switch {
	case err == nil:
		if r.waiting {
			r.Logger.Info("buffer ready", "step", r.Step)
		}
		r.waiting = false
	case ctx.Err() != nil:
	case IsConfigError(err):
	case !r.waiting:
		r.waiting = true
		r.Logger.Warn("waiting for the buffer", "step", r.Step, "error", err, "try_timeout", TryTimeout.String())
	default:
		r.Logger.Debug("buffer still not ready", "step", r.Step, "error", err)
	}
	if r.Report != nil && ctx.Err() == nil {
		r.Report(err)
	}
	return err
}

// Run tries until a try succeeds, fails with a configuration error, or
// ctx ends; then it returns the last try's error.
func (r *Retry) Run(ctx context.Context, try func(context.Context) error) error {
	for {
		err := r.Once(ctx, try)
		if err == nil || IsConfigError(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("gave up waiting for the buffer: %w", err)
		}
		r.pause = min(maxBackoff, max(firstBackoff, 2*r.pause))
		// Up to a fifth less, so that ingests started together do not ask
		// together.
		pause := r.pause - rand.N(r.pause/5)
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting for the buffer: %w", err)
		case <-time.After(pause):
		}
	}
}

// EnsureStream creates the stream, or updates it to c: one try, which
// Retry repeats.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c config.WAL) error {
	if _, err := js.CreateOrUpdateStream(ctx, StreamConfig(c)); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "retention policy") {
			return fmt.Errorf("stream %s exists with another retention policy, and Spillway needs a work queue: "+
				"let the forwarder and resender empty it, then delete it, or set producer.wal.stream to a new name: %w", c.Stream, err)
		}
		return fmt.Errorf("create or update stream %s: %w", c.Stream, err)
	}
	return nil
}

// PendingBuffer is the ingest's buffer while it waits for JetStream at
// start: until Set, every record is answered unavailable (never
// acknowledged without JetStream's), so that records that do not need the
// buffer still go to Kafka meanwhile.
type PendingBuffer struct {
	buf atomic.Pointer[Buffer]

	mu     sync.Mutex
	reason error
}

// Set makes b the buffer: records go to it from now on.
func (p *PendingBuffer) Set(b *Buffer) { p.buf.Store(b) }

// SetReason is why the buffer is not ready yet: the last try's error.
func (p *PendingBuffer) SetReason(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reason = err
}

// Ready is nil once Set, else why the buffer is not ready: for /readyz.
func (p *PendingBuffer) Ready() error {
	if p.buf.Load() != nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reason == nil {
		return errors.New("buffer: not ready yet")
	}
	return fmt.Errorf("buffer: %w", p.reason)
}

// Publish is the buffer's Publish once Set; until then every record
// fails, unavailable.
func (p *PendingBuffer) Publish(ctx context.Context, kind Kind, recs []record.Record, reason string) []record.Result {
	if b := p.buf.Load(); b != nil {
		return b.Publish(ctx, kind, recs, reason)
	}
	results := make([]record.Result, len(recs))
	for i := range recs {
		results[i] = record.Fail(recs[i].Topic, &record.Error{Reason: record.ReasonUnavailable,
			Message: "the buffer (JetStream) is not ready yet: the ingest is waiting for it; retry later"})
	}
	return results
}

// Fill is the buffer's Fill once Set, 0 until then.
func (p *PendingBuffer) Fill(ctx context.Context) float64 {
	if b := p.buf.Load(); b != nil {
		return b.Fill(ctx)
	}
	return 0
}
