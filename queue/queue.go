// Package queue holds every SQL statement the service sends: claim, finish (complete,
// reschedule, fail, release), recover, intake, requeue and stats. It knows nothing of HTTP or of
// Knot; the worker decides what a result means and tells the queue which transition to make.
//
// Every transition of a claimed row is fenced: it applies only while the row is still running
// under the very claim that the result is for (a token that the claim statement draws from a
// sequence, so no other claim of the row ever carries it), so a worker that lost its lease can
// never overwrite a newer result.
package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// OutcomeMeaning says what an outcome means, for a person reading the evidence; "" for none.
func OutcomeMeaning(outcome string) string {
	switch outcome {
	case OutcomeDeleted:
		return "Knot deleted the user"
	case OutcomeNotFound:
		return "Knot holds no such user (never existed, or already deleted)"
	case OutcomeRejected:
		return "Knot refused the request for good"
	case OutcomeInvalid:
		return "the id could not be sent to Knot at all"
	case OutcomeExhausted:
		return "every attempt allowed failed with a retryable error"
	}
	return ""
}

// Queue runs the service's SQL against a pool, each statement under DefaultStatementTimeout.
type Queue struct {
	pool db
}

// New returns a Queue using pool. The pool's owner closes it. Behind a pooler in transaction
// mode, make the pool's configuration with ParsePoolConfig (or Configure).
func New(pool *pgxpool.Pool) *Queue {
	return &Queue{pool: deadlinePool{Pool: pool, timeout: DefaultStatementTimeout}}
}

// WithStatementTimeout returns a Queue on the same pool whose statements may each take up to
// timeout instead of DefaultStatementTimeout: for a command a person runs and waits for, whose
// statements may read or update a whole large table.
func (q *Queue) WithStatementTimeout(timeout time.Duration) *Queue {
	p := q.pool.(deadlinePool)
	p.timeout = timeout
	return &Queue{pool: p}
}

// Job is a claimed request: the worker holds its lease until LeaseExpiresAt.
type Job struct {
	ID             int64
	RequestRef     string
	ExternalUserID string
	// Attempt is this claim's attempt number (1 for the first), kept with the evidence.
	Attempt int
	// Token identifies this claim and no other: it fences every transition of the row.
	Token          int64
	DueAt          time.Time
	LeaseExpiresAt time.Time
}

// Result starts the result of this claim: its transition and calls are the caller's to fill.
func (j Job) Result() Result { return Result{ID: j.ID, Attempt: j.Attempt, Token: j.Token} }

