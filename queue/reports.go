package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Report statuses.
const (
	ReportWaiting    = "waiting"    // the request has not finished
	ReportPending    = "pending"    // deliverable from run_after
	ReportDelivering = "delivering" // leased by a reporter
	ReportDelivered  = "delivered"  // the receiver took it, or said the request was closed
	ReportFailed     = "failed"     // the receiver refused it for good; waits for `reports requeue`
)

// IdentifierCredential is the member of a report's credentials (a JSON object) that holds
// personal data: the raw id of a receiver that names the person. The report's
// copy lives only as long as the report: every credential is deleted when the report is
// delivered, and this member when it fails or gives up. The rest (a callback's URL and
// headers, a nonce) is no personal data and stays with a failed report, so that
// `reports requeue` can send it again, until the report is delivered or its evidence deleted.
// A requeued report whose copy was dropped names the person by its request's raw id while the
// request keeps it, and not at all once it is pseudonymised.
const IdentifierCredential = "identifier"

// withoutIdentifier is a report's credentials without IdentifierCredential. Credentials are a
// JSON object by the connectors' contract; anything else is left as it is rather than failing
// the statement that ends the report.
const withoutIdentifier = `CASE WHEN jsonb_typeof(rep.credentials) = 'object' THEN rep.credentials - 'identifier' ELSE rep.credentials END`

// Report is a claimed report with what its delivery needs: the request's outcome, and the
// credentials, which no log or error may show.
type Report struct {
	ID          int64
	Token       int64 // the claim's fence
	Connector   string
	Lane        string // the receiver's host where the connector has many; "" otherwise
	Target      int
	Attempts    int // earlier delivery attempts that counted
	Credentials []byte

	RequestID      int64
	RequestRef     string
	ExternalUserID string // for a receiver that names the person; never logged
	// Pseudonymised: ExternalUserID is the request's pseudonym, not its raw id (the request
	// finished longer than IDENTIFIER_RETENTION ago).
	Pseudonymised bool
	Status        string // the request's: succeeded or failed, or pending or running for an AtIntake report
	Outcome       string // "" while the request has not finished
	ErrorCode     string
	CompletedAt   time.Time // zero while the request has not finished
	AtIntake      bool      // deliverable from intake, not from the request's outcome
	NotBefore     time.Time // the end of the report's hold; zero when none
}

// ReportLane is one lane of the outbox: a connector's reports to one receiver. Name is "" for
// the connector's one receiver, the receiver's host where a connector reports to many.
type ReportLane struct {
	Connector string
	Name      string
}

const dueReportLanesSQL = `
WITH RECURSIVE lanes AS (
    SELECT c.connector, first.lane
    FROM unnest($1::text[]) AS c(connector)
    CROSS JOIN LATERAL (
        SELECT lane FROM erasure_reports
        WHERE status IN ('pending', 'delivering') AND connector = c.connector
        ORDER BY lane LIMIT 1
    ) first
  UNION ALL
    SELECT l.connector, next.lane
    FROM lanes l
    CROSS JOIN LATERAL (
        SELECT lane FROM erasure_reports
        WHERE status IN ('pending', 'delivering') AND connector = l.connector AND lane > l.lane
        ORDER BY lane LIMIT 1
    ) next
)
SELECT l.connector, l.lane
FROM lanes l
-- LATERAL ... LIMIT 1, not EXISTS: the planner may turn an EXISTS into a join over every due row.
CROSS JOIN LATERAL (
    SELECT 1 FROM erasure_reports
    WHERE status IN ('pending', 'delivering') AND connector = l.connector AND lane = l.lane AND run_after <= now()
    LIMIT 1
) due
ORDER BY l.connector, l.lane`

