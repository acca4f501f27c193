// Package worker is the policy of erasure-worker: it claims erasure requests from the queue,
// waits on the rate limit, calls Knot, and turns each answer into a queue transition, following
// the request's life in DESIGN.md. It is the one place where a Knot result becomes a queue
// transition.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
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

// Config is the worker's policy. New fills zero fields with the defaults below.
type Config struct {
	// ID names this worker as lease owner and in erasure_attempts. Unique per process.
	ID string
	// Concurrency is how many Knot calls may be in flight at once; 0 sizes it automatically
	// from this replica's share of the rate and Knot's observed latency.
	Concurrency int
	// RateLimit is the most calls per second for the whole deployment, shared by the replicas
	// through the database; Burst how many may go at once after a lull, likewise shared.
	RateLimit float64
	Burst     int
	// RateSyncInterval is how often the replica renews its share of the rate limit. A replica
	// that misses two renewals sends nothing until it renews again.
	RateSyncInterval time.Duration
	// LeaseDuration is how long a claim is held before any replica may recover it. It must
	// cover the calls made for one claim: QuickRetries calls of up to CallTimeout each.
	LeaseDuration time.Duration
	// MaxAttempts is how many claims a request gets for retryable errors before it fails.
	MaxAttempts int
	// CallTimeout is the Knot client's timeout; the worker sends no call that its lease could
	// not cover.
	CallTimeout time.Duration
	// QuickRetries is how many calls one claim may make for retryable errors, spaced by
	// QuickBackoff growing exponentially, before the request goes back to the table.
	QuickRetries int
	QuickBackoff time.Duration
	// RetryMinBackoff and RetryMaxBackoff bound the wait, written to run_after, before a
	// request whose quick retries all failed is claimed again. It doubles with each attempt.
	RetryMinBackoff time.Duration
	RetryMaxBackoff time.Duration
	// MaxRetryAfter caps how long a 429's Retry-After holds a request back.
	MaxRetryAfter time.Duration
	// PollInterval is how often an idle worker looks for work when no notification came.
	PollInterval time.Duration
	// RecoverInterval is how often expired leases are recovered.
	RecoverInterval time.Duration
	// StatsInterval is how often the queue gauges are read.
	StatsInterval time.Duration
	// PauseProbeInterval is how often a paused worker tries one request to see whether the
	// credentials work again.
	PauseProbeInterval time.Duration
	// ShutdownTimeout bounds Run's return after its context ends: in-flight calls get most of
	// it to finish, then are cancelled, and every result is recorded.
	ShutdownTimeout time.Duration
	// DisableListen turns off LISTEN/NOTIFY: the worker polls only.
	DisableListen bool
	// BeforeProbe runs before each probe of a paused worker, e.g. to re-read a rotated secret.
	BeforeProbe func(ctx context.Context)

	Logger  *slog.Logger
	Metrics *Metrics
}

// Defaults for Config's zero fields.
const (
	DefaultRateLimit          = 10
	DefaultLeaseDuration      = 2 * time.Minute
	DefaultMaxAttempts        = 30
	DefaultCallTimeout        = 10 * time.Second
	DefaultQuickRetries       = 3
	DefaultQuickBackoff       = 200 * time.Millisecond
	DefaultRetryMinBackoff    = 30 * time.Second
	DefaultRetryMaxBackoff    = time.Hour
	DefaultMaxRetryAfter      = 10 * time.Minute
	DefaultPollInterval       = 2 * time.Second
	DefaultStatsInterval      = 15 * time.Second
	DefaultRateSyncInterval   = time.Second
	DefaultPauseProbeInterval = 30 * time.Second
	DefaultShutdownTimeout    = 30 * time.Second
)

