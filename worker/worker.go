// Package worker is the policy of erasure-worker: it claims erasure requests from the queue,
// waits on the rate limit, calls Knot, and turns each answer into a queue transition, following
// the request's life in DESIGN.md. It is the one place where a Knot result becomes a queue
// transition.
//
// A Worker is a few loops, each in its own file with one owner, Run, that starts and waits for
// it (as River splits producer, completer, rescuer and notifier):
//
//	claimer.go      the claim loop: claims in batches into a small buffer, starts a call per slot
//	call.go         one claim's calls to Knot and what each answer means; pause on 401
//	recorder.go     writes results in batches, fenced; splits a batch the database refuses
//	bucket.go       the deployment's rate limit: who decides what, and the takes from its bucket
//	pacer.go        when each granted call goes out, with a rate.Limiter per grant
//	liveness.go     the heartbeat: this replica counted live, its share, its claims' safety
//	maintenance.go  takes back claims of gone replicas, reads the queue gauges, LISTEN
package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/queue"
)

// Knot is the one call the worker makes; *knotclient.Client implements it.
type Knot interface {
	DeleteUser(ctx context.Context, externalUserID string) (knotclient.Result, error)
}

// Queue is what the worker asks of the queue; *queue.Queue implements it.
type Queue interface {
	Claim(ctx context.Context, owner string, limit int, leaseFor time.Duration) ([]queue.Job, error)
	Finish(ctx context.Context, owner string, results []queue.Result) ([]int64, error)
	FinishAgain(ctx context.Context, owner string, results []queue.Result) ([]int64, error)
	RecoverExpired(ctx context.Context, self string, maxAttempts int) (queue.Recovered, error)
	Stats(ctx context.Context) (queue.Stats, error)
	Listen(ctx context.Context, ready, wake func()) error
	rateStore
}

// Worker carries out erasure requests. Create it with New and run it with Run.
type Worker struct {
	cfg     Config
	q       Queue
	knot    Knot
	log     *slog.Logger
	metrics *Metrics
	bucket  *bucket
	live    *liveness
	pacer   *pacer

	slots   chan struct{} // one token per call that may be in flight
	wake    chan struct{} // new work may be claimable
	results chan queue.Result

	paused   atomic.Bool
	pauseMu  sync.Mutex // serialises the pause/resume log lines
	lastLoop atomic.Int64
	lastWork atomic.Int64 // when a claim last returned work
	latency  latencyEWMA

	started     chan struct{} // closed by markStarted: the first call is out, or there is no work
	startedOnce sync.Once
}

// startupGrace bounds how long LISTEN, recovery and the gauges wait for the first call.
const startupGrace = time.Second

// markStarted ends start-up: the background loops may take connections of their own.
func (w *Worker) markStarted() {
	w.startedOnce.Do(func() {
		close(w.started)
		w.nudge() // the claim loop held back its claims until now
	})
}

func (w *Worker) hasStarted() bool {
	select {
	case <-w.started:
		return true
	default:
		return false
	}
}

// New returns a worker that claims from q and calls knot. Zero fields of cfg take defaults;
// New fails if the result does not validate.
func New(q Queue, knot Knot, cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	w := &Worker{
		cfg:     cfg,
		q:       q,
		knot:    knot,
		log:     cfg.Logger.With("worker", cfg.ID),
		metrics: cfg.Metrics,
		slots:   make(chan struct{}, max(cfg.Concurrency, maxAutoConcurrency)),
		wake:    make(chan struct{}, 1),
		results: make(chan queue.Result, maxPrefetch+maxAutoConcurrency),
		started: make(chan struct{}),
	}
	w.bucket, w.live, w.pacer = newRateLimit(q, cfg, w.busy)
	w.live.paused = w.paused.Load
	w.lastLoop.Store(cfg.clock().UnixNano())
	return w, nil
}

// Alive reports an error when the claim loop has not turned for a while: /healthz.
func (w *Worker) Alive() error {
	since := time.Since(time.Unix(0, w.lastLoop.Load()))
	if limit := max(3*w.cfg.PollInterval, 30*time.Second); since > limit {
		return fmt.Errorf("claim loop has not run for %v", since.Round(time.Second))
	}
	return nil
}

// busy says whether this replica has work: calls in flight, or a claim that found some lately.
// Its share of the deployment's rate follows: an idle replica holds almost none.
func (w *Worker) busy() bool {
	return len(w.slots) > 0 || time.Since(time.Unix(0, w.lastWork.Load())) < 2*w.cfg.RateSyncInterval
}

// Paused reports whether Knot rejected the credentials and claiming is paused.
func (w *Worker) Paused() bool { return w.paused.Load() }

// Run claims and carries out requests until ctx ends, then shuts down within ShutdownTimeout
// less AfterRunReserve: it stops claiming, lets calls in flight finish (cancelling them if they
// outlast most of the timeout), releases claims never sent, records every result and returns.
func (w *Worker) Run(ctx context.Context) {
	w.log.Info("worker starting",
		"concurrency", w.cfg.Concurrency, "rate_limit_rps", w.cfg.RateLimit, "burst", w.cfg.Burst,
		"lease", w.cfg.LeaseDuration, "max_attempts", w.cfg.MaxAttempts)

	// sendCtx ends when shutdown starts: no new call is sent after it. callCtx ends later, when
	// calls in flight have had their share of the shutdown timeout.
	sendCtx := ctx
	callCtx, cancelCalls := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelCalls()
	// Recording outlives the calls so that the results of cancelled calls are kept too.
	recordCtx, cancelRecord := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRecord()

	var background sync.WaitGroup
	bgCtx, stopBackground := context.WithCancel(ctx)
	background.Go(func() { w.live.run(bgCtx) })
	background.Go(func() { w.bucket.run(bgCtx) })
	// A lone replica's first call goes first: the heartbeat, a claim and a take, on the
	// connection the schema check left open. LISTEN, recovery and the gauges start once that
	// call is out, or once there is nothing to claim, or after startupGrace, so that their
	// connections and queries do not delay it; the claim loop polls as it starts, so no
	// notification is missed meanwhile.
	background.Go(func() {
		select {
		case <-bgCtx.Done():
			return
		case <-w.started:
		case <-time.After(startupGrace):
		}
		if !w.cfg.DisableListen {
			background.Go(func() { w.listen(bgCtx) })
		}
		background.Go(func() { every(bgCtx, w.cfg.RecoverInterval, w.recoverClaims) })
		background.Go(func() { every(bgCtx, w.cfg.StatsInterval, w.readStats) })
	})

	recorderDone := make(chan struct{})
	go func() {
		defer close(recorderDone)
		w.record(recordCtx)
	}()

	var calls sync.WaitGroup
	w.claimLoop(sendCtx, callCtx, &calls)

	// Shutdown.
	stopBackground()
	start := time.Now()
	plan := w.cfg.shutdownPlan(start)
	w.log.Info("shutting down: no new claims; waiting for calls in flight", "inflight", len(w.slots), "timeout", w.cfg.ShutdownTimeout)
	drained := make(chan struct{})
	go func() { calls.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(time.Until(plan.drainUntil)):
		w.log.Warn("calls still in flight at the shutdown deadline: cancelling them; they will be retried", "inflight", len(w.slots))
		cancelCalls()
		<-drained
	}
	close(w.results)
	select {
	case <-recorderDone:
	case <-time.After(time.Until(plan.recordUntil)):
		cancelRecord()
		<-recorderDone
	}
	background.Wait()
	w.live.leave(plan.leaveBy)
	w.log.Info("worker stopped", "took", time.Since(start).Round(time.Millisecond))
}
