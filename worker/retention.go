package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/erasure-worker/erasure-worker/queue"
)

// RetentionQueue is what the purge needs of the queue.
type RetentionQueue interface {
	LeaderQueue
	ToPseudonymise(ctx context.Context, after time.Duration, from queue.RetentionCursor, limit int) ([]queue.Identified, error)
	Pseudonymise(ctx context.Context, after time.Duration, batch []queue.Pseudonym) (int64, error)
	DeleteEvidence(ctx context.Context, after time.Duration, limit int) (int64, error)
	RetentionStats(ctx context.Context, identifier, evidence time.Duration) (queue.RetentionStats, error)
}

// Defaults and bounds of the retention settings.
const (
	DefaultIdentifierRetention = 7 * 24 * time.Hour
	DefaultEvidenceRetention   = 730 * 24 * time.Hour // the CCPA's 24 months (11 CCR §7101)
	// MinEvidenceRetention is the shortest EVIDENCE_RETENTION taken without an explicit
	// override: below a year the records could not serve the CCPA's 24 months even roughly.
	MinEvidenceRetention     = 365 * 24 * time.Hour
	DefaultRetentionInterval = time.Minute
	// MaxRetentionInterval: the purge runs at least once a minute.
	MaxRetentionInterval  = time.Minute
	DefaultRetentionBatch = 1000
)

const (
	// retentionBatchTimeout bounds one batch (a thousand rows take tens of milliseconds).
	retentionBatchTimeout = 5 * time.Second
	// retentionRoundBudget bounds one round: no batch starts after it, so a round ends within
	// it and one batch's timeout (20s), and RunDuty renews the duty's term (30s) in time. A
	// round that outlived the term would let a second replica purge alongside. What is left is
	// purged in the next round, which follows at once.
	retentionRoundBudget = 15 * time.Second
	// A short random pause between batches leaves the database to the claims and finishes for
	// a while, as River's job cleaner does.
	retentionPauseMin = 50 * time.Millisecond
	retentionPauseMax = 150 * time.Millisecond
)

// RetentionConfig is the purge's policy. NewRetention fills zero fields with the defaults above,
// but Identifier: zero turns pseudonymisation off.
type RetentionConfig struct {
	ID string // the replica's id: the duty's leader name
	// Identifier is how long a finished request keeps its raw external_user_id; 0 keeps it
	// until the evidence is deleted. Keys pseudonymise it: the newest one.
	Identifier time.Duration
	Keys       IdentifierKeys
	// Evidence is how long after it finished a request, its calls and its reports are kept.
	Evidence      time.Duration
	Interval      time.Duration // at most this long between rounds
	StatsInterval time.Duration // how often every replica reads the retention gauges
	BatchSize     int
	Logger        *slog.Logger
	Metrics       *RetentionMetrics // nil: unregistered metrics

	roundBudget time.Duration // retentionRoundBudget but in the package's own tests
}

// Retention purges what the service keeps past its time, as a Duty that one replica at a time
// does: each round first pseudonymises the raw ids past Identifier, then deletes the requests
// past Evidence, in batches, each a short statement under its own timeout with a short pause
// after it, until nothing is due or the round's time is up; a round that ran out of time is
// followed by the next at once. Every replica reads the gauges, so that a purge that stopped
// everywhere still shows its lag growing.
type Retention struct {
	cfg RetentionConfig
	q   RetentionQueue
	log *slog.Logger
	m   *RetentionMetrics
}

// NewRetention returns the purge over q, or an error naming what is wrong with cfg.
func NewRetention(q RetentionQueue, cfg RetentionConfig) (*Retention, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Evidence, DefaultEvidenceRetention)
	def(&cfg.Interval, DefaultRetentionInterval)
	def(&cfg.StatsInterval, DefaultStatsInterval)
	def(&cfg.roundBudget, retentionRoundBudget)
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultRetentionBatch
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewRetentionMetrics(nil)
	}
	switch {
	case cfg.Identifier < 0:
		return nil, fmt.Errorf("identifier retention %s is negative", cfg.Identifier)
	case cfg.Identifier > 0 && cfg.Keys.Len() == 0:
		return nil, errors.New("identifier retention is on but there is no identifier key")
	case cfg.Identifier >= cfg.Evidence:
		return nil, fmt.Errorf("evidence retention %s is not longer than identifier retention %s", cfg.Evidence, cfg.Identifier)
	case cfg.Interval > MaxRetentionInterval:
		return nil, fmt.Errorf("retention interval %s is longer than %s", cfg.Interval, MaxRetentionInterval)
	}
	return &Retention{cfg: cfg, q: q, log: cfg.Logger.With("duty", "retention"), m: cfg.Metrics}, nil
}

// Run purges, on this replica while it leads the duty, and reads the gauges until ctx ends.
func (r *Retention) Run(ctx context.Context) {
	var bg sync.WaitGroup
	bg.Go(func() { every(ctx, r.cfg.StatsInterval, r.readStats) })
	RunDuty(ctx, r.q, r.cfg.ID, Duty{Name: "retention", Interval: r.cfg.Interval, Do: r.Round}, r.cfg.Logger)
	bg.Wait()
}

