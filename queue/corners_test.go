package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// A released claim gives its attempt back, so the owner's next claim of the row carries the
// same attempt number. A FinishAgain of that release (its answer lost) must not land on the
// new, live claim.
func TestFinishAgainOfAReleaseDoesNotHitTheNextClaim(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 1)
	first, err := q.Claim(b.ctx, "w1", 1, time.Minute)
	if err != nil || len(first) != 1 {
		t.Fatalf("claim: %v %v", err, first)
	}
	release := first[0].Result()
	release.Transition = queue.Release
	if applied, err := q.Finish(b.ctx, "w1", []queue.Result{release}); err != nil || len(applied) != 1 {
		t.Fatalf("release: %v %v", applied, err)
	}
	second, err := q.Claim(b.ctx, "w1", 1, time.Minute)
	if err != nil || len(second) != 1 || second[0].Attempt != first[0].Attempt {
		t.Fatalf("re-claim: %v %+v (want the same attempt number %d)", err, second, first[0].Attempt)
	}
	if second[0].Token == first[0].Token {
		t.Fatalf("two claims of the row share the token %d", first[0].Token)
	}

	// The release is sent again, as the recorder does when the first answer was lost.
	if applied, err := q.FinishAgain(b.ctx, "w1", []queue.Result{release}); err != nil || len(applied) != 0 {
		t.Fatalf("retried release of the first claim: applied %v, %v; want none (the row is claimed anew)", applied, err)
	}
	if r := b.row(t, second[0].ID); r.Status != queue.StatusRunning || r.Attempts != 1 {
		t.Fatalf("the live claim was overwritten by the first claim's release: %+v", r)
	}
	done := second[0].Result()
	done.Transition, done.Outcome = queue.Succeed, queue.OutcomeDeleted
	if applied, err := q.Finish(b.ctx, "w1", []queue.Result{done}); err != nil || len(applied) != 1 {
		t.Fatalf("the live claim's own result was fenced out: %v %v", applied, err)
	}
}

// A replica whose heartbeat row has expired is gone: its claims go back at once, long before
// their leases run out. Live replicas, and owners that never heartbeat, keep theirs.
func TestRecoverTakesBackClaimsOfAGoneReplicaAtOnce(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 6)
	for _, id := range []string{"gone", "alive"} {
		if _, err := q.Beat(b.ctx, queue.Heartbeat{ID: id, Busy: true, CeilingRPS: 10, Burst: 1, StepRPS: 1, Quiet: time.Second, TTL: time.Minute, IdleWeight: 0.01}); err != nil {
			t.Fatal(err)
		}
	}
	for _, owner := range []string{"gone", "alive", "no-heartbeat"} {
		if jobs, err := q.Claim(b.ctx, owner, 2, time.Hour); err != nil || len(jobs) != 2 {
			t.Fatalf("claim for %s: %v %v", owner, jobs, err)
		}
	}
	// gone stops heartbeating: its row expires (three missed heartbeats in the worker).
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_workers SET expires_at = now() - interval '1 second' WHERE id = 'gone'`); err != nil {
		t.Fatal(err)
	}
	// gone itself, back from a database outage before its next heartbeat, keeps its claims.
	if rec, err := q.RecoverExpired(b.ctx, "gone", 10); err != nil || rec != (queue.Recovered{}) {
		t.Fatalf("a replica took back its own claims for a lapsed heartbeat: %+v %v", rec, err)
	}
	rec, err := q.RecoverExpired(b.ctx, "recoverer", 10)
	if err != nil || rec != (queue.Recovered{Requeued: 2}) {
		t.Fatalf("recover: %+v %v; want gone's 2 claims back", rec, err)
	}
	if n := b.count(t, `status = 'pending' AND last_error_code = 'worker_gone' AND last_error LIKE '%(gone) stopped heartbeating%'`); n != 2 {
		t.Fatalf("%d rows back with worker_gone, want 2", n)
	}
	if n := b.count(t, `status = 'running' AND lease_owner IN ('alive', 'no-heartbeat')`); n != 4 {
		t.Fatalf("%d claims of live owners left running, want 4", n)
	}
}

// A replica that leaves while still holding claims (its last results could not be recorded)
// is marked gone, so that any replica takes them back at once.
func TestLeaveWithClaimsMarksTheReplicaGone(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 1)
	if _, err := q.Beat(b.ctx, queue.Heartbeat{ID: "w1", CeilingRPS: 10, TTL: time.Minute, IdleWeight: 0.01}); err != nil {
		t.Fatal(err)
	}
	if jobs, err := q.Claim(b.ctx, "w1", 1, time.Hour); err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %v %v", jobs, err)
	}
	if err := q.Leave(b.ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	if rec, err := q.RecoverExpired(b.ctx, "recoverer", 10); err != nil || rec.Requeued != 1 {
		t.Fatalf("recover after leaving with a claim: %+v %v", rec, err)
	}
	if err := q.Leave(b.ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_workers`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("a replica that left holding nothing keeps its row: %d %v", rows, err)
	}
}

