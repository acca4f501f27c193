package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The console's reads. Every one is a single SELECT that a role with only SELECT on the tables
// may send: no temporary table, no SET, no lock. Each is bounded by an index or by a window of
// the primary key, so that a page stays quick when millions of finished requests are kept.

// RequestRow is one line of the console's list of requests. It holds no external_user_id.
type RequestRow struct {
	ID          int64
	RequestRef  string
	Status      string
	Outcome     string
	ReceivedAt  time.Time
	DueAt       time.Time
	CompletedAt time.Time // zero while unfinished
}

// Due windows of RequestFilter.Due.
const (
	DueOverdue = "overdue" // open (pending or running) and past due_at
	DueSoon    = "soon"    // open and due within DueSoonWindow, overdue included
)

// RequestFilter chooses the requests of a page of ListRequests; a zero field does not filter.
type RequestFilter struct {
	Status  string
	Outcome string
	// Prefix keeps the requests whose request_ref starts with it (a connector's door).
	Prefix string
	// NoPrefix keeps the requests whose request_ref starts with none of these (the API and the
	// table); ignored when Prefix is set.
	NoPrefix []string
	Due      string // DueOverdue, DueSoon or ""
	// Before keeps ids below it: the keyset cursor, the last id of the previous page.
	Before int64
	Limit  int
}

// ErrBadFilter is returned for a RequestFilter value that no request can have.
var ErrBadFilter = errors.New("bad filter")

// outcomeStatus is the status every outcome implies (the schema's outcome_matches_status):
// saying it lets the planner use the partial index on failed requests.
var outcomeStatus = map[string]string{
	OutcomeDeleted: StatusSucceeded, OutcomeNotFound: StatusSucceeded,
	OutcomeRejected: StatusFailed, OutcomeInvalid: StatusFailed, OutcomeExhausted: StatusFailed,
}

// prefixWindow is how many ids one page filtered by source looks at. Nothing indexes
// request_ref's prefix (the key on request_ref is of the database's collation, where a prefix
// is no range): such a page walks the primary key backwards, which finds a common door's page
// at once but would read the whole table for a rare door's. The window bounds that walk: a
// page lists what matches among these ids and links to the ids below them.
const prefixWindow = 200_000

// RequestPage is one page of ListRequests.
type RequestPage struct {
	Rows []RequestRow
	// SearchedTo, when not 0, is where the page's window of ids ended: the requests below it
	// were not looked at, and the next page starts there (RequestFilter.Before) unless Rows
	// already holds Limit rows. 0: every id below the cursor was looked at.
	SearchedTo int64
}

// ListRequests reads one page of requests, newest first (by id), with the filter's conditions
// only, so that each page is planned for what it asks: through the primary key backwards from
// the cursor, or through the partial index of the rows asked for (pending, running, failed,
// open by due date) when those are few. It never uses OFFSET. A page filtered by source,
// unless it asks for open requests, looks at prefixWindow ids below the cursor at most.
func (q *Queue) ListRequests(ctx context.Context, f RequestFilter) (RequestPage, error) {
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return fmt.Sprintf("$%d", len(args)) }
	status := f.Status
	if f.Outcome != "" {
		implied, ok := outcomeStatus[f.Outcome]
		if !ok {
			return RequestPage{}, fmt.Errorf("%w: outcome %q", ErrBadFilter, f.Outcome)
		}
		if status != "" && status != implied {
			return RequestPage{}, nil // no request has both
		}
		status = implied
		where = append(where, "outcome = "+arg(f.Outcome))
	}
	switch status {
	case "":
	case StatusPending, StatusRunning, StatusSucceeded, StatusFailed:
		where = append(where, "status = "+arg(status))
	default:
		return RequestPage{}, fmt.Errorf("%w: status %q", ErrBadFilter, status)
	}
	switch f.Due {
	case "":
	case DueOverdue:
		where = append(where, "status IN ('pending', 'running') AND due_at < now()")
	case DueSoon:
		where = append(where, "status IN ('pending', 'running') AND due_at < now() + "+arg(int64(DueSoonWindow/time.Second))+" * interval '1 second'")
	default:
		return RequestPage{}, fmt.Errorf("%w: due %q", ErrBadFilter, f.Due)
	}
	bySource := true
	switch {
	case f.Prefix != "":
		p := arg(f.Prefix)
		where = append(where, "left(request_ref, length("+p+"::text)) = "+p)
	case len(f.NoPrefix) > 0:
		where = append(where, "NOT EXISTS (SELECT 1 FROM unnest("+arg(f.NoPrefix)+"::text[]) AS p(prefix) WHERE left(request_ref, length(p.prefix)) = p.prefix)")
	default:
		bySource = false
	}
	var page RequestPage
	// Open requests are few, read through their partial indexes: no window for them.
	if bySource && f.Due == "" && status != StatusPending && status != StatusRunning {
		var lowest, highest int64
		if err := q.pool.QueryRow(ctx, `SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM erasure_requests`).Scan(&lowest, &highest); err != nil {
			return RequestPage{}, fmt.Errorf("list requests: %w", err)
		}
		top := f.Before
		if top <= 0 || top > highest+1 {
			top = highest + 1
		}
		if from := top - prefixWindow; from > lowest {
			page.SearchedTo = from
			where = append(where, "id >= "+arg(from))
		}
		if f.Before <= 0 {
			f.Before = top
		}
	}
	if f.Before > 0 {
		where = append(where, "id < "+arg(f.Before))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	sql := `SELECT id, request_ref, status, coalesce(outcome, ''), received_at, due_at, completed_at FROM erasure_requests`
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY id DESC LIMIT " + arg(limit)
	rows, err := q.pool.Query(ctx, sql, args...)
	if err != nil {
		return RequestPage{}, fmt.Errorf("list requests: %w", err)
	}
	page.Rows, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (RequestRow, error) {
		var r RequestRow
		var completed *time.Time
		err := row.Scan(&r.ID, &r.RequestRef, &r.Status, &r.Outcome, &r.ReceivedAt, &r.DueAt, &completed)
		if completed != nil {
			r.CompletedAt = *completed
		}
		return r, err
	})
	if err != nil {
		return RequestPage{}, fmt.Errorf("list requests: %w", err)
	}
	return page, nil
}

