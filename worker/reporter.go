package worker

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
)

// ReportQueue is what the reporter needs of the queue.
type ReportQueue interface {
	ClaimReports(ctx context.Context, owner string, limit int, leaseFor time.Duration, skip []string) ([]queue.Report, error)
	FinishReports(ctx context.Context, owner string, results []queue.ReportResult) ([]int64, error)
	ReleaseReports(ctx context.Context, owner string, reports []queue.Report) error
	ReportStats(ctx context.Context) (queue.ReportStats, error)
}

// Defaults of the reporter.
const (
	DefaultReportPollInterval  = time.Second
	DefaultReportTimeout       = 10 * time.Second
	DefaultReportConcurrency   = 8
	DefaultReportMinBackoff    = time.Second
	DefaultReportMaxBackoff    = 5 * time.Minute
	DefaultReportProbeInterval = 30 * time.Second
)

// reportStopGrace is how long deliveries in flight may finish once the reporter is stopped.
const reportStopGrace = 2 * time.Second

// ReporterConfig configures a Reporter. Zero fields take the defaults above.
type ReporterConfig struct {
	ID string // the replica's id, as the worker's: the lease owner and the evidence's worker
	// Deliverers maps each enabled connector to its Deliverer. Reports of other connectors
	// wait in the table until their connector is configured.
	Deliverers    map[string]connector.Deliverer
	PollInterval  time.Duration
	Timeout       time.Duration // of one delivery; the lease is three of these
	Concurrency   int
	MinBackoff    time.Duration // after a report's first failed attempt; doubles per attempt
	MaxBackoff    time.Duration
	ProbeInterval time.Duration // how often a paused connector is tried with one report
	StatsInterval time.Duration // how often the report gauges are read
	Logger        *slog.Logger
	Metrics       *ReportMetrics // nil: unregistered metrics
}

func (c *ReporterConfig) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PollInterval, DefaultReportPollInterval)
	def(&c.Timeout, DefaultReportTimeout)
	def(&c.MinBackoff, DefaultReportMinBackoff)
	def(&c.MaxBackoff, DefaultReportMaxBackoff)
	def(&c.ProbeInterval, DefaultReportProbeInterval)
	def(&c.StatsInterval, DefaultStatsInterval)
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultReportConcurrency
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewReportMetrics(nil)
	}
}

// Reporter delivers the outbox: it claims deliverable reports, delivers each through its
// connector, and records every attempt, retrying with backoff and jitter on a schedule kept
// in the table. A connector whose receiver refuses our credentials (401) is paused: one report
// is tried every ProbeInterval until one is taken.
type Reporter struct {
	cfg ReporterConfig
	q   ReportQueue
	log *slog.Logger
	m   *ReportMetrics

	pace map[string]*rate.Limiter // connector → its receiver's published limit, for Paced ones

	mu        sync.Mutex
	paused    map[string]time.Time // connector → when it may be probed next
	dbFailing bool
}

// NewReporter returns a reporter over q.
func NewReporter(q ReportQueue, cfg ReporterConfig) *Reporter {
	cfg.setDefaults()
	r := &Reporter{cfg: cfg, q: q, log: cfg.Logger.With("worker", cfg.ID), m: cfg.Metrics,
		pace: map[string]*rate.Limiter{}, paused: map[string]time.Time{}}
	for c, d := range cfg.Deliverers {
		if p, ok := d.(connector.Paced); ok {
			r.pace[c] = rate.NewLimiter(p.Pace())
		}
	}
	return r
}

// Run delivers reports until ctx ends, then waits for deliveries in flight (each bounded by
// Timeout), records them, and gives back claims it did not send.
func (r *Reporter) Run(ctx context.Context) {
	if len(r.cfg.Deliverers) == 0 {
		return
	}
	var bg sync.WaitGroup
	bg.Go(func() { every(ctx, r.cfg.StatsInterval, r.readStats) })
	defer bg.Wait()

	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := r.round(ctx)
		wait := r.cfg.PollInterval
		if n == r.cfg.Concurrency {
			wait = 0 // a full batch: there may be more
		}
		t.Reset(wait)
	}
}