// A result the database will never accept fails the whole statement, and says so, so that the
// worker can split the batch instead of retrying it forever; the good results beside it are
// then recorded.
func TestFinishOfAResultTheDatabaseRefusesIsUnrecordable(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 2)
	if _, err := b.pool.Exec(b.ctx, `ALTER TABLE erasure_requests ADD CONSTRAINT poison CHECK (request_ref <> 'ref-1' OR status <> 'succeeded')`); err != nil {
		t.Fatal(err)
	}
	jobs, err := q.Claim(b.ctx, "w1", 2, time.Minute)
	if err != nil || len(jobs) != 2 {
		t.Fatalf("claim: %v %v", jobs, err)
	}
	results := make([]queue.Result, 2)
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition, results[i].Outcome = queue.Succeed, queue.OutcomeDeleted
	}
	_, err = q.Finish(b.ctx, "w1", results)
	if err == nil || !queue.Unrecordable(err) {
		t.Fatalf("finish with a refused result: %v; want an unrecordable error", err)
	}
	good := results[0]
	if jobs[0].RequestRef == "ref-1" {
		good = results[1]
	}
	if applied, err := q.Finish(b.ctx, "w1", []queue.Result{good}); err != nil || len(applied) != 1 {
		t.Fatalf("the good result alone: %v %v", applied, err)
	}
	// An invalid result is unrecordable too; a cancelled context is not (it may pass).
	bad := good
	bad.Outcome = ""
	if _, err := q.Finish(b.ctx, "w1", []queue.Result{bad}); !queue.Unrecordable(err) {
		t.Fatalf("succeed without an outcome: %v; want unrecordable", err)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	cancel()
	if _, err := q.Finish(ctx, "w1", []queue.Result{good}); err == nil || queue.Unrecordable(err) {
		t.Fatalf("cancelled finish: %v; want a retryable error", err)
	}
}

// Knot's words are stored whatever bytes they hold: PostgreSQL refuses NUL and invalid UTF-8,
// and one such answer must not cost the batch.
func TestFinishStoresErrorTextPostgresWouldRefuse(t *testing.T) {
	q, b := setup(t)
	job := b.claimOne(t, q)
	r := job.Result()
	r.Transition, r.Outcome = queue.Fail, queue.OutcomeRejected
	r.ErrorCode, r.Error = "BAD\x00CODE", "knot: 400 \xff\xfe bad bytes"
	r.Calls = []queue.Call{{StartedAt: time.Now(), HTTPStatus: 400, ErrorCode: "BAD\x00CODE", Result: "permanent"}}
	if applied, err := q.Finish(b.ctx, "w1", []queue.Result{r}); err != nil || len(applied) != 1 {
		t.Fatalf("finish: %v %v", applied, err)
	}
	if got := b.row(t, job.ID); got.LastErrorCode != "BADCODE" || !strings.Contains(got.LastError, "bad bytes") {
		t.Fatalf("row: %+v", got)
	}
}

