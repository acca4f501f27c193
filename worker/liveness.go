package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// liveness is this replica's row in erasure_workers, renewed by a heartbeat every interval.
// The row is what the other replicas know of this one: while it lives, its RATE_LIMIT_RPS and
// RATE_LIMIT_BURST bound the deployment's bucket and its weight (busy 1, idle idleWeight)
// counts in everyone's share; once it has expired (three intervals without a heartbeat), any
// replica takes its claims back at once (queue.RecoverExpired), so a crash costs seconds, not a
// whole lease.
//
// The heartbeat also estimates this replica's share of the deployment's rate. The share caps
// how much the replica claims (claimable), never what it sends: sends come from the bucket.
type liveness struct {
	store    rateStore
	id       string
	ceiling  float64
	burst    int
	interval time.Duration
	now      func() time.Time
	busy     func() bool
	paused   func() bool // nil: never paused; told in each heartbeat for the console and `status`
	metrics  *Metrics
	log      *slog.Logger
	onHold   func(until time.Time) // a Retry-After the deployment holds every call for

	mu          sync.Mutex
	renewed     chan struct{} // closed at each successful heartbeat
	beaten      bool          // a heartbeat has answered: the bucket's row exists
	share       float64       // this replica's estimate of its share, from the last heartbeat
	lastLocal   time.Time     // when this replica last halved its own share for a 429
	beatFailing bool          // logged that heartbeats fail
}

func newLiveness(store rateStore, cfg Config, busy func() bool, onHold func(time.Time)) *liveness {
	return &liveness{
		store:    store,
		id:       cfg.ID,
		ceiling:  cfg.RateLimit,
		burst:    cfg.Burst,
		interval: cfg.RateSyncInterval,
		now:      cfg.clock,
		busy:     busy,
		metrics:  cfg.Metrics,
		log:      cfg.Logger.With("worker", cfg.ID),
		onHold:   onHold,
		renewed:  make(chan struct{}),
	}
}

func (l *liveness) ttl() time.Duration { return 3 * l.interval }

// currentShare is the rate this replica expects to get now, in calls per second.
func (l *liveness) currentShare() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.share
}

// hasBeaten reports whether a heartbeat has answered, and otherwise the channel closed when
// one does.
func (l *liveness) hasBeaten() (bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.beaten, l.renewed
}

// renewal is closed at the next successful heartbeat.
func (l *liveness) renewal() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewed
}

// slowDown halves this replica's own estimate at once on a 429 (at most once a second), before
// the deployment's answer comes back with the next heartbeat.
func (l *liveness) slowDown() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.now(); now.Sub(l.lastLocal) >= time.Second {
		l.lastLocal = now
		l.share = max(l.share*decreaseBy, l.ceiling*floorFrac)
		l.metrics.RateLimitRPS.Set(l.share)
	}
}

// run heartbeats every interval until ctx ends.
func (l *liveness) run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		l.beat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *liveness) beat(ctx context.Context) {
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
		Paused:     l.paused != nil && l.paused(),
	})
	cancel()
	if err != nil && ctx.Err() != nil {
		return
	}
	l.apply(l.now(), busy, d, err)
}

// apply is one heartbeat's effect: this replica's estimate of its share, and any hold.
func (l *liveness) apply(now time.Time, busy bool, d queue.Deployment, err error) {
	if err == nil && d.Hold > 0 {
		l.onHold(now.Add(d.Hold)) // before taking l.mu: the pacer's lock is never taken inside it
	}
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
	l.beaten = true
	close(l.renewed)
	l.renewed = make(chan struct{})

	l.metrics.RateLimitRPS.Set(l.share)
	l.metrics.GlobalRPS.Set(global)
	l.metrics.Replicas.Set(float64(d.Others + 1))
}

// leave gives this replica's share back at once at a clean shutdown, if the database answers
// by then.
func (l *liveness) leave(by time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), by)
	defer cancel()
	if err := l.store.Leave(ctx, l.id); err != nil {
		l.log.Warn("could not remove this replica from the rate limit; it expires by itself", "err", err)
	}
}