// round claims and delivers one batch, and returns how many it claimed.
func (r *Reporter) round(ctx context.Context) int {
	lease := 3 * r.cfg.Timeout
	claimed, err := r.q.ClaimReports(ctx, r.cfg.ID, r.cfg.Concurrency, lease, r.skip(time.Now()))
	if err != nil {
		if ctx.Err() == nil && !r.dbFailing {
			r.dbFailing = true
			r.log.Error("cannot claim reports; retrying", "err", err)
		}
		return 0
	}
	if r.dbFailing {
		r.dbFailing = false
		r.log.Info("claiming reports again")
	}
	if len(claimed) == 0 {
		return 0
	}
	// A paused connector gets one report per probe, a paced one what its pace allows within a
	// delivery's timeout: give back the rest of the batch.
	claimed, back := r.probeOnly(claimed, time.Now())
	claimed, waits, over := r.paced(claimed, time.Now())
	back = append(back, over...)
	if len(back) > 0 {
		_ = r.q.ReleaseReports(context.WithoutCancel(ctx), r.cfg.ID, back)
	}
	// Deliveries outlive ctx by reportStopGrace at most, so that a hung receiver cannot hold
	// up a shutdown; one cut short is recorded as a retry and sent again.
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(reportStopGrace, cancel) })
	defer stop()
	results := make([]queue.ReportResult, len(claimed))
	var wg sync.WaitGroup
	for i, rep := range claimed {
		wg.Go(func() {
			sleep(dctx, waits[i]) // its turn in its receiver's pace; cut short, it is sent and retried as any other
			results[i] = r.deliver(dctx, rep)
		})
	}
	wg.Wait()
	r.record(ctx, results)
	return len(claimed) + len(back)
}

func (r *Reporter) deliver(ctx context.Context, rep queue.Report) queue.ReportResult {
	d := r.cfg.Deliverers[rep.Connector]
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	got := d.Deliver(cctx, reportOf(rep))
	cancel()
	res := queue.ReportResult{
		ID: rep.ID, Token: rep.Token, Result: string(got.Result),
		AttemptedAt: start, Duration: time.Since(start), HTTPStatus: got.HTTPStatus,
	}
	if got.Err != nil {
		res.Error = got.Err.Error()
	}
	r.m.Delivered.WithLabelValues(rep.Connector, string(got.Result)).Inc()
	log := r.log.With("connector", rep.Connector, "request_id", rep.RequestID, "request_ref", rep.RequestRef, "report_id", rep.ID)
	switch got.Result {
	case connector.Delivered, connector.Closed:
		r.resume(rep.Connector)
		log.Debug("report delivered", "result", got.Result, "http_status", got.HTTPStatus)
	case connector.Unauthorized:
		res.Delay = r.cfg.ProbeInterval
		r.pause(rep.Connector, res.Error)
	case connector.Rejected:
		r.resume(rep.Connector)
		log.Error("receiver refused the report for good; it waits for `erasure-worker reports requeue`",
			"http_status", got.HTTPStatus, "err", res.Error)
	default: // retry, rate_limited
		r.resume(rep.Connector)
		res.Delay = max(r.backoff(rep.Attempts), got.RetryAfter)
		log.Warn("report not delivered; retrying", "result", got.Result, "http_status", got.HTTPStatus,
			"retry_in", res.Delay.Round(time.Millisecond), "err", res.Error)
	}
	return res
}

// backoff is the wait after a report's attempts-th failed attempt (from 0): doubling from
// MinBackoff up to MaxBackoff, with jitter of up to a half so that a receiver's recovery is not
// met by every report at once.
func (r *Reporter) backoff(attempts int) time.Duration {
	d := r.cfg.MinBackoff
	for range min(attempts, 30) {
		d *= 2
		if d >= r.cfg.MaxBackoff {
			d = r.cfg.MaxBackoff
			break
		}
	}
	return d/2 + rand.N(d/2+1)
}

// record writes the attempts, retrying while the database is away: a delivered report that
// is never recorded is only sent again, which every receiver tolerates, but the evidence and
// the deleted credentials wait for it.
func (r *Reporter) record(ctx context.Context, results []queue.ReportResult) {
	rctx := context.WithoutCancel(ctx)
	wait := 100 * time.Millisecond
	for try := 0; ; try++ {
		fctx, cancel := context.WithTimeout(rctx, 10*time.Second)
		_, err := r.q.FinishReports(fctx, r.cfg.ID, results)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil && try >= 3 {
			r.log.Error("could not record report deliveries before stopping; they will be sent again once their lease ends", "reports", len(results), "err", err)
			return
		}
		r.log.Warn("recording report deliveries failed; retrying", "err", err, "retry_in", wait)
		time.Sleep(wait)
		wait = min(2*wait, 5*time.Second)
	}
}

func (r *Reporter) skip(now time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var skip []string
	for _, c := range queue.Connectors {
		if _, ok := r.cfg.Deliverers[c]; !ok {
			skip = append(skip, c)
			continue
		}
		if next, ok := r.paused[c]; ok && now.Before(next) {
			skip = append(skip, c)
			continue
		}
		if lim := r.pace[c]; lim != nil && lim.TokensAt(now.Add(r.cfg.PollInterval)) < 1 {
			skip = append(skip, c) // nothing of its pace is left before the next round
		}
	}
	return skip
}

