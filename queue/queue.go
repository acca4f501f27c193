// Package queue holds every SQL statement the service sends: claim, finish (complete,
// reschedule, fail, release), recover, intake, requeue and stats. It knows nothing of HTTP or of
// Knot; the worker decides what a result means and tells the queue which transition to make.
//
// Every transition of a claimed row is fenced: it applies only while the row is still running
// under the same lease owner and attempt number, so a worker that lost its lease can never
// overwrite a newer result.
package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Channel is the LISTEN/NOTIFY channel on which new or released work is announced.
const Channel = "erasure_requests"

// DefaultDeadline is how long after receipt a request is due when the intake names no due_at:
// the one month GDPR allows, rounded down to 30 days. The table's default says the same.
const DefaultDeadline = 30 * 24 * time.Hour

// Status values of erasure_requests.status.
const (
	StatusPending   = "pending"
	StatusRunning   = "running"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
)

// Outcome values of erasure_requests.outcome.
const (
	OutcomeDeleted   = "deleted"   // succeeded: Knot deleted the user
	OutcomeNotFound  = "not_found" // succeeded: Knot has no such user (never existed or already deleted)
	OutcomeRejected  = "rejected"  // failed: Knot refused the request for good (400, 403)
	OutcomeInvalid   = "invalid"   // failed: the row could not be sent at all (bad external_user_id)
	OutcomeExhausted = "exhausted" // failed: every attempt allowed was spent on retryable errors
)

// Queue runs the service's SQL against a pool.
type Queue struct {
	pool *pgxpool.Pool
}

// New returns a Queue using pool. The pool's owner closes it.
func New(pool *pgxpool.Pool) *Queue {
	return &Queue{pool: pool}
}

// Pool returns the pool the queue runs on.
func (q *Queue) Pool() *pgxpool.Pool { return q.pool }

// Job is a claimed request: the worker holds its lease until LeaseExpiresAt.
type Job struct {
	ID             int64
	RequestRef     string
	ExternalUserID string
	// Attempt is this claim's attempt number (1 for the first). With the owner it fences every
	// transition of the row.
	Attempt        int
	DueAt          time.Time
	LeaseExpiresAt time.Time
}

