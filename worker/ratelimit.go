package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The rate limit is the deployment's, not a replica's: Knot limits our credentials, whatever
// the number of pods. Replicas share it through the database, the one thing they all have.
//
// One token bucket for the whole deployment lives in erasure_rate_limit's row (GCRA: a
// theoretical arrival time that each send taken moves on by 1/rate). A replica takes its sends
// from it in small batches, each due within a short horizon, and sends each at its time:
//
//	call waiting --> a send in stock? --yes--> sleep until it is due --> call Knot
//	                   | no                      (too late by more than its slack: lost, look again)
//	                   v
//	                 take from the bucket (one statement; one at a time per replica, for every
//	                 call waiting) --> sends due within the horizon go into stock
//	                   | none: the bucket is taken up to the horizon, or a Retry-After holds
//	                   v
//	                 sleep until one can be due in time, or give the claim back (errTooLate)
//
//	rate   = the deployment's current rate, at most the lowest RATE_LIMIT_RPS of the live
//	         replicas (less the shares that replicas of an older version allowed themselves)
//	burst  = the lowest RATE_LIMIT_BURST of the live replicas, whatever their number
//	429    = the deployment's current rate is halved (at most once a second, whoever is told)
//	         and hold_until set, which the bucket obeys at once and no claim crosses
//	         (queue.Claim); this replica drops its stock and holds every call until Retry-After.
//	quiet  = once no 429 has come for 2 beats, each heartbeat raises the current rate by a
//	         tenth of the ceiling per second (AIMD), never above the ceiling.
//
// Why it stays within the limit:
//   - Every send is taken from the one bucket, and the database's clock alone says when it is
//     due: a replica adds the durations it is given to its own clock when the answer arrives,
//     which is later, so it never sends early.
//   - A send that reaches Knot late bunches with sends taken after it. The bucket keeps a
//     reserve off its depth for that (up to 100ms of it); a send whose call wakes more than
//     half of it late is dropped, and the other half absorbs the trip to Knot.
//   - A replica that cannot reach the database takes nothing: it sends at most what it holds,
//     all due within the horizon.
//   - While replicas disagree on RATE_LIMIT_RPS or RATE_LIMIT_BURST (a rollout), the bucket
//     follows the lowest among the live ones and the taker's own.
//   - Every call also gives its claim back instead of waiting past its lease (wait's deadline).
//
// Heartbeats still count the live replicas and their weights (busy 1, idle idleWeight): each
// replica's share of the rate is only its estimate of what it will get, which caps how much it
// claims, never what it sends.
const (
	idleWeight   = 0.01 // an idle replica keeps a trickle, enough to find new work
	decreaseBy   = 0.5  // multiplicative decrease on 429
	increaseFrac = 0.1  // additive increase per second, as a share of the ceiling
	floorFrac    = 0.01 // the rate never falls below this share of the ceiling

	maxReserve = 100 * time.Millisecond // off the bucket's depth, for sends that reach Knot late
	maxHorizon = 250 * time.Millisecond // how far ahead a replica takes its sends
)

// rateStore is the part of the queue that the shared rate limit talks to.
type rateStore interface {
	Beat(ctx context.Context, h queue.Heartbeat) (queue.Deployment, error)
	SlowDown(ctx context.Context, factor, floorRPS float64, hold time.Duration) (float64, error)
	Leave(ctx context.Context, id string) error
	Take(ctx context.Context, r queue.TakeRequest) (queue.Grant, bool, error)
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
	horizon  time.Duration
	busy     func() bool
	metrics  *Metrics
	log      *slog.Logger

	slow chan time.Duration // 429s to report to the deployment

	mu          sync.Mutex
	stock       []send        // sends taken from the bucket, in the order they are due
	waiting     int           // calls in wait without a send of their own
	used        int           // sends used since the last take
	trip        time.Duration // how long the last take took to answer
	slack       time.Duration // the slack of the last take's sends
	taking      chan struct{} // closed when the take in flight answers; nil when none is
	nextTake    time.Time     // no take before then: the bucket is taken up to the horizon, or it failed
	renewed     chan struct{} // closed at each successful heartbeat
	notUntil    time.Time     // no call before then (Retry-After)
	beaten      bool          // a heartbeat has answered: the bucket's row exists
	lastLocal   time.Time     // when this replica last dropped its stock for a 429
	share       float64       // this replica's estimate of its share, from the last heartbeat
	unreachable bool          // logged that the bucket cannot be reached
	beatFailing bool          // logged that heartbeats fail
}