// ReportAttempt is one row of erasure_report_attempts: one try to deliver a report.
type ReportAttempt struct {
	Connector   string
	Target      int
	AttemptedAt time.Time
	Worker      string
	Duration    time.Duration
	HTTPStatus  int // 0: no HTTP answer
	Result      string
	Error       string
}

// Story is one request's whole record for the console: the Record, when its id was
// pseudonymised, and every attempt to deliver each of its reports.
type Story struct {
	Record
	ReportAttempts []ReportAttempt
}

// LookupStory reads the Story of the request with this request_ref, or ErrNotFound. Its two
// statements go through the request_ref key and the request's own indexes.
func (q *Queue) LookupStory(ctx context.Context, requestRef string) (Story, error) {
	rec, err := q.Lookup(ctx, requestRef)
	if err != nil {
		return Story{}, err
	}
	s := Story{Record: rec}
	rows, err := q.pool.Query(ctx, `
SELECT p.connector, p.target, a.attempted_at, a.worker, a.duration_ms, coalesce(a.http_status, 0), a.result, coalesce(a.error, '')
FROM erasure_reports p JOIN erasure_report_attempts a ON a.report_id = p.id
WHERE p.request_id = $1
ORDER BY p.connector, p.target, a.attempted_at, a.id`, rec.ID)
	if err != nil {
		return Story{}, fmt.Errorf("look up report attempts: %w", err)
	}
	s.ReportAttempts, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (ReportAttempt, error) {
		var a ReportAttempt
		var ms int64
		err := row.Scan(&a.Connector, &a.Target, &a.AttemptedAt, &a.Worker, &ms, &a.HTTPStatus, &a.Result, &a.Error)
		a.Duration = time.Duration(ms) * time.Millisecond
		return a, err
	})
	if err != nil {
		return Story{}, fmt.Errorf("look up report attempts: %w", err)
	}
	return s, nil
}

// RecentCalls is how many calls to Knot the evidence records as started in the last Window.
type RecentCalls struct {
	Window time.Duration
	Calls  int64
	// AtLeast is set when the rows read ran out before the window did: Calls is then a floor.
	AtLeast bool
}

// ReadRecentCalls counts the calls to Knot recorded as started in the last window (a refusal
// to call, result invalid, is no call). It reads at most the newest limit rows of
// erasure_attempts, walking its primary key backwards, so its cost is bounded whatever the
// table holds. Calls in flight are not recorded yet.
func (q *Queue) ReadRecentCalls(ctx context.Context, window time.Duration, limit int) (RecentCalls, error) {
	rc := RecentCalls{Window: window}
	err := q.pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE started_at >= now() - $1 * interval '1 millisecond' AND result <> 'invalid'),
       count(*) = $2 AND min(started_at) >= now() - $1 * interval '1 millisecond'
