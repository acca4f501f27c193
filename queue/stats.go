package queue

import (
	"context"
	"fmt"
	"time"
)

// Stats are the figures behind the queue gauges. Each is read through a partial index over
// unfinished or failed rows, never by scanning the finished ones, so the query stays cheap
// however many succeeded rows the table keeps.
type Stats struct {
	Pending, Running, Failed int64
	// OldestPending is the receipt time of the oldest pending request; zero when none.
	OldestPending time.Time
	// Overdue counts pending or running requests past their due_at.
	Overdue int64
	// DueSoon counts pending or running requests due within the DueSoonWindow.
	DueSoon int64
	// Now is the database's clock when the figures were read.
	Now time.Time
}

// DueSoonWindow is how close to its deadline an open request must be to count as due soon.
const DueSoonWindow = 7 * 24 * time.Hour

// Stats reads the queue gauges in one statement.
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	const statsSQL = `
SELECT
    (SELECT count(*) FROM erasure_requests WHERE status = 'pending'),
    (SELECT count(*) FROM erasure_requests WHERE status = 'running'),
    (SELECT count(*) FROM erasure_requests WHERE status = 'failed'),
    (SELECT min(received_at) FROM erasure_requests WHERE status = 'pending'),
    (SELECT count(*) FROM erasure_requests WHERE status IN ('pending', 'running') AND due_at < now()),
    (SELECT count(*) FROM erasure_requests
        WHERE status IN ('pending', 'running') AND due_at < now() + $1 * interval '1 second'),
    now()`
	var s Stats
	var oldest *time.Time
	err := q.pool.QueryRow(ctx, statsSQL, int64(DueSoonWindow/time.Second)).
		Scan(&s.Pending, &s.Running, &s.Failed, &oldest, &s.Overdue, &s.DueSoon, &s.Now)
	if err != nil {
		return Stats{}, fmt.Errorf("queue stats: %w", err)
	}
	if oldest != nil {
		s.OldestPending = *oldest
	}
	return s, nil
}

// OldestPendingAge is how long the oldest pending request has waited; zero when none waits.
func (s Stats) OldestPendingAge() time.Duration {
	if s.OldestPending.IsZero() {
		return 0
	}
	return s.Now.Sub(s.OldestPending)
}

// Summary is what `erasure-worker status` shows: exact counts (a full scan, fine for a person
// asking now and then, never for a scrape), the gauges, and the latest failures.
type Summary struct {
	Stats
	ByOutcome      []OutcomeCount
	Retries        int64 // calls that ended retryable or rate limited
	Calls          int64
	RecentFailures []Failure
	// Throughput over the latest stretch of activity (up to ten minutes).
	CompletedRecently int64
	ActiveSeconds     float64
}

// OutcomeCount is the number of requests with a status and outcome.
type OutcomeCount struct {
	Status  string
	Outcome string // empty for pending and running
	Count   int64
}

// Failure is a failed request, for a person to act on.
type Failure struct {
	ID          int64
	RequestRef  string
	Outcome     string
	ErrorCode   string
	Error       string
	Attempts    int
	CompletedAt time.Time
}

