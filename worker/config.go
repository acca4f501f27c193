package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

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
	// RateSyncInterval is how often the replica heartbeats (its row lasts three); it takes its
	// sends from the deployment's bucket a quarter of it ahead, 250ms at most.
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
	// RecoverInterval is how often claims of replicas gone silent, and expired leases, are
	// taken back.
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

	// clock is time.Now but in the package's own tests.
	clock func() time.Time
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
	// DefaultRecoverInterval is how often, at most, a replica looks for claims to take back:
	// a killed replica's requests run again within a heartbeat TTL plus this.
	DefaultRecoverInterval = 2 * time.Second
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
	def(&c.RecoverInterval, min(DefaultRecoverInterval, max(c.LeaseDuration/4, 100*time.Millisecond)))
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
	if c.clock == nil {
		c.clock = time.Now
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

// sendMargin is how much of its lease a claim must have left for a call to go out: the call's
// timeout, and a second for recording its result.
func (c Config) sendMargin() time.Duration { return c.CallTimeout + time.Second }

// sendWindow is how long after a claim its first call may still go out.
func (c Config) sendWindow() time.Duration { return c.LeaseDuration - c.sendMargin() }

// claimBudget is the longest one claim's calls may take, with slack for the rate limit.
func (c Config) claimBudget() time.Duration {
	backoff := time.Duration(0)
	for i := range c.QuickRetries - 1 {
		backoff += c.QuickBackoff << i
	}
	return time.Duration(c.QuickRetries)*c.CallTimeout + backoff + time.Second
}

// The shutdown budget: everything Run does after its context ends fits in ShutdownTimeout, less
// AfterRunReserve, which is the caller's (to close its metrics server). Calls in flight get all
// but the last fifth (at most 5s) of the rest; that is kept for recording their results and
// leaving the rate limit.
const AfterRunReserve = 250 * time.Millisecond

type shutdownPlan struct {
	drainUntil  time.Time // calls still in flight then are cancelled
	recordUntil time.Time // results not recorded by then are left to lease recovery
	leaveBy     time.Time // the rate limit row is left by then
}

func (c Config) shutdownPlan(start time.Time) shutdownPlan {
	deadline := start.Add(c.ShutdownTimeout - AfterRunReserve)
	return shutdownPlan{
		drainUntil:  deadline.Add(-min(c.ShutdownTimeout/5, 5*time.Second)),
		recordUntil: deadline.Add(-200 * time.Millisecond),
		leaveBy:     deadline,
	}
}
