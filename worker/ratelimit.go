package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The rate limit is the deployment's, not a replica's: Knot limits our credentials, whatever
// the number of pods. Replicas share it through the database, the one thing they all have.
//
// Every RateSyncInterval each replica heartbeats its row (queue.Beat) saying whether it is busy,
// and learns the deployment's current rate and the other live replicas' weights. Its share is
// its weight over the sum (busy 1, idle idleWeight), so the budget follows the work. Every call
// still waits on an in-process rate.Limiter set to that share.
//
// Failure cases:
//   - A replica that dies without a word stops heartbeating; its row expires after ttl and the
//     survivors take its share at their next heartbeat. A replica that stops cleanly removes its
//     row at once.
//   - Clocks: every comparison of times is made by the database, on its own clock (expiry,
//     the quiet period after a 429, Retry-After holds come back as durations). A replica's
//     clock only measures its own intervals.
//   - A replica that cannot reach the database sends nothing once it has missed two heartbeats,
//     before the others (after ttl) count it gone and take its share.
//   - A joining replica, or one that turns busy, uses its larger share only two heartbeats
//     later, by which time the others have seen it and shrunk theirs: the sum of the shares in
//     force stays within the deployment's rate. Room given up by others (a replica died, left
//     or went idle) is taken at once.
//   - 429: the replica told halves its own rate at once, and the deployment's (at most once a
//     second, however many replicas are told together) with a hold until Retry-After that every
//     replica honours from its next heartbeat. Heartbeats raise the rate again by a twentieth
//     of the ceiling per second once no 429 has come for a quiet period (AIMD), never above
//     RATE_LIMIT_RPS.
const (
	idleWeight   = 0.01 // an idle replica keeps a trickle, enough to find new work
	decreaseBy   = 0.5  // multiplicative decrease on 429
	increaseFrac = 0.1  // additive increase per second, as a share of the ceiling
	floorFrac    = 0.01 // the rate never falls below this share of the ceiling
)

type limiter struct {
	q        *queue.Queue
	id       string
	ceiling  float64
	burst    int
	interval time.Duration
	busy     func() bool
	metrics  *Metrics
	log      *slog.Logger

	lim  *rate.Limiter
	slow chan time.Duration // 429s to report to the deployment

	mu             sync.Mutex
	validUntil     time.Time     // the share in force lapses then unless renewed
	renewed        chan struct{} // closed at each successful heartbeat
	notUntil       time.Time     // no call before then (Retry-After)
	prevTarget     float64       // the share computed at the previous heartbeat
	prevPrevTarget float64       // and at the one before
	weight         float64       // this replica\'s weight at the last heartbeat
	claimingBeats  int           // heartbeats since this replica joined or its weight grew
	lastBeat       time.Time
	lastLocal      time.Time // when this replica last halved its own rate
	share          float64
	unreachable    bool // logged that the database cannot be reached
}

func newLimiter(q *queue.Queue, cfg Config, busy func() bool) *limiter {
	return &limiter{
		q:        q,
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

// wait blocks until a call may go out: a share is in force, no Retry-After holds, and the
// in-process limiter has a token.
func (l *limiter) wait(ctx context.Context) error {
	start := time.Now()
	defer func() { l.metrics.RateLimitWait.Observe(time.Since(start).Seconds()) }()
	for {
		l.mu.Lock()
		valid, renewed, until := l.validUntil, l.renewed, l.notUntil
		l.mu.Unlock()
		now := time.Now()
		if !now.Before(valid) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-renewed:
			}
			continue
		}
		if d := until.Sub(now); d > 0 {
			if err := sleep(ctx, d); err != nil {
				return err
			}
			continue
		}
		// Hold no reservation for long: a token reserved at the rate in force now keeps its
		// time when the share changes, so a replica that reserved at an idle trickle would stay
		// slow for seconds after its share grew, and one that reserved before a 429 would keep
		// calling at the old rate. Re-reserving every quarter interval lets a new share act
		// within that.
		r := l.lim.Reserve()
		delay := r.Delay()
		if !r.OK() || delay > l.interval/4 {
			r.Cancel()
			if err := sleep(ctx, l.interval/4); err != nil {
				return err
			}
			continue
		}
		if err := sleep(ctx, delay); err != nil {
			r.Cancel()
			return err
		}
		return nil
	}
}

// slowDown is told that Knot answered 429 with retryAfter: hold every call until then, halve
// this replica's rate now, and tell the deployment.
func (l *limiter) slowDown(retryAfter time.Duration) {
	now := time.Now()
	l.mu.Lock()
	if until := now.Add(retryAfter); until.After(l.notUntil) {
		l.notUntil = until
	}
	if now.Sub(l.lastLocal) >= time.Second {
		l.lastLocal = now
		l.share = max(l.share*decreaseBy, l.ceiling*floorFrac)
		l.prevTarget = min(l.prevTarget, l.share)
		l.prevPrevTarget = min(l.prevPrevTarget, l.share)
		l.lim.SetLimit(rate.Limit(l.share))
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
	l.mu.Lock()
	share := l.share
	l.mu.Unlock()
	// One reading of busy for both the row and the share: a replica that told the others it
	// was idle must not take a busy replica's share.
	busy := l.busy()
	bctx, cancel := context.WithTimeout(ctx, l.interval/2)
	d, err := l.q.Beat(bctx, queue.Heartbeat{
		ID:         l.id,
		Busy:       busy,
		ShareRPS:   share,
		CeilingRPS: l.ceiling,
		StepRPS:    l.ceiling * increaseFrac,
		Quiet:      max(2*l.interval, 2*time.Second),
		TTL:        l.ttl(),
		IdleWeight: idleWeight,
	})
	cancel()
	now := time.Now()

	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
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

	global := min(d.CurrentRPS, l.ceiling)
	weight := idleWeight
	if busy {
		weight = 1
	}
	frac := weight / (weight + d.OthersWeight)
	target := global * frac
	// When this replica claims more than before (it has just joined, or turned busy), it grows
	// only to what its two previous heartbeats computed: by then every other replica has seen
	// its row and shrunk to make room, even one whose heartbeat read the table just before the
	// row was written, or ran late. Growth for any other reason (a replica died, left or went
	// idle, or the deployment's rate rose) is taken at once: whoever gave that room up has
	// already stopped using it.
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
		l.validUntil = now.Add(2*l.interval + l.interval/2)
	}
	if d.Hold > 0 {
		if until := now.Add(d.Hold); until.After(l.notUntil) {
			l.notUntil = until
		}
	}
	l.lim.SetLimit(rate.Limit(l.share))
	l.lim.SetBurst(max(1, int(float64(l.burst)*frac)))
	close(l.renewed)
	l.renewed = make(chan struct{})

	l.metrics.RateLimitRPS.Set(l.share)
	l.metrics.GlobalRPS.Set(global)
	l.metrics.Replicas.Set(float64(d.Others + 1))
}

func (l *limiter) reportSlowDown(ctx context.Context, hold time.Duration) {
	sctx, cancel := context.WithTimeout(ctx, l.interval)
	defer cancel()
	rps, err := l.q.SlowDown(sctx, decreaseBy, l.ceiling*floorFrac, hold)
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
	if err := l.q.Leave(ctx, l.id); err != nil {
		l.log.Warn("could not remove this replica from the rate limit; it expires by itself", "err", err)
	}
}