FROM (SELECT started_at, result FROM erasure_attempts ORDER BY id DESC LIMIT $2) AS a`,
		window.Milliseconds(), limit).Scan(&rc.Calls, &rc.AtLeast)
	if err != nil {
		return RecentCalls{}, fmt.Errorf("recent calls: %w", err)
	}
	return rc, nil
}

// firstIDAfter reads the newest id received before since, or 0: the requests received since
// then are the ids above it. It walks the primary key backwards through the rows received
// since then and stops at the first older one, so its cost is the rows of the window, not the
// table's. Ids follow the order of receipt (received_at defaults to the inserting
// transaction's start), so the window's count is exact but for inserts that raced at its edge.
// It is a statement of its own so that the statement reading the window is planned for the
// id it gets: a bound the planner cannot see makes it expect a third of the table, and plan a
// parallel scan compiled by JIT that costs several times the work.
func (q *Queue) firstIDAfter(ctx context.Context, since time.Time) (int64, error) {
	return firstIDAfter(ctx, q.pool, since)
}

func firstIDAfter(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, since time.Time) (int64, error) {
	var id int64
	err := db.QueryRow(ctx, `SELECT coalesce((SELECT id FROM erasure_requests WHERE received_at < $1 ORDER BY id DESC LIMIT 1), 0)`, since).Scan(&id)
	return id, err
}

// IntakeCount is how many requests came in by one door since a time.
type IntakeCount struct {
	Prefix string // "" for the requests whose ref carries none of the prefixes asked about
	Count  int64
}

// IntakeSince counts the requests received since since by ref prefix: one IntakeCount per
// prefix, in the order given, then one for the refs with none of them. A ref is counted under
// the first prefix it starts with. It reads the window of the primary key received since then
// once.
func (q *Queue) IntakeSince(ctx context.Context, since time.Time, prefixes []string) ([]IntakeCount, error) {
	if prefixes == nil {
		prefixes = []string{}
	}
	after, err := q.firstIDAfter(ctx, since)
	if err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	rows, err := q.pool.Query(ctx, `
SELECT coalesce(d.n, 0), count(*)
FROM (SELECT request_ref FROM erasure_requests WHERE id > $1 AND received_at >= $2) AS r
LEFT JOIN LATERAL (
    SELECT p.n FROM unnest($3::text[]) WITH ORDINALITY AS p(prefix, n)
    WHERE left(r.request_ref, length(p.prefix)) = p.prefix ORDER BY p.n LIMIT 1
) AS d ON true
GROUP BY 1`, after, since, prefixes)
	if err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	out := make([]IntakeCount, len(prefixes)+1)
	for i, p := range prefixes {
		out[i].Prefix = p
	}
	var n, count int64
	_, err = pgx.ForEachRow(rows, []any{&n, &count}, func() error {
		if n == 0 { // none of the prefixes: the last line
			n = int64(len(prefixes)) + 1
		}
		out[n-1].Count = count
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	return out, nil
}

// Day is one day's figures of the console's chart (UTC days).
type Day struct {
	Date     time.Time // midnight UTC
	Received int64
	Finished int64
	Due      int64
}

// Daily reads, for each of the days UTC days ending today, the requests received, finished and
// due that day. Received and due are read from the window of the primary key received since
// DefaultDeadline before the first day, so that a request due on a day of the chart with the
// default deadline is counted; one whose due_at was set further than that from its receipt is
// not. Finished is read through the two partial indexes that together hold every finished row.
func (q *Queue) Daily(ctx context.Context, days int, now time.Time) ([]Day, error) {
	if days < 1 {
		return nil, nil
	}
	today := now.UTC().Truncate(24 * time.Hour)
	first := today.AddDate(0, 0, 1-days)
	end := today.AddDate(0, 0, 1)
	out := make([]Day, days)
	index := map[time.Time]int{}
	for i := range out {
		out[i].Date = first.AddDate(0, 0, i)
		index[out[i].Date] = i
	}
	// The figures are read in the background while people read pages: a parallel plan would
	// take every core of a small server from them for seconds, so they are read with one.
	tx, err := q.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("daily figures: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
		return nil, fmt.Errorf("daily figures: %w", err)
	}
	after, err := firstIDAfter(ctx, tx, first.Add(-DefaultDeadline))
	if err != nil {
		return nil, fmt.Errorf("daily figures: %w", err)
	}
	rows, err := tx.Query(ctx, `
WITH w AS (
    SELECT received_at, due_at FROM erasure_requests WHERE id > $4 AND received_at >= $1
),
finished AS (
    SELECT completed_at FROM erasure_requests
    WHERE pseudonymised_at IS NULL AND status IN ('succeeded', 'failed') AND completed_at >= $2 AND completed_at < $3
    UNION ALL
    SELECT completed_at FROM erasure_requests
    WHERE pseudonymised_at IS NOT NULL AND completed_at >= $2 AND completed_at < $3
)
SELECT 'received', date_trunc('day', received_at AT TIME ZONE 'UTC'), count(*) FROM w
    WHERE received_at >= $2 AND received_at < $3 GROUP BY 2
