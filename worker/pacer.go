package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// pacer decides when this replica sends each call the deployment's bucket granted it:
//
//	call waiting --> a granted send left? --yes--> sleep until it is due --> call Knot
//	                   | no                          (later than lateSend: given up, look again)
//	                   v
//	                 take from the bucket (one statement; one at a time per replica, for every
//	                 call waiting) --> a grant: n sends, paced by a rate.Limiter of its own
//	                   | none: the bucket is taken up to the horizon, or a Retry-After holds
//	                   v
//	                 sleep until one can be due in time, or give the claim back (errTooLate)
//
// A grant is n sends of the deployment's schedule, one emission interval apart, the first
// burst of them at once. Its rate.Limiter has that interval as its limit and that burst as its
// burst, and every send is reserved from it at the grant's start, so the limiter hands out
// exactly the times the bucket granted, in order, whenever the calls come for them: a call
// that comes late finds its send already due and goes at once, within lateSend, so a replica
// that falls behind for a moment catches up without sending anything early.
type pacer struct {
	bucket  *bucket
	live    *liveness
	now     func() time.Time
	metrics *Metrics

	mu       sync.Mutex
	grants   []*grant      // taken from the bucket and not used up, oldest first
	waiting  int           // calls in wait without a send of their own
	used     int           // sends used since the last take
	trip     time.Duration // how long the last take took to answer
	taking   chan struct{} // closed when the take in flight answers; nil when none is
	nextTake time.Time     // no take before then: the bucket is taken up to the horizon, or it failed
	notUntil time.Time     // no call before then (Retry-After)
}

// newRateLimit wires this replica's part of the rate limit: its side of the bucket, its
// heartbeat, and the pacer that asks both.
func newRateLimit(store rateStore, cfg Config, busy func() bool) (*bucket, *liveness, *pacer) {
	b := newBucket(store, cfg)
	p := &pacer{bucket: b, now: cfg.clock, metrics: cfg.Metrics}
	p.live = newLiveness(store, cfg, busy, p.holdUntil)
	return b, p.live, p
}

// grant is one take's sends.
type grant struct {
	lim    *rate.Limiter
	start  time.Time     // when the limiter's burst is due (in the past when the bucket was full)
	notBef time.Time     // the latest the database's clock can have been read: no send goes before its time from here
	early  time.Duration // how much earlier the database's clock may have been read than notBef
	late   time.Duration // how late after its time a send may still go out
	left   int
}

func newGrant(t taken) *grant {
	burst := 1 // the sends due at once: those whose time is not after the database's clock
	if t.First < 0 && t.Every > 0 {
		burst = int(-t.First/t.Every) + 1
	}
	burst = max(1, min(burst, t.N))
	late := lateSend
	if t.Lateness > lateSend+lateKnot {
		late = t.Lateness - lateKnot // a deep bucket allows more
	}
	return &grant{
		lim:    rate.NewLimiter(rate.Every(t.Every), burst),
		start:  t.to.Add(t.First + time.Duration(burst-1)*t.Every),
		notBef: t.to,
		early:  t.to.Sub(t.from),
		late:   late,
		left:   t.N,
	}
}

// next takes the grant's next send: when it is due on this replica's clock, never before the
// database's time, and the latest it may go out, the grant's lateness after the earliest the
// database's time can be.
func (g *grant) next() send {
	g.left--
	r := g.lim.ReserveN(g.start, 1)
	at := g.start.Add(r.DelayFrom(g.start))
	if at.Before(g.notBef) {
		at = g.notBef
	}
	return send{at: at, useBy: at.Add(g.late - g.early)}
}

// send is one send taken from a grant: due at at, and given up if it cannot go by useBy.
type send struct{ at, useBy time.Time }

// errTooLate is returned by wait when a call could not go out by its deadline: the claim
// goes back unsent rather than outlive its lease.
type errTooLate struct {
	why  string
	hold time.Duration // what remains of a Retry-After hold, if that is the reason
}

func (e *errTooLate) Error() string { return e.why }

// asTooLate reports whether err is wait's errTooLate, and returns it.
func asTooLate(err error) (*errTooLate, bool) {
	var tl *errTooLate
	ok := errors.As(err, &tl)
	return tl, ok
}

const errLeaseShort = "the rate limit cannot send it before the lease runs short"

// holdRemaining is how long a Retry-After still holds every call.
func (p *pacer) holdRemaining() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.notUntil.Sub(p.now()), 0)
}

// holdUntil holds every call until then, and drops the sends held: they were taken at a rate
// Knot has just refused.
func (p *pacer) holdUntil(until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if until.After(p.notUntil) {
		p.notUntil = until
		p.grants = nil
	}
}

