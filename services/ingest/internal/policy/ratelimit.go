package policy

import (
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/record"
)

// limits are the token buckets of security.rate_limit: records/s and
// bytes/s per principal, and for all clients together. A bucket holds one
// second of its rate.
type limits struct {
	cfg    config.RateLimit
	global [2]*rate.Limiter // records, bytes; nil: no limit

	mu          sync.Mutex
	byPrincipal map[string][2]*rate.Limiter // keyed by the bounded principal label
}

func newLimits(cfg config.RateLimit) *limits {
	return &limits{cfg: cfg, global: [2]*rate.Limiter{bucket(cfg.GlobalRecordsPerSecond), bucket(cfg.GlobalBytesPerSecond)}, byPrincipal: map[string][2]*rate.Limiter{}}
}

func bucket(perSecond float64) *rate.Limiter {
	if perSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(1, int(math.Ceil(perSecond))))
}

// take takes n records of size bytes from the principal's buckets and the
// global ones, all or none. It returns a record.Error when a bucket is
// short.
func (l *limits) take(principal string, n, size int) error {
	if l.cfg == (config.RateLimit{}) {
		return nil
	}
	l.mu.Lock()
	own, ok := l.byPrincipal[principal]
	if !ok {
		own = [2]*rate.Limiter{bucket(l.cfg.RecordsPerSecond), bucket(l.cfg.BytesPerSecond)}
		l.byPrincipal[principal] = own
	}
	l.mu.Unlock()

	now := time.Now()
	var taken []*rate.Reservation
	refuse := func(what string) error {
		for _, r := range taken {
			r.CancelAt(now)
		}
		return record.Errorf(record.ReasonRateLimited, "%s is over its rate limit (%s, security.rate_limit): retry later", principal, what)
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
			return refuse(what)
		}
		taken = append(taken, r)
	}
	return nil
}
