package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
)

// ReportQueue is what the reporter needs of the queue.
type ReportQueue interface {
	DueReportLanes(ctx context.Context, connectors []string) ([]queue.ReportLane, error)
	ClaimReports(ctx context.Context, owner string, lane queue.ReportLane, limit int, leaseFor time.Duration) ([]queue.Report, error)
	FinishReports(ctx context.Context, owner string, results []queue.ReportResult) ([]int64, error)
	ReleaseReports(ctx context.Context, owner string, reports []queue.Report) error
	ReportStats(ctx context.Context, connectors []string) (queue.ReportStats, error)
	GiveUpReports(ctx context.Context, maxAge time.Duration, reason string, limit int) (map[string]int64, error)
}

// Defaults of the reporter.
const (
	DefaultReportPollInterval  = time.Second
	DefaultReportTimeout       = 10 * time.Second
	DefaultReportConcurrency   = 8   // per lane
	DefaultReportMaxInFlight   = 128 // per connector, over all its lanes
	DefaultReportMinBackoff    = time.Second
	DefaultReportMaxBackoff    = 5 * time.Minute
	DefaultReportProbeInterval = 30 * time.Second
	// DefaultReportMaxAge is shorter than DefaultIdentifierRetention: a report that names the
	// person keeps its copy of the raw id no longer than the request keeps its own.
	DefaultReportMaxAge = 3 * 24 * time.Hour
)

// maxGiveUpInterval is the longest between two looks for reports past MaxAge; giveUpBatch bounds
// the reports one statement gives up.
const (
	maxGiveUpInterval = time.Minute
	giveUpBatch       = 1000
)

// reportStopGrace is how long deliveries in flight may finish once the reporter is stopped.
const reportStopGrace = 2 * time.Second

// maxRecordBatch bounds the results that one FinishReports records.
const maxRecordBatch = 256

// ReporterConfig configures a Reporter. Zero fields take the defaults above; Validate says
// whether what is left holds together.
type ReporterConfig struct {
	ID string // the replica's id, as the worker's: the lease owner and the evidence's worker
	// Deliverers maps each enabled connector's name to its Deliverer. Reports of other
	// connectors wait in the table until their connector is configured.
	Deliverers map[string]connector.Deliverer
	// PollInterval is how often the reporter looks for lanes with deliverable reports, and how
	// often a lane with deliveries in flight looks for more.
	PollInterval time.Duration
	Timeout      time.Duration // of one delivery
	// Lease is how long a claimed report is held before another replica may take it: longer
	// than Timeout, so that a delivery in flight is never sent twice. 3 × Timeout when zero.
	Lease time.Duration
	// Concurrency is how many deliveries one lane has in flight at most: one lane per
	// connector, and one per receiver host where a connector reports to many.
	Concurrency int
	// MaxInFlight is how many deliveries one connector has in flight at most, over all its
	// lanes: a connector with a thousand hung hosts holds this many connections, not 8000.
	MaxInFlight   int
	MinBackoff    time.Duration // after a report's first failed attempt; doubles per attempt
	MaxBackoff    time.Duration
	ProbeInterval time.Duration // how often a paused connector is tried with one report
	// MaxAge is how long after it became deliverable (its request finished, or a person
	// requeued it) a report is tried: then it is failed with its last reason, and waits for
	// `reports requeue`. It counts for every connector's reports, configured here or not.
	MaxAge        time.Duration
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
	def(&c.Lease, 3*c.Timeout)
	def(&c.MinBackoff, DefaultReportMinBackoff)
	def(&c.MaxBackoff, DefaultReportMaxBackoff)
	def(&c.ProbeInterval, DefaultReportProbeInterval)
	def(&c.MaxAge, DefaultReportMaxAge)
	def(&c.StatsInterval, DefaultStatsInterval)
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultReportConcurrency
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultReportMaxInFlight
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate says what is wrong with the config once its zero fields take their defaults,
// naming the settings that set it (REPORT_TIMEOUT, ...).
func (c ReporterConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.Lease <= c.Timeout:
		return fmt.Errorf("REPORT_LEASE (%v) must be longer than REPORT_TIMEOUT (%v): a report whose lease ends while it is being delivered is sent again by another replica",
			c.Lease, c.Timeout)
	case c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("REPORT_MAX_BACKOFF (%v) must not be shorter than REPORT_MIN_BACKOFF (%v)", c.MaxBackoff, c.MinBackoff)
	case c.MaxInFlight < c.Concurrency:
		return fmt.Errorf("REPORT_MAX_IN_FLIGHT (%d) must be at least REPORT_CONCURRENCY (%d): one lane could never fill its concurrency",
			c.MaxInFlight, c.Concurrency)
	}
	return nil
}