// Summarize reads the Summary with up to recent failures.
func (q *Queue) Summarize(ctx context.Context, recent int) (Summary, error) {
	var sum Summary
	var err error
	if sum.Stats, err = q.Stats(ctx); err != nil {
		return Summary{}, err
	}
	rows, err := q.pool.Query(ctx, `
SELECT status, coalesce(outcome, ''), count(*)
FROM erasure_requests
GROUP BY 1, 2
ORDER BY array_position(ARRAY['pending', 'running', 'succeeded', 'failed'], status), 2`)
	if err != nil {
		return Summary{}, fmt.Errorf("status counts: %w", err)
	}
	for rows.Next() {
		var c OutcomeCount
		if err := rows.Scan(&c.Status, &c.Outcome, &c.Count); err != nil {
			rows.Close()
			return Summary{}, fmt.Errorf("status counts: %w", err)
		}
		sum.ByOutcome = append(sum.ByOutcome, c)
	}
	if err := rows.Err(); err != nil {
		return Summary{}, fmt.Errorf("status counts: %w", err)
	}

	err = q.pool.QueryRow(ctx, `
WITH recent AS (
    SELECT started_at, started_at + duration_ms * interval '1 millisecond' AS ended_at
    FROM erasure_attempts
    WHERE started_at > (SELECT max(started_at) FROM erasure_attempts) - interval '10 minutes'
)
SELECT
    (SELECT count(*) FROM erasure_attempts),
    (SELECT count(*) FROM erasure_attempts WHERE result IN ('retryable', 'rate_limited')),
    (SELECT count(*) FROM erasure_requests
        WHERE completed_at >= (SELECT min(started_at) FROM recent)),
    coalesce((SELECT extract(epoch FROM max(ended_at) - min(started_at)) FROM recent), 0)::float8`).
		Scan(&sum.Calls, &sum.Retries, &sum.CompletedRecently, &sum.ActiveSeconds)
	if err != nil {
		return Summary{}, fmt.Errorf("status activity: %w", err)
	}

	rows, err = q.pool.Query(ctx, `
SELECT id, request_ref, outcome, coalesce(last_error_code, ''), coalesce(last_error, ''), attempts, completed_at
FROM erasure_requests
WHERE status = 'failed'
ORDER BY completed_at DESC, id DESC
LIMIT $1`, recent)
	if err != nil {
		return Summary{}, fmt.Errorf("recent failures: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var f Failure
		if err := rows.Scan(&f.ID, &f.RequestRef, &f.Outcome, &f.ErrorCode, &f.Error, &f.Attempts, &f.CompletedAt); err != nil {
			return Summary{}, fmt.Errorf("recent failures: %w", err)
		}
		sum.RecentFailures = append(sum.RecentFailures, f)
	}
	if err := rows.Err(); err != nil {
		return Summary{}, fmt.Errorf("recent failures: %w", err)
	}
	return sum, nil
}

// RequeueFilter chooses which failed requests go back to pending. Exactly one of its fields is
// set: the caller decides what "all" means, never a zero value.
type RequeueFilter struct {
	All       bool
	Refs      []string // by request_ref
	ErrorCode string   // by last_error_code (Knot's error_code, or ours: http_403, exhausted...)
	Outcome   string   // by outcome: rejected, invalid, exhausted
}

func (f RequeueFilter) validate() error {
	set := 0
	if f.All {
		set++
	}
	if len(f.Refs) > 0 {
		set++
	}
	if f.ErrorCode != "" {
		set++
	}
	if f.Outcome != "" {
		set++
	}
	if set != 1 {
		return fmt.Errorf("requeue: choose exactly one of all, request refs, error code or outcome")
	}
	return nil
}

// requeueMatches is a RequeueFilter as SQL: $1 all, $2 refs, $3 error code, $4 outcome.
const requeueMatches = `($1 OR request_ref = ANY($2::text[]) OR last_error_code = $3 OR outcome = $4)`

func (f RequeueFilter) refs() []string {
	if len(f.Refs) > 0 {
		return f.Refs
	}
	return nil
}

// Requeue puts failed requests back to pending with a fresh set of attempts and returns how
// many. Their last_error stays for the record; erasure_attempts keeps every earlier call. A
// failed request whose raw id was pseudonymised stays failed (the schema refuses it as pending):
// RequeueSkipped counts those.
func (q *Queue) Requeue(ctx context.Context, f RequeueFilter) (int64, error) {
	if err := f.validate(); err != nil {
		return 0, err
	}
	// Reports of the failure not yet delivered wait again for the new outcome; one already
	// delivered stays delivered (a receiver may take no status after a final one). A report
	// at intake is about the intake, which stands: it is left as it is.
	var n int64
	err := q.pool.QueryRow(ctx, `
WITH requeued AS (
    UPDATE erasure_requests
    SET status = 'pending', outcome = NULL, completed_at = NULL, attempts = 0, run_after = now(), claim_token = NULL
    WHERE status = 'failed' AND pseudonymised_at IS NULL AND `+requeueMatches+`
    RETURNING id
),
unreported AS (
    UPDATE erasure_reports rep
    SET status = 'waiting', run_after = NULL, ready_at = NULL, lease_owner = NULL, lease_token = NULL
    FROM requeued r
    WHERE rep.request_id = r.id AND rep.status IN ('pending', 'delivering', 'failed') AND NOT rep.at_intake
)
SELECT count(*) FROM requeued`,
		f.All, f.refs(), nonEmpty(f.ErrorCode), nonEmpty(f.Outcome)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("requeue: %w", err)
	}
	if n > 0 {
		_ = q.notify(ctx)
	}
	return n, nil
}
