package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The rate limit is the deployment's, not a replica's: Knot limits our credentials, whatever
// the number of pods. Who decides what:
//
//   - The bucket (this file) decides how many calls the deployment may make, and which of them
//     are this replica's. It is one GCRA token bucket in erasure_rate_limit's row, the one thing
//     every replica shares: a take grants this replica a run of the deployment's schedule, n
//     calls one emission interval apart, the first of them at once if the bucket was full.
//     Its rate is the lowest RATE_LIMIT_RPS of the live replicas, halved on a 429 and raised
//     again while none comes (AIMD); its burst the lowest RATE_LIMIT_BURST.
//   - golang.org/x/time/rate decides when this replica sends each call it was granted
//     (pacer.go): every grant is a rate.Limiter whose limit is the rate the bucket granted at
//     and whose burst is the sends it granted at once.
//   - The heartbeat (liveness.go) keeps this replica counted among the live ones, which sets
//     the ceiling and the burst, estimates its share (which caps what it claims), and tells
//     the other replicas when it is gone so that its claims are taken back.
//
// The promise, for every rate and every burst from 1, with any number of replicas: at least
// 95% of the limit while work waits, and never more than limit + burst calls in any second at
// Knot. Each grant's sends are due at the bucket's times, measured on the database's clock and
// added to the replica's own clock when the answer arrives, so none goes early. A send may go
// out up to lateSend after its time (a goroutine that wakes late, a take that answers slowly),
// or longer where the bucket is deep (half its depth, up to maxLateness), and reach Knot up to
// lateKnot later still; the bucket pays for that lateness from its depth, and from its rate
// what the depth cannot pay (queue.Take). A send later than that is given up, never sent.
const (
	idleWeight   = 0.01 // an idle replica keeps a trickle, enough to find new work
	decreaseBy   = 0.5  // multiplicative decrease on 429
	increaseFrac = 0.1  // additive increase per second, as a share of the ceiling
	floorFrac    = 0.01 // the rate never falls below this share of the ceiling

	lateSend    = 15 * time.Millisecond  // how late after its time a granted send may still go out, at least
	lateKnot    = 10 * time.Millisecond  // how much longer the trip to Knot may take for one send than another
	maxLateness = 100 * time.Millisecond // the most lateness a deep bucket allows (half its depth)
	maxHorizon  = 250 * time.Millisecond // how far ahead a replica takes its sends
)

// rateStore is the part of the queue that the shared rate limit talks to.
type rateStore interface {
	Beat(ctx context.Context, h queue.Heartbeat) (queue.Deployment, error)
	SlowDown(ctx context.Context, factor, floorRPS float64, hold time.Duration) (float64, error)
	Leave(ctx context.Context, id string) error
	Take(ctx context.Context, r queue.TakeRequest) (queue.Grant, bool, error)
}

// bucket is this replica's side of the deployment's bucket: it takes grants and reports 429s.
type bucket struct {
	store    rateStore
	ceiling  float64 // this replica's RATE_LIMIT_RPS
	burst    int     // this replica's RATE_LIMIT_BURST
	interval time.Duration
	horizon  time.Duration
	now      func() time.Time
	metrics  *Metrics
	log      *slog.Logger

	slow chan time.Duration // 429s to report to the deployment

	mu          sync.Mutex
	unreachable bool     // logged that the bucket cannot be reached
	clock       dbOffset // how far the database's clock is from this replica's
}

func newBucket(store rateStore, cfg Config) *bucket {
	return &bucket{
		store:    store,
		ceiling:  cfg.RateLimit,
		burst:    cfg.Burst,
		interval: cfg.RateSyncInterval,
		horizon:  min(cfg.RateSyncInterval/4, maxHorizon),
		now:      cfg.clock,
		metrics:  cfg.Metrics,
		log:      cfg.Logger.With("worker", cfg.ID),
		slow:     make(chan time.Duration, 16),
	}
}