// Delays are counted by the database from when it records the result, whatever the pod's
// clock says.
func TestRetryDelayIsCountedOnTheDatabaseClock(t *testing.T) {
	q, b := setup(t)
	job := b.claimOne(t, q)
	r := job.Result()
	r.Transition, r.Delay = queue.Retry, time.Hour
	if _, err := q.Finish(b.ctx, "w1", []queue.Result{r}); err != nil {
		t.Fatal(err)
	}
	var ahead time.Duration
	if err := b.pool.QueryRow(b.ctx, `SELECT run_after - now() FROM erasure_requests WHERE id = $1`, job.ID).Scan(&ahead); err != nil {
		t.Fatal(err)
	}
	if ahead < 59*time.Minute || ahead > time.Hour {
		t.Fatalf("run_after is %v after the database's now, want 1h", ahead)
	}
}

// Nothing is claimed while a 429's Retry-After holds the deployment: such a claim could only
// wait, and its lease would run out first.
func TestClaimWaitsOutAHold(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 3)
	if _, err := q.Beat(b.ctx, queue.Heartbeat{ID: "w1", CeilingRPS: 10, TTL: time.Minute, IdleWeight: 0.01}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.SlowDown(b.ctx, 0.5, 0.1, time.Hour); err != nil {
		t.Fatal(err)
	}
	if jobs, err := q.Claim(b.ctx, "w1", 3, time.Minute); err != nil || len(jobs) != 0 {
		t.Fatalf("claimed %d during a hold (%v)", len(jobs), err)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_rate_limit SET hold_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if jobs, err := q.Claim(b.ctx, "w1", 3, time.Minute); err != nil || len(jobs) != 3 {
		t.Fatalf("claimed %d after the hold (%v), want 3", len(jobs), err)
	}
}

// While replicas disagree on RATE_LIMIT_RPS and RATE_LIMIT_BURST (a rollout), the deployment
// follows the lowest among the live ones, whichever replica beats.
func TestBeatFollowsTheLowestLimitAmongLiveReplicas(t *testing.T) {
	q, b := setup(t)
	beat := func(id string, ceiling float64, burst int) queue.Deployment {
		t.Helper()
		d, err := q.Beat(b.ctx, queue.Heartbeat{ID: id, Busy: true, CeilingRPS: ceiling, Burst: burst, StepRPS: ceiling / 10,
			Quiet: time.Second, TTL: time.Minute, IdleWeight: 0.01})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	beat("old-1", 100, 10)
	beat("old-2", 100, 10)
	if d := beat("new", 50, 5); d.CeilingRPS != 50 || d.CurrentRPS > 50 || d.Burst != 5 {
		t.Fatalf("new replica's view: %+v; want ceiling and rate 50, burst 5", d)
	}
	for _, id := range []string{"old-1", "old-2", "old-1"} {
		if d := beat(id, 100, 10); d.CeilingRPS != 50 || d.CurrentRPS > 50 || d.Burst != 5 {
			t.Fatalf("%s's view beside the new replica: %+v; want ceiling and rate at most 50, burst 5", id, d)
		}
	}
	// The old replicas are replaced by new ones: once the last lower one is gone, the rest
	// follow their own.
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_workers SET expires_at = now() - interval '1 second' WHERE id = 'new'`); err != nil {
		t.Fatal(err)
	}
	if d := beat("old-1", 100, 10); d.CeilingRPS != 100 || d.Burst != 10 {
		t.Fatalf("after the lower replica left: %+v; want ceiling 100, burst 10", d)
	}
}

// claimOne inserts one request and claims it as w1.
func (b *testBundle) claimOne(t *testing.T, q *queue.Queue) queue.Job {
	t.Helper()
	b.insert(t, 1)
	jobs, err := q.Claim(b.ctx, "w1", 1, time.Minute)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %v %v", jobs, err)
	}
	return jobs[0]
}