// Claim leases up to limit runnable pending requests to owner for leaseFor and returns them.
// It is one statement, committed at once: no transaction stays open while the worker calls Knot.
// Rows locked by a concurrent claim are skipped, so two workers never hold one row. Nothing is
// claimed while a 429's Retry-After holds the deployment (erasure_rate_limit.hold_until): a
// claim taken then could only wait, and its lease would run out first.
func (q *Queue) Claim(ctx context.Context, owner string, limit int, leaseFor time.Duration) ([]Job, error) {
	if limit <= 0 {
		return nil, nil
	}
	// The CTE is an optimisation fence: without it the planner may lock more rows than LIMIT.
	const claimSQL = `
WITH picked AS (
    SELECT id FROM erasure_requests
    WHERE status = 'pending' AND run_after <= now()
      AND NOT EXISTS (SELECT 1 FROM erasure_rate_limit WHERE hold_until > now())
    ORDER BY run_after, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE erasure_requests r
SET status = 'running',
    attempts = r.attempts + 1,
    lease_owner = $1,
    lease_expires_at = now() + $3 * interval '1 millisecond',
    claim_token = nextval('erasure_claim_token_seq')
FROM picked
WHERE r.id = picked.id
RETURNING r.id, r.request_ref, r.external_user_id, r.attempts, r.claim_token, r.due_at, r.lease_expires_at`
	rows, err := q.pool.Query(ctx, claimSQL, owner, limit, leaseFor.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	defer rows.Close()
	var jobs []Job
	for rows.Next() {
		var j Job
		if err := rows.Scan(&j.ID, &j.RequestRef, &j.ExternalUserID, &j.Attempt, &j.Token, &j.DueAt, &j.LeaseExpiresAt); err != nil {
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
	// Retry puts the request back to pending for Delay; the attempt counts.
	Retry
	// Release puts the request back to pending for Delay (zero: claimable at once) without
	// spending the attempt: for claims never sent (shutdown, pause, a hold longer than the
	// lease) and for answers that are no fault of the request (429, rejected credentials).
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
	Attempt    int   // the Job's Attempt, for the evidence
	Token      int64 // the Job's Token: the fence
	Transition Transition
	Outcome    string // Succeed and Fail only
	ErrorCode  string // kept in last_error_code; empty leaves the previous one
	Error      string // kept in last_error; empty leaves the previous one
	// Delay is how long a Retry or Release stays unclaimable, counted by the database from
	// when it records the result: every comparison of times is on the database's clock.
	Delay time.Duration
	Calls []Call // the evidence, recorded whatever the fence decides
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
// each call into erasure_attempts once, and returns as applied the results whose rows that
// claim already finished. Finish skips these checks, which cost a lookup per call.
//
// Finish and FinishAgain fail as a whole. An error for which Unrecordable is true will recur
// however often the batch is sent: split the batch to find the result at fault.
func (q *Queue) FinishAgain(ctx context.Context, owner string, results []Result) (applied []int64, err error) {
	return q.finish(ctx, owner, results, finishAgainSQL)
}

// One round trip for the whole batch: the fenced UPDATE and the evidence INSERT are both
// data-modifying CTEs, which Postgres always runs to completion.
const (
	finishInputSQL = `
WITH input AS (
    SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::bigint[], $9::bool[])
        AS t(id, token, status, outcome, error_code, error, delay_ms, released)
),
finished AS (
    UPDATE erasure_requests r
    SET status = i.status,
        outcome = i.outcome,
        attempts = CASE WHEN i.released THEN r.attempts - 1 ELSE r.attempts END,
        run_after = CASE WHEN i.status = 'pending' THEN now() + i.delay_ms * interval '1 millisecond' ELSE r.run_after END,
        completed_at = CASE WHEN i.status IN ('succeeded', 'failed') THEN now() END,
        last_error = coalesce(i.error, r.last_error),
        last_error_code = coalesce(i.error_code, r.last_error_code),
        lease_owner = NULL,
        lease_expires_at = NULL
    FROM input i
    WHERE r.id = i.id
      AND r.status = 'running'
      AND r.lease_owner = $1
      AND r.claim_token = i.token
    RETURNING r.id, r.status
),
-- A finished request's reports become deliverable in the statement that finishes it.
reported AS (
    UPDATE erasure_reports rep
    SET status = 'pending', run_after = greatest(now(), rep.not_before), ready_at = now()
    FROM finished f
    WHERE rep.request_id = f.id AND f.status IN ('succeeded', 'failed') AND rep.status = 'waiting'
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
	// A row that still carries this claim's token but is no longer running was finished by this
	// claim (nothing else moves a row out of running without clearing or replacing the token):
	// the earlier try committed. Its calls are then in erasure_attempts already.
	finishAgainSQL = finishInputSQL + `
recorded AS (
    SELECT i.id FROM input i JOIN erasure_requests r ON r.id = i.id
    WHERE r.claim_token = i.token
      AND r.status <> 'running'
      AND r.status = i.status
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
		ids      = make([]int64, n)
		tokens   = make([]int64, n)
		statuses = make([]string, n)
		outcomes = make([]*string, n)
		codes    = make([]*string, n)
		errs     = make([]*string, n)
		delays   = make([]int64, n)
		released = make([]bool, n)

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
			return nil, &invalidResultError{id: r.ID, err: err}
		}
		ids[i], tokens[i] = r.ID, r.Token
		switch r.Transition {
		case Succeed:
			statuses[i] = StatusSucceeded
		case Fail:
			statuses[i] = StatusFailed
		case Retry, Release:
			statuses[i] = StatusPending
			released[i] = r.Transition == Release
			delays[i] = max(r.Delay.Milliseconds(), 0)
		}
		outcomes[i] = nonEmpty(r.Outcome)
		codes[i] = nonEmpty(storable(r.ErrorCode))
		errs[i] = nonEmpty(truncate(storable(r.Error), maxErrorBytes))
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
			callCode = append(callCode, nonEmpty(storable(c.ErrorCode)))
			callResult = append(callResult, c.Result)
		}
	}

	// Sent as an unnamed statement, so that each batch gets a plan for its own size: prepared,
	// Postgres switches to a generic plan after five runs, guesses ten rows from unnest, and
	// joins by a nested loop that rescans the batch once per running row (167ms instead of
	// 18ms for 480 results).
	rows, err := q.pool.Query(ctx, stmt, pgx.QueryExecModeExec, owner,
		ids, tokens, statuses, outcomes, codes, errs, delays, released,
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
		if (r.Transition == Release || r.Transition == Retry) && r.Delay <= 0 {
			return true
		}
	}
	return false
}

// Unrecordable reports whether err, from Finish or FinishAgain, will recur however often the
// same batch is sent: a result the worker built wrongly, or one the database refuses (a
// constraint it breaks, a value it cannot store). Any other error may pass (the database
// restarting, a connection lost) and the batch is worth sending again.
func Unrecordable(err error) bool {
	var invalid *invalidResultError
	return errors.As(err, &invalid) || isRowError(err)
}

type invalidResultError struct {
	id  int64
	err error
}

func (e *invalidResultError) Error() string {
	return fmt.Sprintf("finish request %d: %v", e.id, e.err)
}

func (e *invalidResultError) Unwrap() error { return e.err }

// storable makes text from outside (Knot's error codes and messages) storable in a text
// column: PostgreSQL refuses NUL bytes and invalid UTF-8, and one such answer must not cost
// the results recorded beside it.
func storable(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "")
}

// Release puts claimed requests back to pending at once without spending their attempts: the
// claims were never sent.
func (q *Queue) Release(ctx context.Context, owner string, jobs []Job) ([]int64, error) {
	results := make([]Result, len(jobs))
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition = Release
	}
	return q.Finish(ctx, owner, results)
}

