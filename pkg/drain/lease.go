package drain

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/spillway/spillway/pkg/config"
)

// leaseTTL is how long a drain's lease lasts without renewal: after a
// holder dies (kill -9) another replica, or the holder restarted, drains
// again within it. Renewed every leaseTTL/6, so that a holder slowed for
// a few seconds on a busy machine keeps it.
const leaseTTL = 6 * time.Second

// LeaseBucket is the JetStream key-value bucket of the drains' leases, one
// key per durable consumer: the replica holding a consumer's key is the
// one that drains it.
func LeaseBucket(c config.WAL) string { return c.Stream + "_DRAIN_LEASE" }

// lease is one replica's hold on a consumer, so that one replica at a
// time drains it: a partition's order lasts only with one batch per
// partition in flight, which two replicas sharing a consumer cannot
// promise.
type lease struct {
	kv     jetstream.KeyValue
	key    string
	holder string
	rev    uint64
}

// openLease creates or binds the lease bucket.
func openLease(ctx context.Context, js jetstream.JetStream, c config.WAL, key, holder string) (*lease, error) {
	storage := jetstream.FileStorage
	if c.InMemory {
		storage = jetstream.MemoryStorage
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      LeaseBucket(c),
		Description: "Spillway: which forwarder or resender drains each consumer",
		TTL:         leaseTTL,
		History:     1,
		Storage:     storage,
		Replicas:    c.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("lease bucket %s: %w", LeaseBucket(c), err)
	}
	return &lease{kv: kv, key: key, holder: holder}, nil
}

// acquire waits until this replica holds the lease, or ctx ends.
func (l *lease) acquire(ctx context.Context) error {
	for {
		rev, err := l.kv.Create(ctx, l.key, []byte(l.holder))
		if err == nil {
			l.rev = rev
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sleep(ctx, leaseTTL/6)
	}
}

// renew extends the lease; an error means it may be lost: the holder must
// stop draining.
func (l *lease) renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, leaseTTL/3)
	defer cancel()
	rev, err := l.kv.Update(ctx, l.key, []byte(l.holder), l.rev)
	if err != nil {
		return err
	}
	l.rev = rev
	return nil
}

// release gives the lease up at once, so that a standby replica takes
// over without waiting for it to expire.
func (l *lease) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return
	}
}
