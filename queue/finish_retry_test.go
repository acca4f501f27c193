package queue_test

import (
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The worker retries a batch whose Finish failed with FinishAgain. When the first try had
// committed and only its answer was lost (the database crashed between commit and reply; `make
// chaos` found this with repeated immediate shutdowns), the retry must neither write the calls
// into the evidence a second time nor report the results as lost.
func TestFinishRetriedAfterALostAnswerWritesOnce(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 3)
	jobs, err := q.Claim(b.ctx, "w1", 3, time.Minute)
	if err != nil || len(jobs) != 3 {
		t.Fatalf("claim: %v %v", err, jobs)
	}
	started := time.Now()
	batch := []queue.Result{
		{ID: jobs[0].ID, Attempt: jobs[0].Attempt, Token: jobs[0].Token, Transition: queue.Succeed, Outcome: queue.OutcomeDeleted,
			Calls: []queue.Call{{StartedAt: started, Duration: 40 * time.Millisecond, HTTPStatus: 200, Result: "deleted"}}},
		{ID: jobs[1].ID, Attempt: jobs[1].Attempt, Token: jobs[1].Token, Transition: queue.Retry, Delay: time.Minute,
			ErrorCode: "http_500", Error: "knot: 500",
			Calls: []queue.Call{
				{StartedAt: started, Duration: time.Millisecond, HTTPStatus: 500, ErrorCode: "http_500", Result: "retryable"},
				{StartedAt: started.Add(200 * time.Millisecond), Duration: time.Millisecond, HTTPStatus: 500, ErrorCode: "http_500", Result: "retryable"},
			}},
		{ID: jobs[2].ID, Attempt: jobs[2].Attempt, Token: jobs[2].Token, Transition: queue.Fail, Outcome: queue.OutcomeRejected,
			ErrorCode: "NO_ACCESS", Error: "knot: 403 NO_ACCESS",
			Calls: []queue.Call{{StartedAt: started.Add(time.Microsecond), HTTPStatus: 403, ErrorCode: "NO_ACCESS", Result: "permanent"}}},
	}
	for try := 1; try <= 2; try++ {
		finish := q.Finish
		if try > 1 {
			finish = q.FinishAgain
		}
		applied, err := finish(b.ctx, "w1", batch)
		if err != nil {
			t.Fatalf("try %d: %v", try, err)
		}
		if len(applied) != len(batch) {
			t.Errorf("try %d: applied %v, want all %d results", try, applied, len(batch))
		}
	}
	var calls int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_attempts`).Scan(&calls); err != nil || calls != 4 {
		t.Errorf("erasure_attempts holds %d calls (%v); 4 were made", calls, err)
	}
	if r := b.row(t, jobs[0].ID); r.Status != queue.StatusSucceeded || r.Attempts != 1 {
		t.Errorf("succeeded row after the retry: %+v", r)
	}
	if r := b.row(t, jobs[1].ID); r.Status != queue.StatusPending || r.Attempts != 1 {
		t.Errorf("retried row after the retry: %+v", r)
	}
}