// giveUpInterval is how often the reporter looks for reports past MaxAge: a tenth of it, at
// most a minute, so that a report gives up within a few percent of its age.
func (c ReporterConfig) giveUpInterval() time.Duration {
	return min(max(c.MaxAge/10, 10*time.Millisecond), maxGiveUpInterval)
}

// maxPaceWait is the longest a claimed report may wait for its turn in its receiver's pace:
// the wait and the delivery must both fit in the lease, with room to record the result.
func (c ReporterConfig) maxPaceWait() time.Duration {
	return (c.Lease - c.Timeout) / 2
}

// Reporter delivers the outbox: it finds the lanes that have deliverable reports, and in each
// lane claims reports, delivers each through its connector and records every attempt, retrying
// with backoff and jitter on a schedule kept in the table. Each lane has its own concurrency
// and no batch: a slot is refilled as soon as its delivery ends, so a receiver that hangs holds
// back only its own lane. A connector whose receiver refuses our credentials (401) is paused,
// all its lanes: one report is tried every ProbeInterval until one is taken. A report still
// undelivered MaxAge after it became deliverable is given up, whatever kept it: retries, a
// pause, a hung receiver.
type Reporter struct {
	cfg        ReporterConfig
	q          ReportQueue
	log        *slog.Logger
	m          *ReportMetrics
	connectors []string // the configured ones, sorted

	pace     map[string]*rate.Limiter // connector → its receiver's published limit, for Paced ones
	inFlight map[string]*slots        // connector → its share of MaxInFlight
	results  chan queue.ReportResult  // deliveries that ended, to be recorded

	mu        sync.Mutex
	paused    map[string]time.Time // connector → when it may be probed next
	lanes     map[queue.ReportLane]bool
	dbFailing bool
}

// NewReporter returns a reporter over q. It panics on a config that Validate refuses: the
// settings that make it are checked at start-up.
func NewReporter(q ReportQueue, cfg ReporterConfig) *Reporter {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		panic("worker: NewReporter: " + err.Error())
	}
	connectors := make([]string, 0, len(cfg.Deliverers))
	for c := range cfg.Deliverers {
		connectors = append(connectors, c)
	}
	slices.Sort(connectors)
	if cfg.Metrics == nil {
		cfg.Metrics = NewReportMetrics(nil)
	}
	cfg.Metrics.precreate(connectors)
	r := &Reporter{cfg: cfg, q: q, log: cfg.Logger.With("worker", cfg.ID), m: cfg.Metrics, connectors: connectors,
		pace: map[string]*rate.Limiter{}, inFlight: map[string]*slots{}, results: make(chan queue.ReportResult, maxRecordBatch),
		paused: map[string]time.Time{}, lanes: map[queue.ReportLane]bool{}}
	for c, d := range cfg.Deliverers {
		if p, ok := d.(connector.Paced); ok {
			r.pace[c] = rate.NewLimiter(p.Pace())
		}
		r.inFlight[c] = newSlots(cfg.MaxInFlight)
	}
	return r
}

// Run delivers reports until ctx ends, then waits for deliveries in flight (each bounded by
// Timeout, and by reportStopGrace after ctx ends), records them, and gives back claims it did
// not send.
func (r *Reporter) Run(ctx context.Context) {
	if len(r.cfg.Deliverers) == 0 {
		return
	}
	var bg sync.WaitGroup
	bg.Go(func() { every(ctx, r.cfg.StatsInterval, r.readStats) })
	bg.Go(func() { every(ctx, r.cfg.giveUpInterval(), r.giveUp) })
	defer bg.Wait()

	// Deliveries outlive ctx by reportStopGrace at most, so that a hung receiver cannot hold
	// up a shutdown; one cut short is recorded as a retry and sent again.
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(reportStopGrace, cancel) })
	defer stop()

	var recorder sync.WaitGroup
	recorder.Go(func() { r.recordResults(ctx) })
	var lanes sync.WaitGroup
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			lanes.Wait() // each waits for its deliveries, which hand their results over first
			close(r.results)
			recorder.Wait()
			return
		case <-t.C:
		}
		for _, l := range r.dueLanes(ctx) {
			lanes.Go(func() { r.runLane(ctx, dctx, l) })
		}
		t.Reset(r.cfg.PollInterval)
	}
}