// Round is one round of the purge: pseudonymise, then delete, each until nothing is due or
// the round's time is up; more says that the time ran out with rows still due, and RunDuty
// then starts the next round at once. Only the duty's leader calls it (and tests).
func (r *Retention) Round(ctx context.Context) (more bool, err error) {
	start := time.Now()
	deadline := start.Add(r.cfg.roundBudget)
	var pseudonymised int64
	if r.cfg.Identifier > 0 {
		var from queue.RetentionCursor // each batch starts where the last ended
		// Two thirds of the round at most, so that a backlog of ids never starves the deletion.
		pseudonymised, more, err = r.drain(ctx, start.Add(r.cfg.roundBudget*2/3), func(ctx context.Context) (int64, bool, error) {
			return r.pseudonymiseBatch(ctx, &from)
		})
		if err != nil {
			return false, fmt.Errorf("pseudonymising finished requests' ids: %w", err)
		}
	}
	// At least one batch, even past the deadline, so that the deletion always moves: the
	// pseudonymisation ends within two thirds of the round and a batch's timeout, so this
	// first batch still ends within the round and another timeout.
	deleted, left, err := r.drain(ctx, deadline, r.deleteBatch)
	more = more || left
	if pseudonymised > 0 || deleted > 0 {
		r.log.Info("retention: purged", "pseudonymised", pseudonymised, "deleted", deleted)
	}
	if err != nil {
		return false, fmt.Errorf("deleting expired evidence: %w", err)
	}
	return more && ctx.Err() == nil, nil
}

// drain runs batch until it comes back short of a full batch, the deadline passes or ctx ends,
// and returns the rows it purged and whether it stopped at the deadline after a full batch,
// with more rows likely due.
func (r *Retention) drain(ctx context.Context, deadline time.Time, batch func(context.Context) (purged int64, full bool, err error)) (total int64, more bool, err error) {
	for {
		bctx, cancel := context.WithTimeout(ctx, retentionBatchTimeout)
		n, full, err := batch(bctx)
		cancel()
		total += n
		if err != nil || !full {
			return total, false, err
		}
		if !time.Now().Before(deadline) {
			return total, true, nil
		}
		pause := retentionPauseMin + rand.N(retentionPauseMax-retentionPauseMin)
		if sleep(ctx, pause) != nil {
			return total, false, nil
		}
	}
}

func (r *Retention) pseudonymiseBatch(ctx context.Context, from *queue.RetentionCursor) (int64, bool, error) {
	due, err := r.q.ToPseudonymise(ctx, r.cfg.Identifier, *from, r.cfg.BatchSize)
	if err != nil || len(due) == 0 {
		return 0, false, err
	}
	*from = due[len(due)-1].Next()
	// The HMAC is computed here: the key never reaches the database, nor its logs.
	batch := make([]queue.Pseudonym, 0, len(due))
	for _, d := range due {
		batch = append(batch, queue.Pseudonym{ID: d.ID, Raw: d.ExternalUserID, Pseudonym: r.cfg.Keys.Pseudonym(d.ExternalUserID)})
	}
	n, err := r.q.Pseudonymise(ctx, r.cfg.Identifier, batch)
	r.m.Pseudonymised.Add(float64(n))
	return n, len(due) == r.cfg.BatchSize, err
}

func (r *Retention) deleteBatch(ctx context.Context) (int64, bool, error) {
	n, err := r.q.DeleteEvidence(ctx, r.cfg.Evidence, r.cfg.BatchSize)
	r.m.Deleted.Add(float64(n))
	return n, n == int64(r.cfg.BatchSize), err
}

func (r *Retention) readStats(ctx context.Context) {
	s, err := r.q.RetentionStats(ctx, r.cfg.Identifier, r.cfg.Evidence)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("reading retention stats failed", "err", err)
		}
		return
	}
	r.m.setStats(s, r.cfg.Identifier, r.cfg.Evidence)
}

// Steps of the purge, the step label of the retention gauges.
const (
	StepPseudonymise = "pseudonymise"
	StepDelete       = "delete"
)

// RetentionMetrics are the purge's Prometheus metrics (names in the README). The gauges
// describe the table and are the same on every replica; the counters count this replica's
// purges.
type RetentionMetrics struct {
	Due           *prometheus.GaugeVec
	Lag           *prometheus.GaugeVec
	Pseudonymised prometheus.Counter
	Deleted       prometheus.Counter
}

// NewRetentionMetrics creates the metrics, at 0, and registers them with reg, unless reg is nil.
func NewRetentionMetrics(reg prometheus.Registerer) *RetentionMetrics {
	m := &RetentionMetrics{
		Due: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erasure_retention_due_requests",
			Help: fmt.Sprintf("Finished erasure requests past their retention and not yet purged, by step: pseudonymise (raw id past IDENTIFIER_RETENTION), delete (past EVIDENCE_RETENTION). Counted up to %d.", queue.RetentionCountCap),
		}, []string{"step"}),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erasure_retention_lag_seconds",
			Help: "How long the oldest finished erasure request due for a step (pseudonymise, delete) has been past its retention; 0 when none is.",
		}, []string{"step"}),
		Pseudonymised: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erasure_retention_pseudonymised_total",
			Help: "Finished erasure requests whose external_user_id this replica replaced by its HMAC, IDENTIFIER_RETENTION after they finished.",
		}),
		Deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erasure_retention_deleted_total",
			Help: "Erasure requests this replica deleted with their calls and reports, EVIDENCE_RETENTION after they finished.",
		}),
	}
	for _, step := range []string{StepPseudonymise, StepDelete} {
		m.Due.WithLabelValues(step)
		m.Lag.WithLabelValues(step)
	}
	if reg != nil {
		reg.MustRegister(m.Due, m.Lag, m.Pseudonymised, m.Deleted)
	}
	return m
}

func (m *RetentionMetrics) setStats(s queue.RetentionStats, identifier, evidence time.Duration) {
	m.Due.WithLabelValues(StepPseudonymise).Set(float64(s.ToPseudonymise))
	m.Due.WithLabelValues(StepDelete).Set(float64(s.ToDelete))
	m.Lag.WithLabelValues(StepPseudonymise).Set(s.PseudonymiseLag(identifier).Seconds())
	m.Lag.WithLabelValues(StepDelete).Set(s.DeleteLag(evidence).Seconds())
}