// DueReportLanes returns the lanes of the given connectors that have a deliverable report, in
// order. It reads one index entry per lane, not every due row: a loose index scan (a recursive
// CTE that jumps from each lane to the next) over erasure_reports_lane_due, then one descent
// into each lane to see whether its earliest row is due.
func (q *Queue) DueReportLanes(ctx context.Context, connectors []string) ([]ReportLane, error) {
	if connectors == nil {
		connectors = []string{}
	}
	rows, err := q.pool.Query(ctx, dueReportLanesSQL, connectors)
	if err != nil {
		return nil, fmt.Errorf("find due report lanes: %w", err)
	}
	lanes, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ReportLane, error) {
		var l ReportLane
		err := row.Scan(&l.Connector, &l.Name)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("find due report lanes: %w", err)
	}
	return lanes, nil
}

// A report that is not at intake waits while a report at intake of its request and connector is
// undelivered: the receiver hears of the intake first. The look-up goes through the key
// (request_id, connector, target) and costs only requests that have a report at intake.
const claimReportsSQL = `
WITH picked AS (
    SELECT id FROM erasure_reports rep
    WHERE status IN ('pending', 'delivering') AND connector = $4 AND lane = $5 AND run_after <= now()
      AND (rep.at_intake OR NOT EXISTS (
          SELECT 1 FROM erasure_reports first
          WHERE first.request_id = rep.request_id AND first.connector = rep.connector
            AND first.at_intake AND first.status IN ('pending', 'delivering')))
    ORDER BY run_after, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE erasure_reports rep
SET status = 'delivering',
    lease_owner = $1,
    lease_token = nextval('erasure_claim_token_seq'),
    run_after = now() + $3 * interval '1 millisecond'
FROM picked, erasure_requests r
WHERE rep.id = picked.id AND r.id = rep.request_id
RETURNING rep.id, rep.lease_token, rep.connector, rep.lane, rep.target, rep.attempts, rep.credentials,
          r.id, r.request_ref, r.external_user_id, r.pseudonymised_at IS NOT NULL, r.status, coalesce(r.outcome, ''),
          coalesce(r.last_error_code, ''), r.completed_at, rep.at_intake, rep.not_before`

// ClaimReports leases up to limit deliverable reports of one lane for leaseFor, oldest due
// first. It reads only that lane's due rows, through erasure_reports_lane_due: a lane that is
// paused or full costs the others nothing. A delivering report whose lease ran out is
// deliverable again.
func (q *Queue) ClaimReports(ctx context.Context, owner string, lane ReportLane, limit int, leaseFor time.Duration) ([]Report, error) {
	rows, err := q.pool.Query(ctx, claimReportsSQL, owner, limit, leaseFor.Milliseconds(), lane.Connector, lane.Name)
	if err != nil {
		return nil, fmt.Errorf("claim reports: %w", err)
	}
	reports, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Report, error) {
		var r Report
		var completed, notBefore *time.Time
		err := row.Scan(&r.ID, &r.Token, &r.Connector, &r.Lane, &r.Target, &r.Attempts, &r.Credentials,
			&r.RequestID, &r.RequestRef, &r.ExternalUserID, &r.Pseudonymised, &r.Status, &r.Outcome, &r.ErrorCode,
			&completed, &r.AtIntake, &notBefore)
		if completed != nil {
			r.CompletedAt = *completed
		}
		if notBefore != nil {
			r.NotBefore = *notBefore
		}
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim reports: %w", err)
	}
	return reports, nil
}

// ReportResult is what became of one delivery attempt of a claimed report.
type ReportResult struct {
	ID    int64
	Token int64
	// Result is one of delivered, closed, retry, rate_limited, unauthorized, rejected (the
	// connector package's names). delivered and closed end the report; rejected fails it;
	// the others make it pending again after Delay, and unauthorized does not count an attempt.
	Result      string
	Delay       time.Duration
	AttemptedAt time.Time
	Duration    time.Duration
	HTTPStatus  int
	Error       string // fit for the evidence: no credential in it
}

var reportResults = map[string]bool{
	"delivered": true, "closed": true, "retry": true, "rate_limited": true, "unauthorized": true, "rejected": true,
}