// dueLanes returns the lanes that have deliverable reports, may send now and have no
// goroutine yet, marked as running.
func (r *Reporter) dueLanes(ctx context.Context) []queue.ReportLane {
	due, err := r.q.DueReportLanes(ctx, r.connectors)
	if !r.dbAnswered(ctx, err) {
		return nil
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var start []queue.ReportLane
	for _, l := range due {
		if r.lanes[l] || r.waitLocked(l.Connector, now) > 0 {
			continue
		}
		r.lanes[l] = true
		start = append(start, l)
	}
	return start
}

// dbAnswered logs the first failure of a series of claims, and the claim that ends it, and
// tells whether err is nil.
func (r *Reporter) dbAnswered(ctx context.Context, err error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil && !r.dbFailing {
			r.dbFailing = true
			r.log.Error("cannot claim reports; retrying", "err", err)
		}
		return false
	}
	if r.dbFailing {
		r.dbFailing = false
		r.log.Info("claiming reports again")
	}
	return true
}

// runLane delivers one lane's reports, keeping up to Concurrency of them in flight, until the
// lane has nothing deliverable and nothing in flight, or ctx ends. Its deliveries run under
// dctx, and it returns once they have ended.
func (r *Reporter) runLane(ctx, dctx context.Context, l queue.ReportLane) {
	var deliveries sync.WaitGroup
	defer deliveries.Wait()
	defer func() {
		r.mu.Lock()
		delete(r.lanes, l)
		r.mu.Unlock()
	}()
	budget := r.inFlight[l.Connector]
	ended := make(chan struct{}, r.cfg.Concurrency) // a delivery of this lane ended
	inFlight := 0
	log := r.log.With("connector", l.Connector)
	if l.Name != "" {
		log = log.With("lane", l.Name)
	}
	poll := time.NewTimer(time.Hour)
	defer poll.Stop()
	for ctx.Err() == nil {
		want, wait := r.admit(l.Connector, r.cfg.Concurrency-inFlight)
		freed := budget.freed() // before take: a slot given back after it is not missed
		got := budget.take(want)
		starved := want > 0 && got == 0 // the connector's other lanes hold all of MaxInFlight
		claimed := 0
		if got > 0 {
			reps, err := r.q.ClaimReports(ctx, r.cfg.ID, l, got, r.cfg.Lease)
			budget.give(got - len(reps))
			if !r.dbAnswered(ctx, err) {
				reps = nil
			}
			claimed = len(reps)
			for _, rep := range r.paced(ctx, reps) {
				inFlight++
				deliveries.Go(func() {
					res, sent := r.deliver(ctx, dctx, rep.Report, rep.wait, log)
					budget.give(1)
					ended <- struct{}{}
					if sent {
						r.results <- res
					}
				})
			}
			if claimed == got && inFlight < r.cfg.Concurrency {
				continue // a full claim: there may be more at once
			}
		}
		if inFlight == 0 && claimed == 0 && !starved {
			return // nothing to send now: the lane is looked for again at the next poll
		}
		// Wait for a slot of its own or, starved, of the connector's; or for the next poll of a
		// lane that may have more due by then.
		if wait <= 0 || wait > r.cfg.PollInterval {
			wait = r.cfg.PollInterval
		}
		if !starved {
			freed = nil
		}
		poll.Reset(wait)
		select {
		case <-ctx.Done():
		case <-ended:
			inFlight--
		case <-freed:
		case <-poll.C:
		}
		for drained := false; !drained; {
			select {
			case <-ended:
				inFlight--
			default:
				drained = true
			}
		}
	}
}

