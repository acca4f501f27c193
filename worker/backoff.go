package worker

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Every wait that grows with failures is a backoff.ExponentialBackOff, jittered to between half
// and all of its nominal length, so that replicas and requests that failed together do not come
// back together.

// newDBBackoff paces retries of a database that does not answer: about 250ms, doubling to 10s.
func newDBBackoff() *backoff.ExponentialBackOff {
	return newBackoff(250*time.Millisecond, 10*time.Second)
}

// newQuickBackoff paces the quick retries of one claim.
func (c Config) newQuickBackoff() *backoff.ExponentialBackOff {
	return newBackoff(c.QuickBackoff, c.QuickBackoff*8)
}

// retryDelay is how long a request whose quick retries all failed waits in the table before
// claim attempt+1: RetryMinBackoff doubling per attempt up to RetryMaxBackoff.
func (c Config) retryDelay(attempt int) time.Duration {
	b := newBackoff(c.RetryMinBackoff, c.RetryMaxBackoff)
	d := b.NextBackOff()
	for range min(attempt, 64) - 1 {
		d = b.NextBackOff()
	}
	return d
}

// newBackoff waits initial, doubling to maxInterval, each wait drawn from [d/2, d] for its
// nominal d: the library draws from [m(1-f), m(1+f)], so m is three quarters of d and f a third.
func newBackoff(initial, maxInterval time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = initial * 3 / 4
	b.MaxInterval = maxInterval * 3 / 4
	b.Multiplier = 2
	b.RandomizationFactor = 1.0 / 3
	b.MaxElapsedTime = 0 // never stop: the callers decide when to give up
	b.Reset()
	return b
}

// sleep waits for d, or until ctx ends and then returns its error.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