// FinishReports records delivery attempts, in one statement: each report moves on only while
// this claim still holds it, and each attempt is kept as evidence whatever the fence decides.
// A delivered report's credentials are deleted; a failed one's IdentifierCredential. It returns
// the IDs it moved on.
func (q *Queue) FinishReports(ctx context.Context, owner string, results []ReportResult) ([]int64, error) {
	if len(results) == 0 {
		return nil, nil
	}
	n := len(results)
	var (
		ids      = make([]int64, n)
		tokens   = make([]int64, n)
		outcome  = make([]string, n)
		delays   = make([]int64, n)
		started  = make([]time.Time, n)
		millis   = make([]int32, n)
		statuses = make([]*int32, n)
		errs     = make([]*string, n)
	)
	for i, r := range results {
		if !reportResults[r.Result] {
			return nil, fmt.Errorf("finish reports: report %d: unknown result %q", r.ID, r.Result)
		}
		ids[i], tokens[i], outcome[i] = r.ID, r.Token, r.Result
		delays[i] = max(r.Delay.Milliseconds(), 0)
		started[i], millis[i] = r.AttemptedAt, int32(r.Duration.Milliseconds())
		if r.HTTPStatus != 0 {
			s := int32(r.HTTPStatus)
			statuses[i] = &s
		}
		errs[i] = nonEmpty(truncate(storable(r.Error), maxErrorBytes))
	}
	const finishReportsSQL = `
WITH input AS (
    SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::timestamptz[],
                         $7::int[], $8::int[], $9::text[])
        AS t(id, token, result, delay_ms, attempted_at, duration_ms, http_status, error)
),
moved AS (
    UPDATE erasure_reports rep
    SET status = CASE WHEN i.result IN ('delivered', 'closed') THEN 'delivered'
                      WHEN i.result = 'rejected' THEN 'failed'
                      ELSE 'pending' END,
        credentials = CASE WHEN i.result IN ('delivered', 'closed') THEN NULL
                           WHEN i.result = 'rejected' THEN ` + withoutIdentifier + `
                           ELSE rep.credentials END,
        delivered_at = CASE WHEN i.result IN ('delivered', 'closed') THEN now() END,
        attempts = rep.attempts + CASE WHEN i.result = 'unauthorized' THEN 0 ELSE 1 END,
        run_after = CASE WHEN i.result IN ('retry', 'rate_limited', 'unauthorized')
                         THEN now() + i.delay_ms * interval '1 millisecond' END,
        lease_owner = NULL,
        lease_token = NULL,
        last_result = i.result,
        last_http_status = i.http_status,
        last_error = i.error
    FROM input i
    WHERE rep.id = i.id AND rep.status = 'delivering' AND rep.lease_owner = $1 AND rep.lease_token = i.token
    RETURNING rep.id
),
evidence AS (
    INSERT INTO erasure_report_attempts (report_id, attempted_at, worker, duration_ms, http_status, result, error)
    SELECT i.id, i.attempted_at, $1, i.duration_ms, i.http_status, i.result, i.error
    FROM input i
    WHERE EXISTS (SELECT 1 FROM erasure_reports rep WHERE rep.id = i.id)
      -- A retry of a finish whose commit's answer was lost must not write the attempt twice.
      AND NOT EXISTS (SELECT 1 FROM erasure_report_attempts a
                      WHERE a.report_id = i.id AND a.attempted_at = i.attempted_at AND a.worker = $1)
)
SELECT id FROM moved`
	rows, err := q.pool.Query(ctx, finishReportsSQL, owner, ids, tokens, outcome, delays, started, millis, statuses, errs)
	if err != nil {
		return nil, fmt.Errorf("finish reports: %w", err)
	}
	moved, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("finish reports: %w", err)
	}
	return moved, nil
}