// Claim leases up to limit runnable pending requests to owner for leaseFor and returns them.
// It is one statement, committed at once: no transaction stays open while the worker calls Knot.
// Rows locked by a concurrent claim are skipped, so two workers never hold one row.
func (q *Queue) Claim(ctx context.Context, owner string, limit int, leaseFor time.Duration) ([]Job, error) {
	if limit <= 0 {
		return nil, nil
	}
	// The CTE is an optimisation fence: without it the planner may lock more rows than LIMIT.
	const claimSQL = `
WITH picked AS (
    SELECT id FROM erasure_requests
    WHERE status = 'pending' AND run_after <= now()
    ORDER BY run_after, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE erasure_requests r
SET status = 'running',
    attempts = r.attempts + 1,
    lease_owner = $1,
    lease_expires_at = now() + $3 * interval '1 millisecond'
FROM picked
WHERE r.id = picked.id
RETURNING r.id, r.request_ref, r.external_user_id, r.attempts, r.due_at, r.lease_expires_at`
	rows, err := q.pool.Query(ctx, claimSQL, owner, limit, leaseFor.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	defer rows.Close()
	var jobs []Job
	for rows.Next() {
		var j Job
		if err := rows.Scan(&j.ID, &j.RequestRef, &j.ExternalUserID, &j.Attempt, &j.DueAt, &j.LeaseExpiresAt); err != nil {
			return nil, fmt.Errorf("claim: %w", err)
		}
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	return jobs, nil
}

// Transition is what becomes of a claimed request.
type Transition int

const (
	// Succeed finishes the request with Outcome deleted or not_found.
	Succeed Transition = iota + 1
	// Fail finishes the request with Outcome rejected, invalid or exhausted.
	Fail
	// Retry puts the request back to pending until RunAfter; the attempt counts.
	Retry
	// Release puts the request back to pending until RunAfter (zero: now) without spending
	// the attempt: for claims never sent (shutdown, pause) and for answers that are no fault of
	// the request (429, rejected credentials).
	Release
)

func (t Transition) String() string {
	switch t {
	case Succeed:
		return "succeed"
	case Fail:
		return "fail"
	case Retry:
		return "retry"
	case Release:
		return "release"
	}
	return fmt.Sprintf("Transition(%d)", int(t))
}

// Result is the transition of one claimed request, with the calls made for it.
type Result struct {
	ID         int64
	Attempt    int // the Job's Attempt: the fence
	Transition Transition
	Outcome    string    // Succeed and Fail only
	ErrorCode  string    // kept in last_error_code; empty leaves the previous one
	Error      string    // kept in last_error; empty leaves the previous one
	RunAfter   time.Time // Retry and Release; zero means now
	Calls      []Call    // the evidence, recorded whatever the fence decides
}

// Call is one call to Knot (or one refusal to call), as erasure_attempts records it.
type Call struct {
	StartedAt  time.Time
	Duration   time.Duration
	HTTPStatus int    // 0: no HTTP answer
	ErrorCode  string // Knot's error_code, or ours for answers without one
	Result     string // deleted, not_found, permanent, retryable, rate_limited, unauthorized, invalid
}

// maxErrorBytes bounds last_error, as the table's constraint does.
const maxErrorBytes = 2048

// Finish applies results for requests that owner claimed, in one statement, and returns the
// IDs it applied. A result whose lease was lost (expired and recovered, or claimed anew) is not
// applied and its ID is not returned; its calls are still recorded, because they happened.
func (q *Queue) Finish(ctx context.Context, owner string, results []Result) (applied []int64, err error) {
	return q.finish(ctx, owner, results, finishSQL)
}

// FinishAgain is Finish for a batch whose earlier Finish failed. That one may have committed
// with only its answer lost (the database crashed, the connection broke): FinishAgain writes
// each call into erasure_attempts once, and returns as applied the results whose rows already
// hold what they set. Finish skips these checks, which cost a lookup per call.
func (q *Queue) FinishAgain(ctx context.Context, owner string, results []Result) (applied []int64, err error) {
	return q.finish(ctx, owner, results, finishAgainSQL)
}

// One round trip for the whole batch: the fenced UPDATE and the evidence INSERT are both
// data-modifying CTEs, which Postgres always runs to completion.
const (
	finishInputSQL = `
WITH input AS (
    SELECT * FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::timestamptz[], $9::bool[])
        AS t(id, attempt, status, outcome, error_code, error, run_after, refund)
),
finished AS (
    UPDATE erasure_requests r
    SET status = i.status,
        outcome = i.outcome,
        attempts = CASE WHEN i.refund THEN r.attempts - 1 ELSE r.attempts END,
        run_after = CASE WHEN i.status = 'pending' THEN coalesce(i.run_after, now()) ELSE r.run_after END,
        completed_at = CASE WHEN i.status IN ('succeeded', 'failed') THEN now() END,
        last_error = coalesce(i.error, r.last_error),
        last_error_code = coalesce(i.error_code, r.last_error_code),
        lease_owner = NULL,
        lease_expires_at = NULL
    FROM input i
    WHERE r.id = i.id
      AND r.status = 'running'
      AND r.lease_owner = $1
      AND r.attempts = i.attempt
    RETURNING r.id
),
calls AS (
    SELECT * FROM unnest($10::bigint[], $11::int[], $12::timestamptz[], $13::int[], $14::int[], $15::text[], $16::text[])
        AS c(request_id, attempt, started_at, duration_ms, http_status, error_code, result)
),`
	finishSQL = finishInputSQL + `
evidence AS (
    INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, error_code, result)
    SELECT c.request_id, c.attempt, $1, c.started_at, c.duration_ms, c.http_status, c.error_code, c.result
    FROM calls c
)
SELECT id FROM finished`
	// A call of this batch already in erasure_attempts was written by the earlier try, which
	// therefore committed: its results are applied if their rows hold what they set.
	finishAgainSQL = finishInputSQL + `
recorded AS (
    SELECT i.id FROM input i JOIN erasure_requests r ON r.id = i.id
    WHERE r.status = i.status
      AND r.outcome IS NOT DISTINCT FROM i.outcome
      AND EXISTS (SELECT 1 FROM calls c JOIN erasure_attempts e
                      ON e.request_id = c.request_id AND e.attempt = c.attempt AND e.started_at = c.started_at
                  WHERE c.request_id = i.id AND e.worker = $1)
),
evidence AS (
    INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, error_code, result)
    SELECT c.request_id, c.attempt, $1, c.started_at, c.duration_ms, c.http_status, c.error_code, c.result
    FROM calls c
    WHERE NOT EXISTS (SELECT 1 FROM erasure_attempts e
                      WHERE e.request_id = c.request_id AND e.attempt = c.attempt
                        AND e.worker = $1 AND e.started_at = c.started_at)
)
SELECT id FROM finished UNION ALL SELECT id FROM recorded`
)

func (q *Queue) finish(ctx context.Context, owner string, results []Result, stmt string) (applied []int64, err error) {
	if len(results) == 0 {
		return nil, nil
	}
	n := len(results)
	var (
		ids       = make([]int64, n)
		attempts  = make([]int32, n)
		statuses  = make([]string, n)
		outcomes  = make([]*string, n)
		codes     = make([]*string, n)
		errs      = make([]*string, n)
		runAfters = make([]*time.Time, n)
		refunds   = make([]bool, n)

		callReq     []int64
		callAttempt []int32
		callStarted []time.Time
		callMillis  []int32
		callStatus  []*int32
		callCode    []*string
		callResult  []string
	)
	for i, r := range results {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("finish request %d: %w", r.ID, err)
		}
		ids[i], attempts[i] = r.ID, int32(r.Attempt)
		switch r.Transition {
		case Succeed:
			statuses[i] = StatusSucceeded
		case Fail:
			statuses[i] = StatusFailed
		case Retry, Release:
			statuses[i] = StatusPending
			refunds[i] = r.Transition == Release
			if !r.RunAfter.IsZero() {
				runAfters[i] = &r.RunAfter
			}
		}
		outcomes[i] = nonEmpty(r.Outcome)
		codes[i] = nonEmpty(r.ErrorCode)
		errs[i] = nonEmpty(truncate(r.Error, maxErrorBytes))
		for _, c := range r.Calls {
			callReq = append(callReq, r.ID)
			callAttempt = append(callAttempt, int32(r.Attempt))
			callStarted = append(callStarted, c.StartedAt)
			callMillis = append(callMillis, int32(c.Duration.Milliseconds()))
			var status *int32
			if c.HTTPStatus != 0 {
				s := int32(c.HTTPStatus)
				status = &s
			}
			callStatus = append(callStatus, status)
			callCode = append(callCode, nonEmpty(c.ErrorCode))
			callResult = append(callResult, c.Result)
		}
	}

	// Sent as an unnamed statement, so that each batch gets a plan for its own size: prepared,
	// Postgres switches to a generic plan after five runs, guesses ten rows from unnest, and
	// joins by a nested loop that rescans the batch once per running row (167ms instead of
	// 18ms for 480 results).
	rows, err := q.pool.Query(ctx, stmt, pgx.QueryExecModeExec, owner,
		ids, attempts, statuses, outcomes, codes, errs, runAfters, refunds,
		callReq, callAttempt, callStarted, callMillis, callStatus, callCode, callResult)
	if err != nil {
		return nil, fmt.Errorf("finish: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("finish: %w", err)
		}
		applied = append(applied, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("finish: %w", err)
	}
	if claimableNow(results) {
		// Rows put back for now are claimable at once: tell idle replicas rather than wait for
		// a poll. Best effort: polling picks them up anyway.
		_ = q.notify(ctx)
	}
	return applied, nil
}

func claimableNow(results []Result) bool {
	for _, r := range results {
		back := r.Transition == Release || r.Transition == Retry
		if back && (r.RunAfter.IsZero() || !r.RunAfter.After(time.Now())) {
			return true
		}
	}
	return false
}

func (r Result) validate() error {
	switch r.Transition {
	case Succeed:
		if r.Outcome != OutcomeDeleted && r.Outcome != OutcomeNotFound {
			return fmt.Errorf("succeed needs outcome %q or %q, not %q", OutcomeDeleted, OutcomeNotFound, r.Outcome)
		}
	case Fail:
		if r.Outcome != OutcomeRejected && r.Outcome != OutcomeInvalid && r.Outcome != OutcomeExhausted {
			return fmt.Errorf("fail needs outcome %q, %q or %q, not %q", OutcomeRejected, OutcomeInvalid, OutcomeExhausted, r.Outcome)
		}
	case Retry, Release:
		if r.Outcome != "" {
			return fmt.Errorf("%s takes no outcome, got %q", r.Transition, r.Outcome)
		}
	default:
		return errors.New("no transition")
	}
	return nil
}

// Release puts claimed requests back to pending at once without spending their attempts: the
// claims were never sent.
func (q *Queue) Release(ctx context.Context, owner string, jobs []Job) ([]int64, error) {
	results := make([]Result, len(jobs))
	for i, j := range jobs {
		results[i] = Result{ID: j.ID, Attempt: j.Attempt, Transition: Release}
	}
	return q.Finish(ctx, owner, results)
}

// Recovered counts what RecoverExpired did.
type Recovered struct {
	Requeued  int // back to pending
	Exhausted int // failed: the lost lease was their last allowed attempt
}

// RecoverExpired puts requests whose lease has expired back to pending, from any owner: the
// worker that held them crashed or lost the database. A request whose lost attempt was its
// maxAttempts-th fails as exhausted instead of running again.
func (q *Queue) RecoverExpired(ctx context.Context, maxAttempts int) (Recovered, error) {
	const recoverSQL = `
WITH expired AS (
    SELECT id FROM erasure_requests
    WHERE status = 'running' AND lease_expires_at < now()
    FOR UPDATE SKIP LOCKED
),
recovered AS (
    UPDATE erasure_requests r
    SET status = CASE WHEN r.attempts >= $1 THEN 'failed' ELSE 'pending' END,
        outcome = CASE WHEN r.attempts >= $1 THEN 'exhausted' END,
        completed_at = CASE WHEN r.attempts >= $1 THEN now() END,
        run_after = now(),
        last_error = 'lease expired: the worker holding the request (' || r.lease_owner || ') stopped before recording a result',
        last_error_code = 'lease_expired',
        lease_owner = NULL,
        lease_expires_at = NULL
    FROM expired
    WHERE r.id = expired.id
    RETURNING r.status
)
SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed')
FROM recovered`
	var rec Recovered
	if err := q.pool.QueryRow(ctx, recoverSQL, maxAttempts).Scan(&rec.Requeued, &rec.Exhausted); err != nil {
		return Recovered{}, fmt.Errorf("recover expired leases: %w", err)
	}
	if rec.Requeued > 0 {
		_ = q.notify(ctx)
	}
	return rec, nil
}

func (q *Queue) notify(ctx context.Context) error {
	_, err := q.pool.Exec(ctx, `SELECT pg_notify($1, '')`, Channel)
	return err
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