// admit returns how many of want reports the lane of connector c may claim now, and when
// none, how long until it may.
func (r *Reporter) admit(c string, want int) (int, time.Duration) {
	if want <= 0 {
		return 0, 0
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if wait := r.waitLocked(c, now); wait > 0 {
		return 0, wait
	}
	if _, paused := r.paused[c]; paused {
		r.paused[c] = now.Add(r.cfg.ProbeInterval) // this claim is the probe
		want = 1
	}
	if lim := r.pace[c]; lim != nil {
		want = min(want, int(lim.TokensAt(now)))
	}
	return want, 0
}

// waitLocked is how long connector c must wait before it may send: until its next probe while
// it is paused, until its next token when its receiver's pace is spent.
func (r *Reporter) waitLocked(c string, now time.Time) time.Duration {
	if next, paused := r.paused[c]; paused && now.Before(next) {
		return next.Sub(now)
	}
	if lim := r.pace[c]; lim != nil {
		if tokens := lim.TokensAt(now); tokens < 1 {
			if lim.Limit() <= 0 {
				return r.cfg.PollInterval
			}
			return time.Duration(math.Ceil((1 - tokens) / float64(lim.Limit()) * float64(time.Second)))
		}
	}
	return 0
}

// pacedReport is a claimed report with how long it waits for its turn in its receiver's pace.
type pacedReport struct {
	queue.Report
	wait time.Duration
}

// paced takes each report's turn in its connector's pace, and gives back the reports whose
// turn is further away than the lease allows (another lane of the connector took the tokens).
func (r *Reporter) paced(ctx context.Context, claimed []queue.Report) []pacedReport {
	out := make([]pacedReport, 0, len(claimed))
	var back []queue.Report
	now := time.Now()
	for _, rep := range claimed {
		var wait time.Duration
		if lim := r.pace[rep.Connector]; lim != nil {
			turn := lim.ReserveN(now, 1)
			if wait = turn.DelayFrom(now); !turn.OK() || wait > r.cfg.maxPaceWait() {
				turn.CancelAt(now)
				back = append(back, rep)
				continue
			}
		}
		out = append(out, pacedReport{rep, wait})
	}
	if len(back) > 0 {
		_ = r.q.ReleaseReports(context.WithoutCancel(ctx), r.cfg.ID, back)
	}
	return out
}

// deliver waits for the report's turn, delivers it and classifies the answer. A report whose
// turn has not come when ctx ends is given back unsent: sent is false.
func (r *Reporter) deliver(ctx, dctx context.Context, rep queue.Report, wait time.Duration, log *slog.Logger) (res queue.ReportResult, sent bool) {
	if wait > 0 && sleep(ctx, wait) != nil {
		_ = r.q.ReleaseReports(context.WithoutCancel(ctx), r.cfg.ID, []queue.Report{rep})
		return queue.ReportResult{}, false
	}
	d := r.cfg.Deliverers[rep.Connector]
	start := time.Now()
	cctx, cancel := context.WithTimeout(dctx, r.cfg.Timeout)
	got := d.Deliver(cctx, connectorReport(rep))
	cancel()
	res = queue.ReportResult{
		ID: rep.ID, Token: rep.Token, Result: string(got.Result),
		AttemptedAt: start, Duration: time.Since(start), HTTPStatus: got.HTTPStatus,
	}
	if got.Err != nil {
		res.Error = got.Err.Error()
	}
	r.m.Delivered.WithLabelValues(rep.Connector, string(got.Result)).Inc()
	log = log.With("request_id", rep.RequestID, "request_ref", rep.RequestRef, "report_id", rep.ID)
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
	return res, true
}

// connectorReport is what a Deliverer is given of a claimed report: never a pseudonym for the
// person's id.
func connectorReport(r queue.Report) connector.Report {
	uid := r.ExternalUserID
	if r.Pseudonymised {
		uid = ""
	}
	return connector.Report{
		ID: r.ID, Target: r.Target, Attempts: r.Attempts, Credentials: r.Credentials,
		RequestID: r.RequestID, RequestRef: r.RequestRef, ExternalUserID: uid,
		Outcome: r.Outcome, ErrorCode: r.ErrorCode, CompletedAt: r.CompletedAt, AtIntake: r.AtIntake, NotBefore: r.NotBefore,
	}
}

// backoff is the wait after a report's attempts-th failed attempt (from 0): MinBackoff
// doubling per attempt up to MaxBackoff, each drawn from between half and all of it so that a
// receiver's recovery is not met by every report at once (newBackoff).
func (r *Reporter) backoff(attempts int) time.Duration {
	b := newBackoff(r.cfg.MinBackoff, r.cfg.MaxBackoff)
	d := b.NextBackOff()
	for range min(attempts, 64) {
		d = b.NextBackOff()
	}
	return d
}

// recordResults records the results of deliveries as they end, those that end together in one
// statement, until the results channel is closed.
func (r *Reporter) recordResults(ctx context.Context) {
	for res := range r.results {
		batch := []queue.ReportResult{res}
	more:
		for len(batch) < maxRecordBatch {
			select {
			case res, ok := <-r.results:
				if !ok {
					break more
				}
				batch = append(batch, res)
			default:
				break more
			}
		}
		r.record(ctx, batch)
	}
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

// giveUp fails the reports past MaxAge, a batch at a time until none is left, counts them and
// says so once per connector.
func (r *Reporter) giveUp(ctx context.Context) {
	reason := fmt.Sprintf("gave up after REPORT_MAX_AGE (%s): ", formatAge(r.cfg.MaxAge))
	total := map[string]int64{}
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		got, err := r.q.GiveUpReports(gctx, r.cfg.MaxAge, reason, giveUpBatch)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("giving up reports past REPORT_MAX_AGE failed; trying again", "err", err)
			}
			break
		}
		var n int64
		for c, k := range got {
			total[c] += k
			n += k
		}
		if n < giveUpBatch {
			break
		}
	}
	for _, c := range slices.Sorted(maps.Keys(total)) {
		r.m.GivenUp.WithLabelValues(c).Add(float64(total[c]))
		r.log.Error("reports undelivered after REPORT_MAX_AGE were given up: failed with their last reason, they wait for `erasure-worker reports requeue`",
			"connector", c, "reports", total[c], "report_max_age", formatAge(r.cfg.MaxAge))
	}
}