// send is one send taken from the bucket: due at at, and lost if it cannot go by useBy.
type send struct{ at, useBy time.Time }

func newLimiter(store rateStore, cfg Config, busy func() bool) *limiter {
	return &limiter{
		store:    store,
		now:      cfg.clock,
		id:       cfg.ID,
		ceiling:  cfg.RateLimit,
		burst:    cfg.Burst,
		interval: cfg.RateSyncInterval,
		horizon:  min(cfg.RateSyncInterval/4, maxHorizon),
		busy:     busy,
		metrics:  cfg.Metrics,
		log:      cfg.Logger.With("worker", cfg.ID),
		slow:     make(chan time.Duration, 16),
		renewed:  make(chan struct{}),
	}
}

func (l *limiter) ttl() time.Duration { return 3 * l.interval }

// currentShare is the rate this replica expects to get now, in calls per second.
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

// sendable is how many calls this replica expects to send within window from now: the sends
// it holds plus what its share adds. Claiming more than that would leave claims waiting past
// their leases.
func (l *limiter) sendable(window time.Duration) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if hold := l.notUntil.Sub(now); hold > 0 {
		window -= hold
	}
	if window <= 0 || l.share <= 0 {
		return 0
	}
	return float64(len(l.stock)) + l.share*window.Seconds()
}

// waitStep is what a call waiting for the rate limit does next.
type waitStep struct {
	sleep  time.Duration   // sleep this long, then look again
	send   *send           // or this send is the call's: sleep until it is due
	take   bool            // or take from the bucket for every call waiting
	answer <-chan struct{} // or wait for the take in flight (or the first heartbeat)
	err    error           // the call cannot go by its deadline
}

// step decides, at now, for a call that must go by by.
func (l *limiter) step(now, by time.Time) waitStep {
	l.mu.Lock()
	defer l.mu.Unlock()
	if hold := l.notUntil.Sub(now); hold > 0 {
		if l.notUntil.After(by) {
			return waitStep{err: &errTooLate{why: "a Retry-After hold outlasts the lease", hold: hold}}
		}
		return waitStep{sleep: hold}
	}
	for len(l.stock) > 0 && now.After(l.stock[0].useBy) {
		l.stock = l.stock[1:] // due while no call could take it: lost
	}
	if len(l.stock) > 0 {
		s := l.stock[0]
		if s.at.After(by) {
			return waitStep{err: &errTooLate{why: "the rate limit cannot send it before the lease runs short"}}
		}
		l.stock = l.stock[1:]
		return waitStep{send: &s}
	}
	switch {
	case !l.beaten:
		return waitStep{answer: l.renewed}
	case l.taking != nil:
		return waitStep{answer: l.taking}
	case l.nextTake.After(by):
		return waitStep{err: &errTooLate{why: "the rate limit cannot send it before the lease runs short"}}
	case l.nextTake.After(now):
		return waitStep{sleep: l.nextTake.Sub(now)}
	}
	l.taking = make(chan struct{})
	return waitStep{take: true}
}

// wait blocks until a call may go out: no Retry-After holds, and a send taken from the
// deployment's bucket is due. It returns an *errTooLate when that cannot happen by by, and
// ctx's error when ctx ends first.
func (l *limiter) wait(ctx context.Context, by time.Time) error {
	start := l.now()
	defer func() { l.metrics.RateLimitWait.Observe(l.now().Sub(start).Seconds()) }()
	l.mu.Lock()
	l.waiting++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.waiting--
		l.mu.Unlock()
	}()
	for {
		now := l.now()
		s := l.step(now, by)
		switch {
		case s.err != nil:
			return s.err
		case s.send != nil:
			if err := sleep(ctx, s.send.at.Sub(now)); err != nil {
				return err
			}
			if !l.now().After(s.send.useBy) {
				l.mu.Lock()
				l.used++
				l.mu.Unlock()
				return nil
			} // woke too late to use it: it is lost, look again
		case s.take:
			l.take(ctx)
		case s.answer != nil:
			t := time.NewTimer(max(by.Sub(now), 0))
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-s.answer:
				t.Stop()
			case <-t.C:
				return &errTooLate{why: "the rate limit cannot send it before the lease runs short"}
			}
		default:
			if err := sleep(ctx, s.sleep); err != nil {
				return err
			}
		}
	}
}