// ReleaseReports gives back claimed reports that were never sent (shutdown), deliverable at
// once and without counting an attempt.
func (q *Queue) ReleaseReports(ctx context.Context, owner string, reports []Report) error {
	if len(reports) == 0 {
		return nil
	}
	ids := make([]int64, len(reports))
	tokens := make([]int64, len(reports))
	for i, r := range reports {
		ids[i], tokens[i] = r.ID, r.Token
	}
	_, err := q.pool.Exec(ctx, `
UPDATE erasure_reports rep
SET status = 'pending', run_after = now(), lease_owner = NULL, lease_token = NULL
FROM unnest($2::bigint[], $3::bigint[]) AS t(id, token)
WHERE rep.id = t.id AND rep.status = 'delivering' AND rep.lease_owner = $1 AND rep.lease_token = t.token`,
		owner, ids, tokens)
	if err != nil {
		return fmt.Errorf("release reports: %w", err)
	}
	return nil
}

// giveUpReportsSQL fails up to $3 undelivered reports that became deliverable more than $1
// milliseconds ago (REPORT_MAX_AGE), oldest first, through erasure_reports_undelivered: pending
// ones, and delivering ones whose lease lapsed; a delivery in flight is left to end, and its
// report is given up by the next round if it was not taken. Each keeps its last reason behind $2
// (the share of the last error that fits the table's bound) and loses what is personal data in
// its credentials, as a report refused for good does. SKIP LOCKED: a report that a replica is
// claiming is not waited for.
const giveUpReportsSQL = `
WITH expired AS (
    SELECT id FROM erasure_reports
    WHERE status IN ('pending', 'delivering') AND ready_at < now() - $1 * interval '1 millisecond'
      AND (status = 'pending' OR run_after <= now())
    ORDER BY ready_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE erasure_reports rep
SET status = 'failed',
    run_after = NULL,
    lease_owner = NULL,
    lease_token = NULL,
    credentials = ` + withoutIdentifier + `,
    last_error = $2 || CASE WHEN rep.last_error IS NULL THEN 'no delivery attempt ended'
                            WHEN octet_length(rep.last_error) <= 1800 THEN rep.last_error
                            ELSE left(rep.last_error, 440) || '…' END
FROM expired
WHERE rep.id = expired.id
RETURNING rep.connector`

// GiveUpReports fails up to limit reports still undelivered maxAge after they became
// deliverable (their request finished, or a person requeued them), each with reason followed by
// its last error, and returns how many it failed, by connector. Failed, they wait for `reports
// requeue` like the reports a receiver refused for good.
func (q *Queue) GiveUpReports(ctx context.Context, maxAge time.Duration, reason string, limit int) (map[string]int64, error) {
	rows, err := q.pool.Query(ctx, giveUpReportsSQL, maxAge.Milliseconds(), truncate(storable(reason), 200), limit)
	if err != nil {
		return nil, fmt.Errorf("give up reports: %w", err)
	}
	connectors, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("give up reports: %w", err)
	}
	out := map[string]int64{}
	for _, c := range connectors {
		out[c]++
	}
	return out, nil
}

// ReportStats are the figures behind the report gauges, read through partial indexes over
// undelivered and failed reports only.
type ReportStats struct {
	Pending map[string]int64 // undelivered (pending or delivering), by connector
	Failed  map[string]int64 // refused for good, by connector
	// OldestPending is when the request of the oldest undelivered report finished; zero when
	// none is undelivered.
	OldestPending time.Time
	Now           time.Time
}

// OldestPendingAge is how long the oldest undelivered report has waited; zero when none.
func (s ReportStats) OldestPendingAge() time.Duration {
	if s.OldestPending.IsZero() {
		return 0
	}
	return s.Now.Sub(s.OldestPending)
}