// formatAge writes a period in whole days when it is some, as REPORT_MAX_AGE is usually written.
func formatAge(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func (r *Reporter) readStats(ctx context.Context) {
	s, err := r.q.ReportStats(ctx, r.connectors)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			r.log.Warn("reading report stats failed", "err", err)
		}
		return
	}
	for _, c := range r.connectors {
		r.m.Pending.WithLabelValues(c).Set(float64(s.Pending[c]))
		r.m.Failed.WithLabelValues(c).Set(float64(s.Failed[c]))
	}
	r.m.OldestPendingAge.Set(s.OldestPendingAge().Seconds())
}

// slots counts one connector's deliveries in flight against its MaxInFlight.
type slots struct {
	mu     sync.Mutex
	free   int
	signal chan struct{} // closed when a slot is given back
}

func newSlots(n int) *slots { return &slots{free: n, signal: make(chan struct{})} }

// take takes up to n slots and returns how many it took.
func (s *slots) take(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n = max(min(n, s.free), 0)
	s.free -= n
	return n
}

// give gives n slots back and wakes whoever waits for one.
func (s *slots) give(n int) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.free += n
	close(s.signal)
	s.signal = make(chan struct{})
}

// freed is closed when a slot is next given back.
func (s *slots) freed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signal
}

// ReportMetrics are the reporter's Prometheus metrics (names in DESIGN.md and the README).
type ReportMetrics struct {
	Pending          *prometheus.GaugeVec
	Failed           *prometheus.GaugeVec
	Delivered        *prometheus.CounterVec
	OldestPendingAge prometheus.Gauge
	Paused           *prometheus.GaugeVec
	GivenUp          *prometheus.CounterVec
}

// NewReportMetrics creates the report metrics and registers them with reg, unless reg is nil.
// The series of each connector named, and of each connector a Reporter delivers for, exist
// from the start, at 0, so that dashboards and alerts see a deployment that has not reported
// yet as it is.
func NewReportMetrics(reg prometheus.Registerer, connectors ...string) *ReportMetrics {
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
		GivenUp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erasure_reports_given_up_total",
			Help: "Reports this replica gave up, by connector: still undelivered REPORT_MAX_AGE after their request finished (or they were requeued), they are failed with their last reason and wait for `erasure-worker reports requeue`.",
		}, []string{"connector"}),
	}
	m.precreate(connectors)
	if reg != nil {
		reg.MustRegister(m.Pending, m.Failed, m.Delivered, m.OldestPendingAge, m.Paused, m.GivenUp)
	}
	return m
}

// precreate makes every series of the connectors exist, at 0.
func (m *ReportMetrics) precreate(connectors []string) {
	for _, c := range connectors {
		m.Pending.WithLabelValues(c)
		m.Failed.WithLabelValues(c)
		m.Paused.WithLabelValues(c)
		m.GivenUp.WithLabelValues(c)
		for _, r := range []connector.Result{connector.Delivered, connector.Closed, connector.Retry,
			connector.RateLimited, connector.Unauthorized, connector.Rejected} {
			m.Delivered.WithLabelValues(c, string(r))
		}
	}
}