func (c *Config) setDefaults() {
	def := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	if c.RateLimit == 0 {
		c.RateLimit = DefaultRateLimit
	}
	if c.Burst == 0 {
		c.Burst = max(1, int(c.RateLimit/10))
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.QuickRetries == 0 {
		c.QuickRetries = DefaultQuickRetries
	}
	def(&c.LeaseDuration, DefaultLeaseDuration)
	def(&c.CallTimeout, DefaultCallTimeout)
	def(&c.QuickBackoff, DefaultQuickBackoff)
	def(&c.RetryMinBackoff, DefaultRetryMinBackoff)
	def(&c.RetryMaxBackoff, DefaultRetryMaxBackoff)
	def(&c.MaxRetryAfter, DefaultMaxRetryAfter)
	def(&c.PollInterval, DefaultPollInterval)
	def(&c.RecoverInterval, max(c.LeaseDuration/4, time.Second))
	def(&c.StatsInterval, DefaultStatsInterval)
	def(&c.RateSyncInterval, DefaultRateSyncInterval)
	def(&c.PauseProbeInterval, DefaultPauseProbeInterval)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
}

// Validate reports the first setting that cannot work, naming it as the environment does.
// Zero fields are checked as the defaults New would give them.
func (c Config) Validate() error {
	c.setDefaults()
	switch {
	case c.ID == "":
		return errors.New("worker ID is empty")
	case c.Concurrency < 0:
		return fmt.Errorf("CONCURRENCY must be auto or at least 1, got %d", c.Concurrency)
	case c.RateLimit <= 0:
		return fmt.Errorf("RATE_LIMIT_RPS must be above 0, got %g", c.RateLimit)
	case c.Burst < 1:
		return fmt.Errorf("RATE_LIMIT_BURST must be at least 1, got %d", c.Burst)
	case c.MaxAttempts < 1:
		return fmt.Errorf("MAX_ATTEMPTS must be at least 1, got %d", c.MaxAttempts)
	case c.RetryMaxBackoff < c.RetryMinBackoff:
		return fmt.Errorf("RETRY_MAX_BACKOFF (%v) is shorter than RETRY_MIN_BACKOFF (%v)", c.RetryMaxBackoff, c.RetryMinBackoff)
	case c.LeaseDuration < c.claimBudget():
		return fmt.Errorf("LEASE_DURATION (%v) is too short: one claim may take %v (%d quick tries of up to KNOT_TIMEOUT %v, and their backoff); raise LEASE_DURATION",
			c.LeaseDuration, c.claimBudget(), c.QuickRetries, c.CallTimeout)
	case c.ShutdownTimeout < time.Second:
		return fmt.Errorf("SHUTDOWN_TIMEOUT must be at least 1s, got %v", c.ShutdownTimeout)
	}
	return nil
}

// claimBudget is the longest one claim's calls may take, with slack for the rate limit.
func (c Config) claimBudget() time.Duration {
	backoff := time.Duration(0)
	for i := range c.QuickRetries - 1 {
		backoff += c.QuickBackoff << i
	}
	return time.Duration(c.QuickRetries)*c.CallTimeout + backoff + time.Second
}

// Worker carries out erasure requests. Create it with New and run it with Run.
type Worker struct {
	cfg     Config
	q       *queue.Queue
	knot    Knot
	log     *slog.Logger
	metrics *Metrics
	limiter *limiter

	slots   chan struct{} // one token per call that may be in flight
	wake    chan struct{} // new work may be claimable
	results chan queue.Result

	paused    atomic.Bool
	pauseOnce sync.Mutex // serialises the pause/resume log lines
	lastLoop  atomic.Int64
	lastWork  atomic.Int64 // when a claim last returned work
	latency   latencyEWMA
}

// New returns a worker that claims from q and calls knot. Zero fields of cfg take defaults;
// New fails if the result does not validate.
func New(q *queue.Queue, knot Knot, cfg Config) (*Worker, error) {
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
	}
	w.limiter = newLimiter(q, cfg, w.busy)
	w.lastLoop.Store(time.Now().UnixNano())
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

// Run claims and carries out requests until ctx ends, then shuts down within ShutdownTimeout:
// it stops claiming, lets calls in flight finish (cancelling them if they outlast most of the
// timeout), releases claims never sent, records every result and returns. It returns nil after
// a clean shutdown.
func (w *Worker) Run(ctx context.Context) error {
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
	if !w.cfg.DisableListen {
		background.Go(func() { w.listen(bgCtx) })
	}
	background.Go(func() { w.every(bgCtx, w.cfg.RecoverInterval, w.recoverExpired) })
	background.Go(func() { w.every(bgCtx, w.cfg.StatsInterval, w.readStats) })
	background.Go(func() { w.limiter.run(bgCtx) })

	recorderDone := make(chan struct{})
	go func() {
		defer close(recorderDone)
		w.record(recordCtx)
	}()

	var calls sync.WaitGroup
	w.claimLoop(sendCtx, callCtx, &calls)

	// Shutdown.
	stopBackground()
	// Everything fits in ShutdownTimeout: calls in flight get all but its last fifth (at most
	// 5s), which is kept for writing their results and leaving the rate limit; the caller keeps
	// a last quarter second for its metrics server.
	start := time.Now()
	deadline := start.Add(w.cfg.ShutdownTimeout - 250*time.Millisecond)
	drainUntil := deadline.Add(-min(w.cfg.ShutdownTimeout/5, 5*time.Second))
	w.log.Info("shutting down: no new claims; waiting for calls in flight", "inflight", len(w.slots), "timeout", w.cfg.ShutdownTimeout)
	drained := make(chan struct{})
	go func() { calls.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(time.Until(drainUntil)):
		w.log.Warn("calls still in flight at the shutdown deadline: cancelling them; they will be retried", "inflight", len(w.slots))
		cancelCalls()
		<-drained
	}
	close(w.results)
	select {
	case <-recorderDone:
	case <-time.After(time.Until(deadline.Add(-200 * time.Millisecond))):
		cancelRecord()
		<-recorderDone
	}
	background.Wait()
	w.limiter.leave(deadline)
	w.log.Info("worker stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// claimLoop keeps a small buffer of claimed requests, refilled in batches so that one claim
// serves many calls, and starts a call for each as a slot frees, until sendCtx ends. Claims it
// holds unsent at the end, or when the worker pauses, go back at once without spending an
// attempt.
func (w *Worker) claimLoop(sendCtx, callCtx context.Context, calls *sync.WaitGroup) {
	poll := time.NewTimer(0)
	defer poll.Stop()
	var (
		ready      []queue.Job // claimed, waiting for a slot
		dbFailures int
		lastProbe  time.Time
	)
	defer func() { w.giveBackUnsent(ready) }()
	// claim fetches up to n requests; false means the database failed and the loop backs off.
	claim := func(n int) ([]queue.Job, bool) {
		jobs, err := w.claim(sendCtx, n)
		if err != nil {
			if sendCtx.Err() == nil {
				dbFailures++
				wait := dbBackoff(dbFailures)
				w.log.Error("claim failed; retrying", "err", err, "retry_in", wait)
				sleep(sendCtx, wait)
			}
			return nil, false
		}
		if dbFailures > 0 {
			w.log.Info("database answering again", "after_failures", dbFailures)
			dbFailures = 0
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
		if w.paused.Load() {
			// Only a probe goes out while paused: one request, every PauseProbeInterval, and
			// only when nothing else is in flight.
			w.giveBackUnsent(ready)
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
		} else {
			for len(ready) > 0 && len(w.slots) < w.inflightCap() {
				w.dispatch(sendCtx, callCtx, calls, ready[0], false)
				ready = ready[1:]
			}
			if target := w.prefetch(); len(ready) <= target/2 {
				jobs, ok := claim(target - len(ready))
				if !ok {
					continue
				}
				if len(jobs) > 0 {
					ready = append(ready, jobs...)
					continue // start them, and claim again if the batch left the buffer low
				}
			}
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		wait := w.cfg.PollInterval
		if w.paused.Load() {
			wait = min(wait, w.cfg.PauseProbeInterval)
		}
		poll.Reset(wait)
		select {
		case <-sendCtx.Done():
			return
		case <-w.wake:
		case <-poll.C:
		}
	}
}

func (w *Worker) dispatch(sendCtx, callCtx context.Context, calls *sync.WaitGroup, job queue.Job, probe bool) {
	w.slots <- struct{}{}
	w.metrics.Inflight.Set(float64(len(w.slots)))
	calls.Go(func() { w.carryOut(sendCtx, callCtx, job, probe) })
}

// giveBackUnsent releases claims that were never sent, through the recorder, which writes
// them in one statement with whatever else it holds.
func (w *Worker) giveBackUnsent(jobs []queue.Job) {
	for _, j := range jobs {
		w.results <- queue.Result{ID: j.ID, Attempt: j.Attempt, Transition: queue.Release}
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
// half as much again for the latency's swings.
func (w *Worker) inflightCap() int {
	if w.cfg.Concurrency > 0 {
		return w.cfg.Concurrency
	}
	n := int(math.Ceil(w.limiter.currentShare()*w.latency.seconds()*1.5)) + 2
	return min(max(n, minAutoConcurrency), maxAutoConcurrency)
}

// prefetch is how many claims to hold: enough for the slots and about a second of calls at
// this replica's share, so that a claim is one statement for many requests and none waits in
// the buffer long enough to matter to its lease.
func (w *Worker) prefetch() int {
	perSecond := int(math.Ceil(w.limiter.currentShare()))
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
	sent := time.Now()
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

// record writes results to the queue in batches.
func (w *Worker) record(ctx context.Context) {
	const (
		maxBatch = 512
		// linger is how long the first result of a batch waits for company: under load one
		// statement then finishes many requests; idle, a result is written 20ms later.
		linger = 20 * time.Millisecond
	)
	batch := make([]queue.Result, 0, maxBatch)
	for first := range w.results {
		batch = append(batch[:0], first)
		timer := time.NewTimer(linger)
	more:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-w.results:
				if !ok {
					break more
				}
				batch = append(batch, r)
			case <-timer.C:
				break more
			}
		}
		timer.Stop()
		w.finish(ctx, batch)
	}
}

// finish records one batch, retrying while the database is away: the results are the only
// record of calls already made. It gives up only when ctx ends (shutdown past its deadline);
// the leases then expire and the requests run again, which is harmless.
func (w *Worker) finish(ctx context.Context, batch []queue.Result) {
	for failures := 1; ; failures++ {
		finish := w.q.Finish
		if failures > 1 {
			// The failed try may have committed with only its answer lost.
			finish = w.q.FinishAgain
		}
		applied, err := finish(ctx, w.cfg.ID, batch)
		if err == nil {
			w.countApplied(batch, applied)
			return
		}
		if ctx.Err() != nil {
			w.log.Error("could not record results before shutdown; their leases will expire and they will run again",
				"requests", len(batch), "err", err)
			return
		}
		wait := dbBackoff(failures)
		w.log.Error("recording results failed; retrying", "requests", len(batch), "err", err, "retry_in", wait)
		sleep(ctx, wait)
	}
}

func (w *Worker) countApplied(batch []queue.Result, applied []int64) {
	ok := make(map[int64]bool, len(applied))
	for _, id := range applied {
		ok[id] = true
	}
	for _, r := range batch {
		if !ok[r.ID] {
			w.log.Warn("result not recorded: the lease was lost (expired and taken over); the request runs again elsewhere",
				"request_id", r.ID, "attempt", r.Attempt, "transition", r.Transition.String())
			continue
		}
		if r.Transition == queue.Succeed || r.Transition == queue.Fail {
			w.metrics.Completed.WithLabelValues(r.Outcome).Inc()
		}
	}
}

func (w *Worker) recoverExpired(ctx context.Context) {
	rec, err := w.q.RecoverExpired(ctx, w.cfg.MaxAttempts)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("lease recovery failed", "err", err)
		}
		return
	}
	if rec.Requeued > 0 || rec.Exhausted > 0 {
		w.log.Warn("recovered requests whose lease expired (a worker stopped mid-call)",
			"requeued", rec.Requeued, "failed_exhausted", rec.Exhausted)
		w.metrics.Completed.WithLabelValues(queue.OutcomeExhausted).Add(float64(rec.Exhausted))
		w.nudge()
	}
}

func (w *Worker) readStats(ctx context.Context) {
	s, err := w.q.Stats(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("reading queue stats failed", "err", err)
		}
		return
	}
	w.metrics.setStats(s)
}

// listen wakes the claim loop on notifications, reconnecting with backoff when the connection
// drops. The poll covers whatever arrives while it is down.
func (w *Worker) listen(ctx context.Context) {
	for failures := 0; ; {
		err := w.q.Listen(ctx, func() { failures = 0 }, w.nudge)
		if ctx.Err() != nil {
			return
		}
		failures++
		wait := dbBackoff(failures)
		w.log.Warn("LISTEN connection lost; polling until it is back", "err", err, "retry_in", wait)
		w.nudge() // a notification may have been lost with the connection
		sleep(ctx, wait)
	}
}

// every runs f now and then every interval until ctx ends.
func (w *Worker) every(ctx context.Context, interval time.Duration, f func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		f(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dbBackoff is the wait after n consecutive database failures: 250ms doubling to 10s, jittered.
func dbBackoff(n int) time.Duration {
	d := 250 * time.Millisecond << min(n-1, 6)
	return jitter(min(d, 10*time.Second))
}

// jitter spreads d over [d/2, d) so that replicas and requests that failed together do not
// come back together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
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
