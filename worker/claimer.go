package worker

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// claimLoop keeps a small buffer of claimed requests, refilled in batches so that one claim
// serves many calls, and starts a call for each as a slot frees, until sendCtx ends. It claims
// no more than this replica's share can send within a lease, and nothing while a Retry-After
// holds. Claims it holds unsent at the end, or when the worker pauses, are released at once
// without spending an attempt.
func (w *Worker) claimLoop(sendCtx, callCtx context.Context, calls *sync.WaitGroup) {
	poll := time.NewTimer(0)
	defer poll.Stop()
	var (
		ready     []queue.Job // claimed, waiting for a slot
		dbBackoff = newDBBackoff()
		dbFailed  bool
		lastProbe time.Time
	)
	defer func() { w.release(ready, 0) }()
	// claim fetches up to n requests; false means the database failed and the loop backs off.
	claim := func(n int) ([]queue.Job, bool) {
		jobs, err := w.claim(sendCtx, n)
		if err != nil {
			if sendCtx.Err() == nil {
				dbFailed = true
				wait := dbBackoff.NextBackOff()
				w.log.Error("claim failed; retrying", "err", err, "retry_in", wait)
				sleep(sendCtx, wait)
			}
			return nil, false
		}
		if dbFailed {
			w.log.Info("database answering again")
			dbFailed = false
			dbBackoff.Reset()
		}
		if len(jobs) > 0 {
			w.lastWork.Store(time.Now().UnixNano())
		}
		return jobs, true
	}
	for {
		w.lastLoop.Store(time.Now().UnixNano())
		if sendCtx.Err() != nil {
			return
		}
		wait := w.cfg.PollInterval
		if w.paused.Load() {
			// Only a probe goes out while paused: one request, every PauseProbeInterval, and
			// only when nothing else is in flight.
			w.release(ready, 0)
			ready = nil
			if len(w.slots) == 0 && time.Since(lastProbe) >= w.cfg.PauseProbeInterval {
				lastProbe = time.Now()
				if w.cfg.BeforeProbe != nil {
					w.cfg.BeforeProbe(sendCtx)
				}
				jobs, ok := claim(1)
				if !ok {
					continue
				}
				for _, job := range jobs {
					w.dispatch(sendCtx, callCtx, calls, job, true)
				}
			}
			wait = min(wait, w.cfg.PauseProbeInterval)
		} else {
			for len(ready) > 0 && len(w.slots) < w.inflightCap() {
				w.dispatch(sendCtx, callCtx, calls, ready[0], false)
				ready = ready[1:]
			}
			if hold := w.pacer.holdRemaining(); hold > 0 {
				// A claim now could only wait out the hold, and the database refuses it anyway.
				wait = min(wait, hold)
			} else if n := w.claimable(len(ready)); n > 0 {
				jobs, ok := claim(n)
				if !ok {
					continue
				}
				if len(jobs) > 0 {
					ready = append(ready, jobs...)
					continue // start them, and claim again if the batch left the buffer low
				}
				if len(ready) == 0 && len(w.slots) == 0 {
					w.markStarted() // nothing to do: start-up has nothing to hurry
				}
			}
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		poll.Reset(wait)
		select {
		case <-sendCtx.Done():
			return
		case <-w.wake:
		case <-w.live.renewal():
			// The share may have grown, or come into force for the first time.
		case <-poll.C:
		}
	}
}

// claimable is how many requests to claim now, holding buffered of them already: up to the
// prefetch target once the buffer is half empty, and never more than this replica's share can
// send within a lease, counting the claims it holds in the buffer and in calls.
func (w *Worker) claimable(buffered int) int {
	target := w.prefetch()
	if buffered > target/2 {
		return 0
	}
	held := buffered + len(w.slots)
	room := int(math.Floor(w.pacer.sendable(w.cfg.sendWindow()))) - held
	n := min(target-buffered, room)
	if !w.hasStarted() {
		// Start-up: one small claim, then none until its first call is out, so that the first
		// batch is quick to write and the first take finds the connection free.
		if held > 0 {
			return 0
		}
		return min(n, startupClaim)
	}
	return n
}

// startupClaim is the most a replica claims before its first call is out.
const startupClaim = 16

func (w *Worker) dispatch(sendCtx, callCtx context.Context, calls *sync.WaitGroup, job queue.Job, probe bool) {
	w.slots <- struct{}{}
	w.metrics.Inflight.Set(float64(len(w.slots)))
	calls.Go(func() { w.carryOut(sendCtx, callCtx, job, probe) })
}

// release puts claims that were never sent back through the recorder, which writes them in one
// statement with whatever else it holds; they are claimable again after delay.
func (w *Worker) release(jobs []queue.Job, delay time.Duration) {
	for _, j := range jobs {
		r := j.Result()
		r.Transition, r.Delay = queue.Release, delay
		w.results <- r
	}
}

// Bounds of CONCURRENCY=auto, and of the claim buffer.
const (
	minAutoConcurrency = 4
	maxAutoConcurrency = 256
	maxPrefetch        = 512
)

// inflightCap is how many calls may be in flight now: CONCURRENCY, or with CONCURRENCY=auto
// what this replica's share of the rate needs at Knot's observed latency (Little's law), with
// half as much again for the latency's swings. A call holds its slot while it waits for its
// send as well, and a send that falls due with no call waiting is lost to the deployment: the
// slots also cover pacingCushion of sends waiting, enough to ride out a hiccup of this
// process or of the database.
func (w *Worker) inflightCap() int {
	if w.cfg.Concurrency > 0 {
		return w.cfg.Concurrency
	}
	return autoConcurrency(w.live.currentShare(), w.latency.seconds()+pacingCushion.Seconds())
}

// pacingCushion is how long the calls waiting for their sends last at this replica's share.
const pacingCushion = 100 * time.Millisecond

func autoConcurrency(shareRPS, latencySeconds float64) int {
	n := int(math.Ceil(shareRPS*latencySeconds*1.5)) + 2
	return min(max(n, minAutoConcurrency), maxAutoConcurrency)
}

// prefetch is how many claims to hold: enough for the slots and about a second of calls at
// this replica's share, so that a claim is one statement for many requests and none waits in
// the buffer long enough to matter to its lease.
func (w *Worker) prefetch() int {
	perSecond := int(math.Ceil(w.live.currentShare()))
	return min(max(w.inflightCap()+perSecond, 2), maxPrefetch)
}

// latencyEWMA follows how long Knot takes to answer, for CONCURRENCY=auto.
type latencyEWMA struct {
	mu  sync.Mutex
	avg float64 // seconds
}

func (l *latencyEWMA) observe(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.avg == 0 {
		l.avg = d.Seconds()
		return
	}
	l.avg = 0.9*l.avg + 0.1*d.Seconds()
}

func (l *latencyEWMA) seconds() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.avg == 0 {
		return 0.1 // until the first answer, a guess
	}
	return l.avg
}

// claim is never cancelled by shutdown: a claim abandoned mid-flight may have committed on the
// server, leaving rows running under a lease this worker does not know it holds. It is bounded
// by its own timeout instead; if that expires, the lease does what it is for.
//
// The lease is judged by this process's clock, from just before the claim was sent: the
// database's lease_expires_at is on the database's clock, and a worker whose clock ran ahead
// would otherwise think every fresh lease already spent.
func (w *Worker) claim(sendCtx context.Context, n int) ([]queue.Job, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(sendCtx), min(w.cfg.ShutdownTimeout/2, 10*time.Second))
	defer cancel()
	sent := w.cfg.clock()
	jobs, err := w.q.Claim(ctx, w.cfg.ID, n, w.cfg.LeaseDuration)
	for i := range jobs {
		jobs[i].LeaseExpiresAt = sent.Add(w.cfg.LeaseDuration)
	}
	return jobs, err
}

// slotFreed returns a call's slot and nudges the claim loop, which may be waiting for room.
func (w *Worker) slotFreed() {
	<-w.slots
	w.metrics.Inflight.Set(float64(len(w.slots)))
	w.nudge()
}

func (w *Worker) nudge() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
