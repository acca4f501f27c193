package worker

import (
	"context"
	"log/slog"
	"time"
)

// LeaderQueue is what a Duty needs of the queue: River's leader election, a row per duty with
// its holder and an expiry.
type LeaderQueue interface {
	Lead(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	Resign(ctx context.Context, name, holder string) error
}

// Duty is work that one replica at a time must do, every Interval: pulling a privacy
// request system's pending requests, purging. Every replica runs it; the one that holds the duty's leader row
// does the work, and another takes over within a term once it dies. Nothing depends on a
// database session, so it also works behind PgBouncer in transaction mode.
type Duty struct {
	Name     string
	Interval time.Duration
	// Do is one round of the work. It is called only while this replica leads, every Interval;
	// its error is logged, and the next round comes an Interval later. A round that stopped
	// with work left says more: the next one follows at once, once the term is renewed, so that
	// a backlog goes at the pace of the work rather than one round per Interval.
	Do func(ctx context.Context) (more bool, err error)
}

// dutyTerm bounds how long a dead leader holds a duty: it renews every third of a term.
const dutyTerm = 30 * time.Second

// RunDuty runs d on this replica (id) until ctx ends, then resigns if it led, so that another
// replica takes over at once.
func RunDuty(ctx context.Context, q LeaderQueue, id string, d Duty, log *slog.Logger) {
	log = log.With("duty", d.Name, "worker", id)
	renew := min(d.Interval, dutyTerm/3)
	t := time.NewTimer(0)
	defer t.Stop()
	var (
		leading  bool
		lastRun  time.Time
		more     bool
		failing  bool
		leadFail bool
	)
	defer func() {
		if leading {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = q.Resign(rctx, d.Name, id)
			cancel()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lctx, cancel := context.WithTimeout(ctx, renew)
		ok, err := q.Lead(lctx, d.Name, id, dutyTerm)
		cancel()
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			if !leadFail {
				log.Warn("cannot elect a leader; retrying", "err", err)
				leadFail = true
			}
			ok = false // a leader that cannot renew stops: its term may lapse meanwhile
		case leadFail:
			leadFail = false
		}
		if ok != leading {
			leading = ok
			if ok {
				log.Info("leading: this replica does the duty")
			} else {
				log.Info("no longer leading")
			}
		}
		more = more && leading
		if leading && (more || lastRun.IsZero() || time.Since(lastRun) >= d.Interval) {
			lastRun = time.Now()
			var err error
			more, err = d.Do(ctx)
			more = more && err == nil
			if err != nil && ctx.Err() == nil {
				if !failing {
					log.Error("duty failed; trying again at its next interval", "err", err, "interval", d.Interval)
				}
				failing = true
			} else if err == nil && failing {
				log.Info("duty succeeded again")
				failing = false
			}
		}
		if more {
			t.Reset(0)
		} else {
			t.Reset(renew)
		}
	}
}