// ReportStats reads the report gauges of the given connectors in one statement.
func (q *Queue) ReportStats(ctx context.Context, connectors []string) (ReportStats, error) {
	// One row per connector, or a single row without one when none is asked for: the oldest
	// undelivered report is of every connector, configured or not.
	const reportStatsSQL = `
SELECT c.connector,
       (SELECT count(*) FROM erasure_reports WHERE status IN ('pending', 'delivering') AND connector = c.connector),
       (SELECT count(*) FROM erasure_reports WHERE status = 'failed' AND connector = c.connector),
       o.oldest,
       now()
FROM (SELECT min(ready_at) AS oldest FROM erasure_reports WHERE status IN ('pending', 'delivering')) AS o
LEFT JOIN unnest($1::text[]) AS c(connector) ON true`
	if connectors == nil {
		connectors = []string{}
	}
	rows, err := q.pool.Query(ctx, reportStatsSQL, connectors)
	if err != nil {
		return ReportStats{}, fmt.Errorf("report stats: %w", err)
	}
	defer rows.Close()
	s := ReportStats{Pending: map[string]int64{}, Failed: map[string]int64{}}
	for rows.Next() {
		var connector *string
		var pending, failed int64
		var oldest *time.Time
		if err := rows.Scan(&connector, &pending, &failed, &oldest, &s.Now); err != nil {
			return ReportStats{}, fmt.Errorf("report stats: %w", err)
		}
		if connector != nil {
			s.Pending[*connector], s.Failed[*connector] = pending, failed
		}
		if oldest != nil {
			s.OldestPending = *oldest
		}
	}
	if err := rows.Err(); err != nil {
		return ReportStats{}, fmt.Errorf("report stats: %w", err)
	}
	return s, nil
}

// ReportSummary is what `erasure-worker status` shows of one connector's reports (exact
// counts: a full scan of the reports, fine for a person asking).
type ReportSummary struct {
	Connector                  string
	Waiting, Pending, Failed   int64
	Delivered                  int64
	Paused                     bool      // the latest attempt was refused as unauthorized
	OldestPending              time.Time // zero when none is undelivered
	LastError                  string    // of the latest failing attempt among undelivered or failed reports
	Delivering, RetriesPending int64
}

// SummarizeReports reads every connector's ReportSummary, for connectors that have any report.
func (q *Queue) SummarizeReports(ctx context.Context) ([]ReportSummary, time.Time, error) {
	const summarizeReportsSQL = `
SELECT connector,
       count(*) FILTER (WHERE status = 'waiting'),
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'delivering'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'delivered'),
       count(*) FILTER (WHERE status IN ('pending', 'delivering') AND attempts > 0),
       min(ready_at) FILTER (WHERE status IN ('pending', 'delivering')),
       (array_agg(last_error ORDER BY run_after DESC NULLS LAST)
            FILTER (WHERE status IN ('pending', 'delivering', 'failed') AND last_error IS NOT NULL))[1],
       (array_agg(last_result ORDER BY run_after DESC NULLS LAST)
            FILTER (WHERE status IN ('pending', 'delivering') AND last_result IS NOT NULL))[1],
       now()
FROM erasure_reports
GROUP BY connector
ORDER BY connector`
	rows, err := q.pool.Query(ctx, summarizeReportsSQL)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("summarize reports: %w", err)
	}
	defer rows.Close()
	var out []ReportSummary
	var now time.Time
	for rows.Next() {
		var s ReportSummary
		var oldest *time.Time
		var lastErr, lastResult *string
		if err := rows.Scan(&s.Connector, &s.Waiting, &s.Pending, &s.Delivering, &s.Failed, &s.Delivered,
			&s.RetriesPending, &oldest, &lastErr, &lastResult, &now); err != nil {
			return nil, time.Time{}, fmt.Errorf("summarize reports: %w", err)
		}
		if oldest != nil {
			s.OldestPending = *oldest
		}
		if lastErr != nil {
			s.LastError = *lastErr
		}
		s.Paused = lastResult != nil && *lastResult == "unauthorized"
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, time.Time{}, fmt.Errorf("summarize reports: %w", err)
	}
	return out, now, nil
}

