package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The rate limit is the deployment's, not a replica's: Knot limits our credentials, whatever
// the number of pods. Replicas share it through the database, the one thing they all have.
//
// The protocol, as one replica sees it (every arrow is one heartbeat, every RateSyncInterval):
//
//	         first beat                       beat: weight grew (joined, turned busy)
//	(start) ----------> claiming (2 beats) <-----------------------------------+
//	                      | share = min(target now, the two targets before)     |
//	                      v two beats later                                     |
//	                    settled: share = target ------------------------------+
//	                      |  ^
//	  two beats missed    |  | a beat answers again
//	                      v  |
//	                    cut off: sends nothing (its row expires after 3 beats, and the
//	                             others take its share and its claims)
//
//	target = global × weight / (weight + others' weights)   busy weight 1, idle idleWeight
//	global = min(the deployment's current rate, the lowest RATE_LIMIT_RPS of the live replicas)
//	burst  = the lowest RATE_LIMIT_BURST of the live replicas × weight / (sum of weights)
//
//	429 from Knot:  this replica halves its share at once (at most once a second) and holds
//	                every call until Retry-After; the deployment's current rate is halved (at
//	                most once a second, whoever is told) and hold_until set, which every other
//	                replica obeys from its next beat and no claim crosses (queue.Claim).
//	quiet period:   once no 429 has come for 2 beats, each beat raises the current rate by a
//	                tenth of the ceiling per second (AIMD), never above the ceiling.
//
// Why it stays within the limit:
//   - A replica that claims more (a joiner, one turning busy) grows only to what its two
//     previous heartbeats computed: by then every other replica has seen its row and shrunk.
//     Room given up by others (a replica died, left or went idle) is taken at once: whoever
//     gave it up has already stopped using it.
//   - While replicas disagree on RATE_LIMIT_RPS or RATE_LIMIT_BURST (a rollout), all follow the
//     lowest among the live ones; each replica's row carries its own.
//   - A replica that cannot reach the database sends nothing from two intervals after its last
//     heartbeat that answered (so also while a joiner grows unseen by it),
//     before the others (after three) count it gone and take its share.
//   - Every comparison of times across replicas is the database's (expiry, the quiet period,
//     holds come back as durations). A replica's clock only measures its own intervals.
//   - Every call also waits on an in-process rate.Limiter set to the share, and gives its claim
//     back instead of waiting past its lease (wait's deadline).
//
// A burst below one call per replica cannot be had without replicas timing their calls
// together: a replica that sends at all sends at least one call in some instant. Each busy
// replica therefore keeps a burst of at least one; the deployment's burst is RATE_LIMIT_BURST
// or the number of busy replicas, whichever is larger.
const (
	idleWeight   = 0.01 // an idle replica keeps a trickle, enough to find new work
	decreaseBy   = 0.5  // multiplicative decrease on 429
	increaseFrac = 0.1  // additive increase per second, as a share of the ceiling
	floorFrac    = 0.01 // the rate never falls below this share of the ceiling
)

// rateStore is the part of the queue that the shared rate limit talks to.
type rateStore interface {
	Beat(ctx context.Context, h queue.Heartbeat) (queue.Deployment, error)
	SlowDown(ctx context.Context, factor, floorRPS float64, hold time.Duration) (float64, error)
	Leave(ctx context.Context, id string) error
}

// errTooLate is returned by wait when a call could not go out by its deadline: the claim
// goes back unsent rather than outlive its lease.
type errTooLate struct {
	why  string
	hold time.Duration // what remains of a Retry-After hold, if that is the reason
}

func (e *errTooLate) Error() string { return e.why }

type limiter struct {
	store    rateStore
	now      func() time.Time
	id       string
	ceiling  float64 // this replica's RATE_LIMIT_RPS
	burst    int     // this replica's RATE_LIMIT_BURST
	interval time.Duration
	busy     func() bool
	metrics  *Metrics
	log      *slog.Logger

	slow chan time.Duration // 429s to report to the deployment

	mu             sync.Mutex
	lim            *rate.Limiter
	validUntil     time.Time     // the share in force lapses then unless renewed
	renewed        chan struct{} // closed at each successful heartbeat
	notUntil       time.Time     // no call before then (Retry-After)
	prevTarget     float64       // the share computed at the previous heartbeat
	prevPrevTarget float64       // and at the one before
	weight         float64       // this replica's weight at the last heartbeat
	claimingBeats  int           // heartbeats since this replica joined or its weight grew
	lastBeat       time.Time
	lastLocal      time.Time // when this replica last halved its own rate
	share          float64
	unreachable    bool // logged that the database cannot be reached
}