// Recovered counts what RecoverExpired did.
type Recovered struct {
	Requeued  int // back to pending
	Exhausted int // failed: the lost claim was their last allowed attempt
}

// RecoverExpired takes back, from any owner, running requests whose owner is gone: its row in
// erasure_workers has expired (it stopped heartbeating: killed, or cut off from the database),
// or failing that the lease itself has expired, the backstop for an owner that never
// heartbeats. Their calls in flight may still land; the fence keeps them from overwriting what
// happens next, and a second delete answers USER_NOT_FOUND. A request whose lost attempt was
// its maxAttempts-th fails as exhausted instead of running again. self, the replica asking,
// never takes back its own claims for a lapsed heartbeat (it knows they are alive: its row
// lapsed only because the database was away), only for an expired lease.
func (q *Queue) RecoverExpired(ctx context.Context, self string, maxAttempts int) (Recovered, error) {
	const recoverSQL = `
WITH expired AS (
    SELECT r.id, coalesce(w.expires_at < now() AND r.lease_owner <> $2, false) AS owner_gone
    FROM erasure_requests r
    LEFT JOIN erasure_workers w ON w.id = r.lease_owner
    WHERE r.status = 'running'
      AND (r.lease_expires_at < now() OR (w.expires_at < now() AND r.lease_owner <> $2))
    FOR UPDATE OF r SKIP LOCKED
),
recovered AS (
    UPDATE erasure_requests r
    SET status = CASE WHEN r.attempts >= $1 THEN 'failed' ELSE 'pending' END,
        outcome = CASE WHEN r.attempts >= $1 THEN 'exhausted' END,
        completed_at = CASE WHEN r.attempts >= $1 THEN now() END,
        run_after = now(),
        last_error = CASE WHEN expired.owner_gone
            THEN 'worker gone: the worker holding the request (' || r.lease_owner || ') stopped heartbeating before recording a result'
            ELSE 'lease expired: the worker holding the request (' || r.lease_owner || ') stopped before recording a result' END,
        last_error_code = CASE WHEN expired.owner_gone THEN 'worker_gone' ELSE 'lease_expired' END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        claim_token = NULL
    FROM expired
    WHERE r.id = expired.id
    RETURNING r.id, r.status
),
reported AS (
    UPDATE erasure_reports rep
    SET status = 'pending', run_after = greatest(now(), rep.not_before), ready_at = now()
    FROM recovered f
    WHERE rep.request_id = f.id AND f.status = 'failed' AND rep.status = 'waiting'
)
SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed')
FROM recovered`
	var rec Recovered
	if err := q.pool.QueryRow(ctx, recoverSQL, maxAttempts, self).Scan(&rec.Requeued, &rec.Exhausted); err != nil {
		return Recovered{}, fmt.Errorf("recover expired claims: %w", err)
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
