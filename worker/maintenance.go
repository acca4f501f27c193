package worker

import (
	"context"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// recoverClaims takes back claims whose owner stopped heartbeating, or whose lease expired.
func (w *Worker) recoverClaims(ctx context.Context) {
	rec, err := w.q.RecoverExpired(ctx, w.cfg.ID, w.cfg.MaxAttempts)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("taking back claims of gone replicas failed", "err", err)
		}
		return
	}
	if rec.Requeued > 0 || rec.Exhausted > 0 {
		w.log.Warn("took back requests whose worker stopped before recording a result (gone silent, or its lease expired)",
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
	backoff := newDBBackoff()
	for {
		err := w.q.Listen(ctx, backoff.Reset, w.nudge)
		if ctx.Err() != nil {
			return
		}
		wait := backoff.NextBackOff()
		w.log.Warn("LISTEN connection lost; polling until it is back", "err", err, "retry_in", wait)
		w.nudge() // a notification may have been lost with the connection
		sleep(ctx, wait)
	}
}

// every runs f now and then every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, f func(context.Context)) {
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