func newLimiter(store rateStore, cfg Config, busy func() bool) *limiter {
	return &limiter{
		store:    store,
		now:      cfg.clock,
		id:       cfg.ID,
		ceiling:  cfg.RateLimit,
		burst:    cfg.Burst,
		interval: cfg.RateSyncInterval,
		busy:     busy,
		metrics:  cfg.Metrics,
		log:      cfg.Logger.With("worker", cfg.ID),
		lim:      rate.NewLimiter(0, 0),
		slow:     make(chan time.Duration, 16),
		renewed:  make(chan struct{}),
	}
}

func (l *limiter) ttl() time.Duration { return 3 * l.interval }

// currentShare is the rate this replica may use now, in calls per second.
func (l *limiter) currentShare() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.share
}

// holdRemaining is how long a Retry-After still holds every call.
func (l *limiter) holdRemaining() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(l.notUntil.Sub(l.now()), 0)
}

// sendable is how many calls this replica could send within window from now: the tokens it
// holds plus what its share adds. Claiming more than that would leave claims waiting past
// their leases.
func (l *limiter) sendable(window time.Duration) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !now.Before(l.validUntil) || l.share <= 0 {
		return 0
	}
	if hold := l.notUntil.Sub(now); hold > 0 {
		window -= hold
	}
	if window <= 0 {
		return 0
	}
	return max(l.lim.TokensAt(now), 0) + float64(l.lim.Limit())*window.Seconds()
}

// waitStep is what a call waiting for the rate limit does next.
type waitStep struct {
	sleep   time.Duration   // sleep this long; then go if taken, else look again
	taken   bool            // a token is reserved for this call
	renewal <-chan struct{} // no share is in force: wait for the next heartbeat
	err     error           // the call cannot go by its deadline
}

// step decides, at now, for a call that must go by by. A token is reserved only when it comes
// within a quarter interval: one reserved at the rate in force now keeps its time when the
// share changes, so a replica that reserved at an idle trickle would stay slow for seconds
// after its share grew, and one that reserved before a 429 would keep calling at the old rate.
func (l *limiter) step(now, by time.Time) waitStep {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !now.Before(l.validUntil) {
		return waitStep{renewal: l.renewed}
	}
	if hold := l.notUntil.Sub(now); hold > 0 {
		if l.notUntil.After(by) {
			return waitStep{err: &errTooLate{why: "a Retry-After hold outlasts the lease", hold: hold}}
		}
		return waitStep{sleep: hold}
	}
	r := l.lim.ReserveN(now, 1)
	if !r.OK() {
		return waitStep{sleep: l.interval / 4}
	}
	delay := r.DelayFrom(now)
	if now.Add(delay).After(by) {
		r.CancelAt(now)
		return waitStep{err: &errTooLate{why: "this replica's share of the rate cannot send it before the lease runs short"}}
	}
	if delay > l.interval/4 {
		r.CancelAt(now)
		return waitStep{sleep: l.interval / 4}
	}
	return waitStep{sleep: delay, taken: true}
}

// wait blocks until a call may go out: a share is in force, no Retry-After holds, and the
// in-process limiter has a token. It returns an *errTooLate when that cannot happen by by,
// and ctx's error when ctx ends first.
func (l *limiter) wait(ctx context.Context, by time.Time) error {
	start := l.now()
	defer func() { l.metrics.RateLimitWait.Observe(l.now().Sub(start).Seconds()) }()
	for {
		now := l.now()
		s := l.step(now, by)
		switch {
		case s.err != nil:
			return s.err
		case s.renewal != nil:
			if !by.After(now) {
				return &errTooLate{why: "no share of the rate limit in force before the lease runs short"}
			}
			t := time.NewTimer(by.Sub(now))
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-s.renewal:
				t.Stop()
			case <-t.C:
			}
		default:
			if err := sleep(ctx, s.sleep); err != nil {
				return err
			}
			if s.taken {
				return nil
			}
		}
	}
}

// slowDown is told that Knot answered 429 with retryAfter: hold every call until then, halve
// this replica's rate now, and tell the deployment.
func (l *limiter) slowDown(retryAfter time.Duration) {
	l.mu.Lock()
	now := l.now()
	if until := now.Add(retryAfter); until.After(l.notUntil) {
		l.notUntil = until
	}
	if now.Sub(l.lastLocal) >= time.Second {
		l.lastLocal = now
		l.share = max(l.share*decreaseBy, l.ceiling*floorFrac)
		l.prevTarget = min(l.prevTarget, l.share)
		l.prevPrevTarget = min(l.prevPrevTarget, l.share)
		l.lim.SetLimitAt(now, rate.Limit(l.share))
		l.metrics.RateLimitRPS.Set(l.share)
	}
	l.mu.Unlock()
	select {
	case l.slow <- retryAfter:
	default: // enough 429s are already on their way to the database
	}
}