// sendable is how many calls this replica expects to send within window from now: the sends
// it holds plus what its share adds. Claiming more than that would leave claims waiting past
// their leases.
func (p *pacer) sendable(window time.Duration) float64 {
	share := p.live.currentShare()
	p.mu.Lock()
	defer p.mu.Unlock()
	if hold := p.notUntil.Sub(p.now()); hold > 0 {
		window -= hold
	}
	if window <= 0 || share <= 0 {
		return 0
	}
	held := 0
	for _, g := range p.grants {
		held += g.left
	}
	return float64(held) + share*window.Seconds()
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
func (p *pacer) step(now, by time.Time) waitStep {
	beaten, firstBeat := p.live.hasBeaten()
	p.mu.Lock()
	defer p.mu.Unlock()
	if hold := p.notUntil.Sub(now); hold > 0 {
		if p.notUntil.After(by) {
			return waitStep{err: &errTooLate{why: "a Retry-After hold outlasts the lease", hold: hold}}
		}
		return waitStep{sleep: hold}
	}
	for len(p.grants) > 0 {
		g := p.grants[0]
		if g.left == 0 {
			p.grants = p.grants[1:]
			continue
		}
		s := g.next()
		if now.After(s.useBy) {
			p.metrics.SendsGivenUp.Inc() // due while no call could take it
			continue
		}
		if s.at.After(by) {
			return waitStep{err: &errTooLate{why: errLeaseShort}}
		}
		return waitStep{send: &s}
	}
	switch {
	case !beaten:
		return waitStep{answer: firstBeat}
	case p.taking != nil:
		return waitStep{answer: p.taking}
	case p.nextTake.After(by):
		return waitStep{err: &errTooLate{why: errLeaseShort}}
	case p.nextTake.After(now):
		return waitStep{sleep: p.nextTake.Sub(now)}
	}
	p.taking = make(chan struct{})
	return waitStep{take: true}
}

// wait blocks until a call may go out: no Retry-After holds, and a send granted by the
// deployment's bucket is due. It returns an *errTooLate when that cannot happen by by, and
// ctx's error when ctx ends first.
func (p *pacer) wait(ctx context.Context, by time.Time) error {
	start := p.now()
	defer func() { p.metrics.RateLimitWait.Observe(p.now().Sub(start).Seconds()) }()
	p.mu.Lock()
	p.waiting++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.waiting--
		p.mu.Unlock()
	}()
	for {
		now := p.now()
		s := p.step(now, by)
		switch {
		case s.err != nil:
			return s.err
		case s.send != nil:
			if err := sleep(ctx, s.send.at.Sub(now)); err != nil {
				return err
			}
			if !p.now().After(s.send.useBy) {
				p.mu.Lock()
				p.used++
				p.mu.Unlock()
				return nil
			}
			p.metrics.SendsGivenUp.Inc() // woke too late to use it: look again
		case s.take:
			p.take(ctx)
		case s.answer != nil:
			t := time.NewTimer(max(by.Sub(now), 0))
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-s.answer:
				t.Stop()
			case <-t.C:
				return &errTooLate{why: errLeaseShort}
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
func (p *pacer) take(ctx context.Context) {
	p.mu.Lock()
	want := p.waiting + p.used
	p.used = 0
	// Sends due before the answer is back lose the trip from their lateness. Where the trip is
	// short beside lateSend that costs nothing, and a lead would make every take wait a trip.
	var lead time.Duration
	if 2*p.trip > lateSend {
		lead = min(p.trip, p.bucket.horizon/2)
	}
	p.mu.Unlock()

	t := p.bucket.take(ctx, want, lead)

	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.taking)
	p.taking = nil
	p.trip = t.arrived.Sub(t.asked)
	if t.err != nil || !t.ok {
		p.nextTake = t.arrived.Add(p.bucket.horizon) // unreachable, or no heartbeat has made the bucket yet
		return
	}
	if until := t.arrived.Add(t.Hold); t.Hold > 0 && until.After(p.notUntil) {
		p.notUntil = until
	}
	if t.N > 0 {
		p.grants = append(p.grants, newGrant(t))
	}
	p.nextTake = time.Time{}
	if t.N == 0 && t.Hold == 0 {
		// Taken up to the horizon: the next send can be due in time once the bucket drains by
		// what is left beyond it.
		p.nextTake = t.arrived.Add(max(t.First-p.bucket.horizon, t.Every/2, time.Millisecond))
	}
}

// slowDown is told that Knot answered 429 with retryAfter: hold every call until then, drop
// the sends this replica holds, and tell the deployment, whose bucket halves its rate.
func (p *pacer) slowDown(retryAfter time.Duration) {
	p.holdUntil(p.now().Add(retryAfter))
	p.live.slowDown()
	p.bucket.tell(retryAfter)
}