// paced keeps the reports whose connector's pace lets them go within a delivery's timeout,
// each with how long it must wait for its turn, and returns the others.
func (r *Reporter) paced(claimed []queue.Report, now time.Time) (keep []queue.Report, waits []time.Duration, back []queue.Report) {
	for _, rep := range claimed {
		var wait time.Duration
		if lim := r.pace[rep.Connector]; lim != nil {
			turn := lim.ReserveN(now, 1)
			if wait = turn.DelayFrom(now); !turn.OK() || wait > r.cfg.Timeout {
				turn.CancelAt(now)
				back = append(back, rep)
				continue
			}
		}
		keep, waits = append(keep, rep), append(waits, wait)
	}
	return keep, waits, back
}

// probeOnly keeps one report of each paused connector and returns the others of theirs.
func (r *Reporter) probeOnly(claimed []queue.Report, now time.Time) (keep, back []queue.Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	probed := map[string]bool{}
	for _, rep := range claimed {
		if _, paused := r.paused[rep.Connector]; !paused {
			keep = append(keep, rep)
			continue
		}
		if probed[rep.Connector] {
			back = append(back, rep)
			continue
		}
		probed[rep.Connector] = true
		r.paused[rep.Connector] = now.Add(r.cfg.ProbeInterval)
		keep = append(keep, rep)
	}
	return keep, back
}

func (r *Reporter) pause(c, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.paused[c]; !ok {
		r.log.Error("the receiver rejected our credentials: reports paused; one is tried every probe interval until one is taken",
			"connector", c, "probe_interval", r.cfg.ProbeInterval, "err", why)
		r.m.Paused.WithLabelValues(c).Set(1)
	}
	r.paused[c] = time.Now().Add(r.cfg.ProbeInterval)
}

func (r *Reporter) resume(c string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.paused[c]; ok {
		delete(r.paused, c)
		r.log.Info("the receiver takes our credentials again: reports resumed", "connector", c)
		r.m.Paused.WithLabelValues(c).Set(0)
	}
}

func (r *Reporter) readStats(ctx context.Context) {
	s, err := r.q.ReportStats(ctx)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			r.log.Warn("reading report stats failed", "err", err)
		}
		return
	}
	for _, c := range queue.Connectors {
		r.m.Pending.WithLabelValues(c).Set(float64(s.Pending[c]))
		r.m.Failed.WithLabelValues(c).Set(float64(s.Failed[c]))
	}
	r.m.OldestPendingAge.Set(s.OldestPendingAge().Seconds())
}

// ReportMetrics are the reporter's Prometheus metrics (names in DESIGN.md and the README).
type ReportMetrics struct {
	Pending          *prometheus.GaugeVec
	Failed           *prometheus.GaugeVec
	Delivered        *prometheus.CounterVec
	OldestPendingAge prometheus.Gauge
	Paused           *prometheus.GaugeVec
}

// NewReportMetrics creates the report metrics and registers them with reg, unless reg is nil.
func NewReportMetrics(reg prometheus.Registerer) *ReportMetrics {
	m := &ReportMetrics{
		Pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erasure_reports_pending",
			Help: "Reports of finished requests not yet delivered to the privacy request system they came from, by connector, read periodically.",
		}, []string{"connector"}),
		Failed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erasure_reports_failed",
			Help: "Reports the receiver refused for good (a 4xx other than 401, 409 and 429), by connector; they wait for `erasure-worker reports requeue`.",
		}, []string{"connector"}),
		Delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erasure_reports_delivered_total",
			Help: "Report delivery attempts by this replica, by connector and result: delivered and closed (the receiver says the request is already closed) end the report; retry, rate_limited and unauthorized try again later; rejected fails it.",
		}, []string{"connector", "result"}),
		OldestPendingAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_report_oldest_pending_age_seconds",
			Help: "How long the oldest undelivered report has waited since its request finished; 0 when none waits.",
		}),
		Paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erasure_reports_paused",
			Help: "1 while the connector's receiver rejects our credentials (401) and this replica has paused its reports, else 0.",
		}, []string{"connector"}),
	}
	// Every series exists from the start, at 0, so that dashboards and alerts see a deployment
	// without connectors, or one that has not reported yet, as it is.
	for _, c := range queue.Connectors {
		m.Pending.WithLabelValues(c)
		m.Failed.WithLabelValues(c)
		m.Paused.WithLabelValues(c)
		for _, r := range []connector.Result{connector.Delivered, connector.Closed, connector.Retry,
			connector.RateLimited, connector.Unauthorized, connector.Rejected} {
			m.Delivered.WithLabelValues(c, string(r))
		}
	}
	if reg != nil {
		reg.MustRegister(m.Pending, m.Failed, m.Delivered, m.OldestPendingAge, m.Paused)
	}
	return m
}

func reportOf(r queue.Report) connector.Report {
	return connector.Report{ID: r.ID, Target: r.Target, Attempts: r.Attempts, Credentials: r.Credentials,
		RequestID: r.RequestID, RequestRef: r.RequestRef, ExternalUserID: r.ExternalUserID,
		Outcome: r.Outcome, ErrorCode: r.ErrorCode, CompletedAt: r.CompletedAt}
}
