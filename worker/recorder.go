package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// record writes results to the queue in batches until the results channel is closed.
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
// the claims are then taken back and the requests run again, which is harmless.
//
// A batch the database refuses for good (queue.Unrecordable) is split in halves until the
// result at fault stands alone: everything beside it is recorded, and it is failed alone.
func (w *Worker) finish(ctx context.Context, batch []queue.Result) {
	backoff := newDBBackoff()
	for failures := 0; ; failures++ {
		finish := w.q.Finish
		if failures > 0 {
			// The failed try may have committed with only its answer lost.
			finish = w.q.FinishAgain
		}
		applied, err := finish(ctx, w.cfg.ID, batch)
		if err == nil {
			w.countApplied(batch, applied)
			return
		}
		if queue.Unrecordable(err) {
			// Refused by the statement itself: nothing of this batch was written.
			w.finishApart(ctx, batch, err)
			return
		}
		if ctx.Err() != nil {
			w.log.Error("could not record results before shutdown; their claims will be taken back and they will run again",
				"requests", len(batch), "err", err)
			return
		}
		wait := backoff.NextBackOff()
		w.log.Error("recording results failed; retrying", "requests", len(batch), "err", err, "retry_in", wait)
		sleep(ctx, wait)
	}
}

func (w *Worker) finishApart(ctx context.Context, batch []queue.Result, err error) {
	if len(batch) > 1 {
		half := len(batch) / 2
		w.finish(ctx, batch[:half])
		w.finish(ctx, batch[half:])
		return
	}
	r := batch[0]
	if r.ErrorCode == unrecordableCode {
		// Even the plain failure was refused: leave the row to lease recovery, which records
		// why it stopped, and keep the loop going.
		w.log.Error("could not record that a result could not be recorded; the request will be taken back when its lease expires",
			"request_id", r.ID, "err", err)
		return
	}
	w.log.Error("the database refused this request's result; failing it alone so that the others are recorded",
		"request_id", r.ID, "transition", r.Transition.String(), "outcome", r.Outcome, "err", err)
	w.finish(ctx, []queue.Result{unrecordable(r, err)})
}

// unrecordableCode is last_error_code of a request whose result the database refused.
const unrecordableCode = "unrecordable_result"

// unrecordable is what is recorded instead of a result the database refused: the request
// fails, with the reason, for a person to look at and requeue. Its calls are dropped, since
// they may be what was refused; the reason names what they found.
func unrecordable(r queue.Result, err error) queue.Result {
	found := r.Transition.String()
	if r.Outcome != "" {
		found += " " + r.Outcome
	}
	return queue.Result{
		ID:         r.ID,
		Attempt:    r.Attempt,
		Token:      r.Token,
		Transition: queue.Fail,
		Outcome:    queue.OutcomeInvalid,
		ErrorCode:  unrecordableCode,
		Error: fmt.Sprintf("the worker could not record this request's result (%s, after %d call(s)): %v; "+
			"check the database's constraints, then requeue it", found, len(r.Calls), err),
	}
}

func (w *Worker) countApplied(batch []queue.Result, applied []int64) {
	ok := make(map[int64]bool, len(applied))
	for _, id := range applied {
		ok[id] = true
	}
	for _, r := range batch {
		if !ok[r.ID] {
			w.log.Warn("result not recorded: the claim was taken back (this replica was counted gone, or the lease expired); the request runs again elsewhere",
				"request_id", r.ID, "attempt", r.Attempt, "transition", r.Transition.String())
			continue
		}
		if r.Transition == queue.Succeed || r.Transition == queue.Fail {
			w.metrics.Completed.WithLabelValues(r.Outcome).Inc()
		}
	}
}