// take takes sends from the deployment's bucket for every call waiting, and as many again as
// this replica used since its last take: calls keep coming while one take is in flight (one at
// a time; the calls that come meanwhile wait for its answer), and a take for the waiting alone
// would make the replica's rate that of its round trips. Sends it does not use are lost to the
// deployment, at most one take's worth when its work runs out.
func (l *limiter) take(ctx context.Context) {
	l.mu.Lock()
	want := l.waiting + l.used
	l.used = 0
	// Sends due before the answer is back lose the trip from their slack. Where the slack is
	// wide (a deep bucket) that costs nothing, and a lead would make every take wait a trip.
	var lead time.Duration
	if l.slack < 2*l.trip {
		lead = min(l.trip, l.horizon/2)
	}
	l.mu.Unlock()
	asked := l.now()
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.interval)
	g, ok, err := l.store.Take(tctx, queue.TakeRequest{
		Want:       want,
		Within:     l.horizon,
		CeilingRPS: l.ceiling,
		Burst:      l.burst,
		FloorRPS:   l.ceiling * floorFrac,
		Reserve:    maxReserve,
		Lead:       lead,
	})
	cancel()
	arrived := l.now()

	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.taking)
	l.taking = nil
	l.trip = arrived.Sub(asked)
	switch {
	case err != nil:
		if !l.unreachable {
			l.unreachable = true
			l.log.Error("cannot take sends from the shared rate limit: sending nothing until the database answers", "err", err)
		}
		l.nextTake = arrived.Add(l.horizon)
		return
	case !ok:
		l.nextTake = arrived.Add(l.horizon) // no heartbeat has made the bucket yet
		return
	}
	if l.unreachable {
		l.unreachable = false
		l.log.Info("shared rate limit answering: sending again")
	}
	l.slack = g.Slack
	if g.Hold > 0 {
		if until := arrived.Add(g.Hold); until.After(l.notUntil) {
			l.notUntil = until
		}
	}
	// The database read its clock somewhere between asked and arrived. A send goes no earlier
	// than its time counted from arrived, and no later than its slack counted from asked: a
	// slow answer leaves less of the slack, not more lateness.
	for k := range g.N {
		due := max(g.First+time.Duration(k)*g.Every, 0)
		l.stock = append(l.stock, send{at: arrived.Add(due), useBy: asked.Add(due + g.Slack)})
	}
	l.nextTake = time.Time{}
	if g.N == 0 && g.Hold == 0 {
		// Taken up to the horizon: the next send can be due in time once the bucket drains by
		// what is left beyond it.
		l.nextTake = arrived.Add(max(g.First-l.horizon, g.Every/2, time.Millisecond))
	}
}

// slowDown is told that Knot answered 429 with retryAfter: hold every call until then, drop
// the sends this replica holds (they were taken at the rate Knot just refused), and tell the
// deployment, whose bucket halves its rate.
func (l *limiter) slowDown(retryAfter time.Duration) {
	l.mu.Lock()
	now := l.now()
	if until := now.Add(retryAfter); until.After(l.notUntil) {
		l.notUntil = until
	}
	l.stock = nil
	if now.Sub(l.lastLocal) >= time.Second {
		l.lastLocal = now
		l.share = max(l.share*decreaseBy, l.ceiling*floorFrac)
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

// apply is one heartbeat's effect: this replica's estimate of its share, and any hold.
func (l *limiter) apply(now time.Time, busy bool, d queue.Deployment, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if !l.beatFailing {
			l.beatFailing = true
			l.log.Warn("rate limit heartbeat failed; the other replicas count this one gone after three", "err", err)
		}
		return
	}
	l.beatFailing = false
	global := min(d.CurrentRPS, d.CeilingRPS) // the ceiling is the lowest of the live replicas', this one's included
	weight := idleWeight
	if busy {
		weight = 1
	}
	l.share = global * weight / (weight + d.OthersWeight)
	if d.Hold > 0 {
		if until := now.Add(d.Hold); until.After(l.notUntil) {
			l.notUntil = until
			l.stock = nil
		}
	}
	l.beaten = true
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