// taken is one take's answer, with the times on this replica's clock between which the
// database read its own (from, to): at first when the take was asked and when it arrived,
// then narrower as earlier takes tell how far the two clocks are apart.
type taken struct {
	queue.Grant
	ok             bool // false: no heartbeat has made the bucket yet
	asked, arrived time.Time
	from, to       time.Time
	err            error
}

// take asks the bucket for want sends due within the horizon, none due before lead.
func (b *bucket) take(ctx context.Context, want int, lead time.Duration) taken {
	t := taken{asked: b.now()}
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.interval)
	t.Grant, t.ok, t.err = b.store.Take(tctx, queue.TakeRequest{
		Want:        want,
		Within:      b.horizon,
		CeilingRPS:  b.ceiling,
		Burst:       b.burst,
		FloorRPS:    b.ceiling * floorFrac,
		Lateness:    lateSend + lateKnot,
		MaxLateness: maxLateness,
		Lead:        lead,
	})
	cancel()
	t.arrived = b.now()

	b.mu.Lock()
	defer b.mu.Unlock()
	t.from, t.to = t.asked, t.arrived
	if t.err == nil && t.ok {
		t.from, t.to = b.clock.read(t.Grant.At, t.asked, t.arrived)
	}
	switch {
	case t.err != nil && !b.unreachable:
		b.unreachable = true
		b.log.Error("cannot take sends from the shared rate limit: sending nothing until the database answers", "err", t.err)
	case t.err == nil && b.unreachable:
		b.unreachable = false
		b.log.Info("shared rate limit answering: sending again")
	}
	return t
}

// tell passes a 429 on to the deployment, unless enough are already on their way.
func (b *bucket) tell(retryAfter time.Duration) {
	select {
	case b.slow <- retryAfter:
	default:
	}
}

// run reports 429s to the deployment until ctx ends: its rate halves (at most once a second,
// whoever is told) and no replica calls Knot until the Retry-After has passed.
func (b *bucket) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case hold := <-b.slow:
			sctx, cancel := context.WithTimeout(ctx, b.interval)
			rps, err := b.store.SlowDown(sctx, decreaseBy, b.ceiling*floorFrac, hold)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					b.log.Warn("could not slow the deployment down after a 429; this replica slowed itself", "err", err)
				}
				continue
			}
			b.metrics.GlobalRPS.Set(min(rps, b.ceiling))
		}
	}
}

// dbOffset follows how far the database's clock is ahead of this replica's, as NTP does: a
// take read the database's clock somewhere between asking and the answer's arrival, so each
// take bounds the offset, and the tightest bounds of the recent takes hold for all of them.
// A take whose trip was slow (a busy database, a pooler) then still knows to within the
// fastest recent trip when the database read its clock. The bounds widen by maxDrift as time
// passes, and start again from one take if the database's clock steps outside them.
type dbOffset struct {
	anchor time.Time     // this replica's monotonic clock is read from here
	lo, hi time.Duration // the database's clock less this replica's, in between
	at     time.Time     // when lo and hi were last narrowed
}

const maxDrift = 200e-6 // how fast two clocks may drift apart: 200µs a second

// read bounds, on this replica's clock, when the database read dbAt during a take asked at
// asked that arrived at arrived.
func (o *dbOffset) read(dbAt, asked, arrived time.Time) (from, to time.Time) {
	if o.anchor.IsZero() {
		o.anchor = asked
	}
	db := time.Duration(dbAt.UnixNano() - o.anchor.Round(0).UnixNano()) // the anchor's wall reading is the one the offset is against
	lo, hi := db-arrived.Sub(o.anchor), db-asked.Sub(o.anchor)
	if !o.at.IsZero() {
		widen := time.Duration(float64(arrived.Sub(o.at)) * maxDrift)
		if plo, phi := o.lo-widen, o.hi+widen; plo <= hi && lo <= phi {
			lo, hi = max(lo, plo), min(hi, phi)
		}
	}
	o.lo, o.hi, o.at = lo, hi, arrived
	return o.anchor.Add(db - hi), o.anchor.Add(db - lo)
}