// RequeueReports makes failed reports deliverable again, with a fresh count of attempts and a
// fresh age (REPORT_MAX_AGE counts from the requeue), and returns how many: of one connector, or
// of every connector when connector is empty.
func (q *Queue) RequeueReports(ctx context.Context, connector string) (int64, error) {
	tag, err := q.pool.Exec(ctx, `
UPDATE erasure_reports
SET status = 'pending', run_after = greatest(now(), not_before), ready_at = now(), attempts = 0
WHERE status = 'failed' AND ($1::text IS NULL OR connector = $1)`, nonEmpty(connector))
	if err != nil {
		return 0, fmt.Errorf("requeue reports: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ErrNotFound is returned for a request_ref that no request has.
var ErrNotFound = errors.New("no such request")

// Record is one request's whole record: what was asked, every call made for it, and its
// reports. ExternalUserID is for comparing a repeated request; no answer shows it.
type Record struct {
	ID             int64
	RequestRef     string
	ExternalUserID string
	Status         string
	Outcome        string
	Attempts       int
	ReceivedAt     time.Time
	DueAt          time.Time
	CompletedAt    time.Time // zero while unfinished
	LastErrorCode  string
	LastError      string
	// PseudonymisedAt is when the raw id was replaced by its pseudonym; zero while it is kept.
	PseudonymisedAt time.Time
	Calls           []CallRecord
	Reports         []ReportRecord
}

// CallRecord is one row of erasure_attempts.
type CallRecord struct {
	Attempt    int
	Worker     string
	StartedAt  time.Time
	Duration   time.Duration
	HTTPStatus int // 0: no HTTP answer
	ErrorCode  string
	Result     string
}

// ReportRecord is one report of a request, without its credentials.
type ReportRecord struct {
	Connector   string
	Target      int
	Status      string
	Attempts    int
	DeliveredAt time.Time // zero until delivered
	LastResult  string
	HTTPStatus  int
}

// LookupRefs reads the Records of the requests with these request_refs, in one statement
// through the request_ref key, keyed by ref; a ref no request has is absent.
func (q *Queue) LookupRefs(ctx context.Context, refs []string) (map[string]Record, error) {
	recs, err := q.records(ctx, `WHERE r.request_ref = ANY($1::text[])`, refs)
	if err != nil {
		return nil, fmt.Errorf("look up requests: %w", err)
	}
	out := make(map[string]Record, len(recs))
	for _, rec := range recs {
		out[rec.RequestRef] = rec
	}
	return out, nil
}

// Lookup reads the Record of the request with this request_ref, or ErrNotFound.
func (q *Queue) Lookup(ctx context.Context, requestRef string) (Record, error) {
	rec, err := scanRecord(q.pool.QueryRow(ctx, recordSQL+`WHERE r.request_ref = $1`, requestRef))
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("look up request: %w", err)
	}
	return rec, nil
}

// Lead makes holder the leader of duty name for ttl, or renews its term, and reports whether
// holder leads: a term is taken over only once it has lapsed. Resign ends holder's term early.
func (q *Queue) Lead(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	const leadSQL = `
INSERT INTO erasure_leaders AS l (name, holder, expires_at)
VALUES ($1, $2, now() + $3 * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder,
    elected_at = CASE WHEN l.holder = excluded.holder THEN l.elected_at ELSE now() END,
    expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at < now()
RETURNING holder`
	var got string
	err := q.pool.QueryRow(ctx, leadSQL, name, holder, ttl.Milliseconds()).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // someone else's term runs
	}
	if err != nil {
		return false, fmt.Errorf("elect leader of %s: %w", name, err)
	}
	return got == holder, nil
}

// Resign ends holder's term as leader of name, so that another replica takes over at once.
func (q *Queue) Resign(ctx context.Context, name, holder string) error {
	if _, err := q.pool.Exec(ctx, `DELETE FROM erasure_leaders WHERE name = $1 AND holder = $2`, name, holder); err != nil {
		return fmt.Errorf("resign as leader of %s: %w", name, err)
	}
	return nil
}