UNION ALL
SELECT 'due', date_trunc('day', due_at AT TIME ZONE 'UTC'), count(*) FROM w
    WHERE due_at >= $2 AND due_at < $3 GROUP BY 2
UNION ALL
SELECT 'finished', date_trunc('day', completed_at AT TIME ZONE 'UTC'), count(*) FROM finished GROUP BY 2`,
		first.Add(-DefaultDeadline), first, end, after)
	if err != nil {
		return nil, fmt.Errorf("daily figures: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var kind string
		var day time.Time
		var n int64
		if err := rows.Scan(&kind, &day, &n); err != nil {
			return nil, fmt.Errorf("daily figures: %w", err)
		}
		i, ok := index[time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, time.UTC)]
		if !ok {
			continue
		}
		switch kind {
		case "received":
			out[i].Received = n
		case "due":
			out[i].Due = n
		case "finished":
			out[i].Finished = n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("daily figures: %w", err)
	}
	return out, nil
}

// ReportBacklog is one connector's reports that are not delivered: waiting for their request
// to finish, pending or being delivered, or failed for good. Delivered reports, the bulk of
// the table, are not counted.
type ReportBacklog struct {
	Connector                            string
	Waiting, Pending, Delivering, Failed int64
	RetriesPending                       int64     // pending or delivering after an attempt
	OldestPending                        time.Time // zero when none is pending or delivering
	LastError                            string    // of the latest failing attempt among them
	Paused                               bool      // the latest attempt was refused as unauthorized
}

// ReportBacklogs reads each connector's ReportBacklog, for the connectors that have one. It reads only the undelivered reports, each status through its partial
// index (erasure_reports_waiting, erasure_reports_undelivered, erasure_reports_failed), so it
// costs the backlog, not the millions of delivered reports kept.
func (q *Queue) ReportBacklogs(ctx context.Context) ([]ReportBacklog, error) {
	// The failed reports are counted from their index alone (they may be many: a receiver that
	// refused for weeks); only one of them is read, for its error, when no undelivered one tells.
	const reportBacklogsSQL = `
WITH undelivered AS (
    SELECT connector, status, attempts, ready_at, run_after, last_error, last_result FROM erasure_reports WHERE status = 'waiting'
    UNION ALL
    SELECT connector, status, attempts, ready_at, run_after, last_error, last_result FROM erasure_reports WHERE status IN ('pending', 'delivering')
),
open AS (
    SELECT connector,
           count(*) FILTER (WHERE status = 'waiting') AS waiting,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'delivering') AS delivering,
           count(*) FILTER (WHERE status <> 'waiting' AND attempts > 0) AS retries,
           min(ready_at) FILTER (WHERE status <> 'waiting') AS oldest,
           (array_agg(last_error ORDER BY run_after DESC NULLS LAST)
                FILTER (WHERE status <> 'waiting' AND last_error IS NOT NULL))[1] AS last_error,
           (array_agg(last_result ORDER BY run_after DESC NULLS LAST)
                FILTER (WHERE status <> 'waiting' AND last_result IS NOT NULL))[1] AS last_result
    FROM undelivered
    GROUP BY connector
),
failed AS (
    SELECT connector, count(*) AS failed FROM erasure_reports WHERE status = 'failed' GROUP BY connector
)
SELECT coalesce(o.connector, f.connector), coalesce(o.waiting, 0), coalesce(o.pending, 0), coalesce(o.delivering, 0),
       coalesce(f.failed, 0), coalesce(o.retries, 0), o.oldest,
       coalesce(o.last_error, (SELECT last_error FROM erasure_reports
                               WHERE status = 'failed' AND connector = f.connector AND last_error IS NOT NULL LIMIT 1)),
       o.last_result
FROM open AS o FULL JOIN failed AS f ON f.connector = o.connector
ORDER BY 1`
	rows, err := q.pool.Query(ctx, reportBacklogsSQL)
	if err != nil {
		return nil, fmt.Errorf("report backlogs: %w", err)
	}
	defer rows.Close()
	var out []ReportBacklog
	for rows.Next() {
		var b ReportBacklog
		var oldest *time.Time
		var lastErr, lastResult *string
		if err := rows.Scan(&b.Connector, &b.Waiting, &b.Pending, &b.Delivering, &b.Failed, &b.RetriesPending,
			&oldest, &lastErr, &lastResult); err != nil {
			return nil, fmt.Errorf("report backlogs: %w", err)
		}
		if oldest != nil {
			b.OldestPending = *oldest
		}
		if lastErr != nil {
			b.LastError = *lastErr
		}
		b.Paused = lastResult != nil && *lastResult == "unauthorized"
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("report backlogs: %w", err)
	}
	return out, nil
}
