package policy

import (
	"fmt"
	"math"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// MaxBuckets bounds the principals whose rate-limit buckets are kept; the
// least recently seen one is forgotten (and starts again with a full
// bucket) when a new one comes. Only verified principals have buckets of
// their own, so an attacker needs that many credentials to make a bucket
// forgotten; 10,000 pairs of buckets take about 4 MB.
const MaxBuckets = 10_000

// unverifiedBucket keys the buckets every client without a credential
// shares. No principal Key looks like it: theirs have a ':'.
const unverifiedBucket = "unverified"

// limits are the token buckets of security.rate_limit: records/s and
// bytes/s per principal, and for all clients together. A bucket holds one
// second of its rate.
type limits struct {
	cfg    config.RateLimit
	global [2]*rate.Limiter // records, bytes; nil: no limit

	mu          sync.Mutex
	byPrincipal *lru.Cache[string, [2]*rate.Limiter] // by identity.Client.Key, or unverifiedBucket
}

func newLimits(cfg config.RateLimit) *limits {
	byPrincipal, _ := lru.New[string, [2]*rate.Limiter](MaxBuckets) // only a size <= 0 fails
	return &limits{cfg: cfg, global: [2]*rate.Limiter{bucket(cfg.GlobalRecordsPerSecond), bucket(cfg.GlobalBytesPerSecond)}, byPrincipal: byPrincipal}
}

func bucket(perSecond float64) *rate.Limiter {
	if perSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(1, int(math.Ceil(perSecond))))
}

// take takes n records of size bytes from c's buckets and the global
// ones, all or none. It returns a record.Error when a bucket is short.
func (l *limits) take(c identity.Client, n, size int) error {
	if l.cfg == (config.RateLimit{}) {
		return nil
	}
	key, shared := c.Key(), ""
	if !c.Verified() {
		key, shared = unverifiedBucket, "; clients without credentials share one bucket"
	}
	l.mu.Lock()
	own, ok := l.byPrincipal.Get(key)
	if !ok {
		own = [2]*rate.Limiter{bucket(l.cfg.RecordsPerSecond), bucket(l.cfg.BytesPerSecond)}
		l.byPrincipal.Add(key, own)
	}
	l.mu.Unlock()
	principal := c.Principal

	now := time.Now()
	var taken []*rate.Reservation
	refuse := func(what string, global bool) error {
		for _, r := range taken {
			r.CancelAt(now)
		}
		if global {
			shared = ""
		}
		return record.Errorf(record.ReasonRateLimited, "%s is over its rate limit (%s, security.rate_limit%s): retry later", principal, what, shared)
	}
	for i, lim := range [4]*rate.Limiter{own[0], own[1], l.global[0], l.global[1]} {
		if lim == nil {
			continue
		}
		amount := n
		if i%2 == 1 {
			amount = size
		}
		r := lim.ReserveN(now, amount)
		if !r.OK() || r.DelayFrom(now) > 0 {
			if r.OK() {
				r.CancelAt(now)
			}
			what := [4]string{"records per second", "bytes per second", "all clients' records per second", "all clients' bytes per second"}[i]
			if !r.OK() {
				what = fmt.Sprintf("%s: one request of %d is more than a second's worth", what, amount)
			}
			return refuse(what, i >= 2)
		}
		taken = append(taken, r)
	}
	return nil
}