// run heartbeats every interval and reports 429s to the deployment, until ctx ends.
func (l *limiter) run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	l.beat(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.beat(ctx)
		case hold := <-l.slow:
			l.reportSlowDown(ctx, hold)
		}
	}
}

func (l *limiter) beat(ctx context.Context) {
	// One reading of busy for both the row and the share: a replica that told the others it
	// was idle must not take a busy replica's share.
	busy := l.busy()
	// A heartbeat may take up to an interval: its row lasts three.
	bctx, cancel := context.WithTimeout(ctx, l.interval)
	d, err := l.store.Beat(bctx, queue.Heartbeat{
		ID:         l.id,
		Busy:       busy,
		ShareRPS:   l.currentShare(),
		CeilingRPS: l.ceiling,
		Burst:      l.burst,
		StepRPS:    l.ceiling * increaseFrac,
		Quiet:      max(2*l.interval, 2*time.Second),
		TTL:        l.ttl(),
		IdleWeight: idleWeight,
	})
	cancel()
	if err != nil && ctx.Err() != nil {
		return
	}
	l.apply(l.now(), busy, d, err)
}

// apply is one heartbeat's effect on this replica's share: the protocol's state machine.
func (l *limiter) apply(now time.Time, busy bool, d queue.Deployment, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if !l.unreachable && now.Sub(l.lastBeat) > 2*l.interval {
			l.unreachable = true
			l.log.Error("cannot renew this replica's share of the rate limit: sending nothing until the database answers", "err", err)
			l.metrics.RateLimitRPS.Set(0)
		}
		return
	}
	if l.unreachable {
		l.unreachable = false
		l.log.Info("rate limit share renewed: sending again")
	}

	global := min(d.CurrentRPS, d.CeilingRPS) // the ceiling is the lowest of the live replicas', this one's included
	weight := idleWeight
	if busy {
		weight = 1
	}
	frac := weight / (weight + d.OthersWeight)
	target := global * frac
	if weight > l.weight {
		l.claimingBeats = 0
	}
	l.weight = weight
	l.share = target
	if l.claimingBeats < 2 {
		l.share = min(target, l.prevTarget, l.prevPrevTarget)
		l.claimingBeats++
	}
	l.prevPrevTarget, l.prevTarget = l.prevTarget, target
	l.lastBeat = now
	l.validUntil = time.Time{} // a first heartbeat has no share yet: nothing goes out
	if l.share > 0 {
		// Two intervals: a replica grows into a joiner's room only at its third heartbeat, two
		// intervals after the joiner's row appeared, and by then every replica that has not seen
		// that row (its heartbeats failed) has stopped sending.
		l.validUntil = now.Add(2 * l.interval)
	}
	if d.Hold > 0 {
		if until := now.Add(d.Hold); until.After(l.notUntil) {
			l.notUntil = until
		}
	}
	burst := d.Burst // the lowest of the live replicas', this one's included
	if burst < 1 {
		burst = l.burst
	}
	l.lim.SetLimitAt(now, rate.Limit(l.share))
	l.lim.SetBurstAt(now, max(1, int(float64(burst)*frac)))
	close(l.renewed)
	l.renewed = make(chan struct{})

	l.metrics.RateLimitRPS.Set(l.share)
	l.metrics.GlobalRPS.Set(global)
	l.metrics.Replicas.Set(float64(d.Others + 1))
}

func (l *limiter) reportSlowDown(ctx context.Context, hold time.Duration) {
	sctx, cancel := context.WithTimeout(ctx, l.interval)
	defer cancel()
	rps, err := l.store.SlowDown(sctx, decreaseBy, l.ceiling*floorFrac, hold)
	if err != nil {
		if ctx.Err() == nil {
			l.log.Warn("could not slow the deployment down after a 429; this replica slowed itself", "err", err)
		}
		return
	}
	l.metrics.GlobalRPS.Set(min(rps, l.ceiling))
}

// leave gives this replica's share back at once at a clean shutdown, if the database answers
// by then.
func (l *limiter) leave(by time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), by)
	defer cancel()
	if err := l.store.Leave(ctx, l.id); err != nil {
		l.log.Warn("could not remove this replica from the rate limit; it expires by itself", "err", err)
	}
}

// asTooLate reports whether err is wait's errTooLate, and returns it.
func asTooLate(err error) (*errTooLate, bool) {
	var tl *errTooLate
	ok := errors.As(err, &tl)
	return tl, ok
}

// renewal is closed at the next successful heartbeat.
func (l *limiter) renewal() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewed
}
