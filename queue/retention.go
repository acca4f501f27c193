package queue

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Retention, GDPR's storage limitation: IDENTIFIER_RETENTION after a request finished its raw
// external_user_id is replaced by a pseudonym (an HMAC the worker computes: the key never
// reaches the database), and EVIDENCE_RETENTION after it finished the request, its calls and
// its reports are deleted. Every statement here touches a bounded batch through a partial index
// of migration 006 and commits at once: no lock is held for long, and none is ever taken on a
// pending or running row, so claims never wait for the purge.
//
// A request is pseudonymised on time whatever its reports do: none of them reads the request's
// raw id once it is gone. A report whose receiver names the person keeps its own
// copy in its credentials (IdentifierCredential), which lives as long as the report does: it is
// deleted when the report is delivered, fails or gives up (REPORT_MAX_AGE, which `run` keeps
// within IDENTIFIER_RETENTION).

// Identified is a finished request past IDENTIFIER_RETENTION that still holds its raw id.
type Identified struct {
	ID             int64
	CompletedAt    time.Time
	ExternalUserID string
}

// Next is where the batch after the one that ended with this row starts.
func (i Identified) Next() RetentionCursor {
	return RetentionCursor{CompletedAt: i.CompletedAt, ID: i.ID}
}

// RetentionCursor is where a batch of ToPseudonymise starts: just after the row that finished
// at CompletedAt with ID. The zero value starts at the oldest.
type RetentionCursor struct {
	CompletedAt time.Time
	ID          int64
}

// Pseudonym is what replaces one Identified's raw id.
type Pseudonym struct {
	ID        int64
	Raw       string // the id the row held when it was read: the update's guard
	Pseudonym string // hmac-sha256:<hex>
}

// RetentionCountCap bounds the counts of RetentionStats, so that a scrape never walks more of
// an index than this: a gauge at the cap reads "this many or more".
const RetentionCountCap = 100000

// toPseudonymiseSQL reads a batch of finished rows that hold their raw id past $1 milliseconds,
// oldest first from the cursor ($3, $4), through erasure_requests_identified in its order. The
// cursor moves a round past the rows it has seen, so that neither a row skipped by the update
// (requeued meanwhile) nor the index entries its own updates left dead are read again.
const toPseudonymiseSQL = `
SELECT r.id, r.completed_at, r.external_user_id FROM erasure_requests r
WHERE r.pseudonymised_at IS NULL AND r.status IN ('succeeded', 'failed')
  AND r.completed_at < now() - $1 * interval '1 millisecond'
  AND (r.completed_at, r.id) > ($3::timestamptz, $4::bigint)
ORDER BY r.completed_at, r.id
LIMIT $2`

// pseudonymiseSQL writes a batch's pseudonyms, re-checking on each row's latest version what
// toPseudonymiseSQL chose it for (a failed row requeued in between is left alone). The check
// leaves out status: completed_at is set exactly while a row is finished (the constraint
// completed_iff_finished), and without status the WHERE no longer matches
// erasure_requests_identified, so the planner finds each row by its id. With it, and the
// statistics behind (a backlog that autoanalyze has not seen yet), Postgres hashed every due row
// read through that index to update a thousand: 1.1s instead of milliseconds over 900,000 due.
//
// No report holds a request's raw id back. What a failed report keeps of it is dropped here too:
// this release drops a report's IdentifierCredential when the report fails, but the previous
// one, still running beside it during a rolling update, does not; the request's id going is the
// latest its report's copy may stay. A report still undelivered keeps its copy until it ends.
const pseudonymiseSQL = `
WITH pseudonymised AS (
    UPDATE erasure_requests r
    SET external_user_id = t.pseudonym, pseudonymised_at = now()
    FROM unnest($2::bigint[], $3::text[], $4::text[]) AS t(id, raw, pseudonym)
    WHERE r.id = t.id AND r.external_user_id = t.raw
      AND r.pseudonymised_at IS NULL AND r.completed_at < now() - $1 * interval '1 millisecond'
    RETURNING r.id
),
failed_reports AS (
    UPDATE erasure_reports rep
    SET credentials = ` + withoutIdentifier + `
    FROM pseudonymised p
    WHERE rep.request_id = p.id AND rep.status = 'failed' AND rep.credentials ? 'identifier'
)
SELECT count(*) FROM pseudonymised`

// ToPseudonymise returns up to limit finished requests whose raw id is past after
// (IDENTIFIER_RETENTION), oldest first from the cursor from (the next batch starts at the last
// one's Next). It locks nothing: Pseudonymise re-checks every row.
func (q *Queue) ToPseudonymise(ctx context.Context, after time.Duration, from RetentionCursor, limit int) ([]Identified, error) {
	rows, err := q.pool.Query(ctx, toPseudonymiseSQL, after.Milliseconds(), limit, from.CompletedAt, from.ID)
	if err != nil {
		return nil, fmt.Errorf("select ids to pseudonymise: %w", err)
	}
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Identified, error) {
		var r Identified
		err := row.Scan(&r.ID, &r.CompletedAt, &r.ExternalUserID)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("select ids to pseudonymise: %w", err)
	}
	return got, nil
}

// Pseudonymise replaces each row's raw id with its pseudonym, in one statement, and returns how
// many rows it changed. A row changes only while it still holds that raw id and is still past
// after; any other is skipped (another replica got there first, or a person requeued it), so a
// batch may be sent again harmlessly.
func (q *Queue) Pseudonymise(ctx context.Context, after time.Duration, batch []Pseudonym) (int64, error) {
	if len(batch) == 0 {
		return 0, nil
	}
	// In id order: a batch sent again locks its rows in the same order.
	batch = slices.SortedFunc(slices.Values(batch), func(a, b Pseudonym) int { return cmp.Compare(a.ID, b.ID) })
	ids := make([]int64, len(batch))
	raws := make([]string, len(batch))
	pseudonyms := make([]string, len(batch))
	for i, p := range batch {
		ids[i], raws[i], pseudonyms[i] = p.ID, p.Raw, p.Pseudonym
	}
	// Sent unnamed, like Finish, so the plan fits the batch's size.
	var n int64
	err := q.pool.QueryRow(ctx, pseudonymiseSQL, pgx.QueryExecModeExec, after.Milliseconds(), ids, raws, pseudonyms).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pseudonymise: %w", err)
	}
	return n, nil
}

// Two index range scans, one per partial index: pseudonymised rows, and rows that kept their id
// (IDENTIFIER_RETENTION off, or not yet pseudonymised). The DELETE's own WHERE is what Postgres
// re-checks on a row changed meanwhile.
const deleteEvidenceSQL = `
WITH doomed AS (
    (SELECT id, completed_at FROM erasure_requests
     WHERE pseudonymised_at IS NOT NULL AND completed_at < now() - $1 * interval '1 millisecond'
     ORDER BY completed_at LIMIT $2)
    UNION ALL
    (SELECT id, completed_at FROM erasure_requests
     WHERE pseudonymised_at IS NULL AND status IN ('succeeded', 'failed')
       AND completed_at < now() - $1 * interval '1 millisecond'
     ORDER BY completed_at LIMIT $2)
),
oldest AS (SELECT id FROM doomed ORDER BY completed_at, id LIMIT $2)
DELETE FROM erasure_requests r USING oldest
WHERE r.id = oldest.id AND r.status IN ('succeeded', 'failed')
  AND r.completed_at < now() - $1 * interval '1 millisecond'`

// DeleteEvidence deletes up to limit requests finished longer than after ago (EVIDENCE_RETENTION),
// oldest first, with their calls and reports (ON DELETE CASCADE), and returns how many; and up
// to limit denials last repeated that long ago.
func (q *Queue) DeleteEvidence(ctx context.Context, after time.Duration, limit int) (int64, error) {
	if _, err := q.deleteDenials(ctx, after, limit); err != nil {
		return 0, err
	}
	tag, err := q.pool.Exec(ctx, deleteEvidenceSQL, after.Milliseconds(), limit)
	if err != nil {
		return 0, fmt.Errorf("delete evidence: %w", err)
	}
	return tag.RowsAffected(), nil
}

// RetentionStats are the figures behind the retention gauges.
type RetentionStats struct {
	// ToPseudonymise counts finished requests holding their raw id past IDENTIFIER_RETENTION
	// (at most RetentionCountCap); OldestIdentified is when the oldest finished request that
	// holds its raw id finished (zero when none does).
	ToPseudonymise   int64
	OldestIdentified time.Time
	// ToDelete counts requests finished longer than EVIDENCE_RETENTION ago (at most
	// RetentionCountCap); OldestFinished is when the oldest finished request finished.
	ToDelete       int64
	OldestFinished time.Time
	Now            time.Time // the database's clock
}

const retentionStatsSQL = `
SELECT
    CASE WHEN $1::bigint > 0 THEN (SELECT count(*) FROM (
        SELECT 1 FROM erasure_requests
        WHERE pseudonymised_at IS NULL AND status IN ('succeeded', 'failed')
          AND completed_at < now() - $1 * interval '1 millisecond'
        LIMIT $3) due) ELSE 0 END,
    (SELECT min(completed_at) FROM erasure_requests
        WHERE pseudonymised_at IS NULL AND status IN ('succeeded', 'failed')),
    (SELECT count(*) FROM (
        (SELECT 1 FROM erasure_requests
         WHERE pseudonymised_at IS NOT NULL AND completed_at < now() - $2 * interval '1 millisecond'
         LIMIT $3)
        UNION ALL
        (SELECT 1 FROM erasure_requests
         WHERE pseudonymised_at IS NULL AND status IN ('succeeded', 'failed')
           AND completed_at < now() - $2 * interval '1 millisecond'
         LIMIT $3)
        LIMIT $3) due),
    (SELECT min(completed_at) FROM erasure_requests WHERE pseudonymised_at IS NOT NULL),
    now()`

// RetentionStats reads the retention gauges in one statement, through the partial indexes of
// finished rows: each count stops at RetentionCountCap and each oldest is one index entry.
// identifier 0 (pseudonymisation off) counts nothing to pseudonymise.
func (q *Queue) RetentionStats(ctx context.Context, identifier, evidence time.Duration) (RetentionStats, error) {
	var s RetentionStats
	var identified, pseudonymised *time.Time
	err := q.pool.QueryRow(ctx, retentionStatsSQL, identifier.Milliseconds(), evidence.Milliseconds(), RetentionCountCap).
		Scan(&s.ToPseudonymise, &identified, &s.ToDelete, &pseudonymised, &s.Now)
	if err != nil {
		return RetentionStats{}, fmt.Errorf("retention stats: %w", err)
	}
	if identified != nil {
		s.OldestIdentified = *identified
	}
	s.OldestFinished = s.OldestIdentified
	if pseudonymised != nil && (s.OldestFinished.IsZero() || pseudonymised.Before(s.OldestFinished)) {
		s.OldestFinished = *pseudonymised
	}
	return s, nil
}

// PseudonymiseLag is how long the oldest finished request that holds its raw id has been past
// identifier; zero when none is.
func (s RetentionStats) PseudonymiseLag(identifier time.Duration) time.Duration {
	if identifier <= 0 || s.OldestIdentified.IsZero() {
		return 0
	}
	return max(s.Now.Sub(s.OldestIdentified)-identifier, 0)
}

// DeleteLag is how long the oldest finished request has been past evidence; zero when none is.
func (s RetentionStats) DeleteLag(evidence time.Duration) time.Duration {
	if s.OldestFinished.IsZero() {
		return 0
	}
	return max(s.Now.Sub(s.OldestFinished)-evidence, 0)
}

// RequeueSkipped counts the failed requests that f matches and Requeue leaves failed because
// their raw id was pseudonymised: there is nothing left to send Knot.
func (q *Queue) RequeueSkipped(ctx context.Context, f RequeueFilter) (int64, error) {
	if err := f.validate(); err != nil {
		return 0, err
	}
	var n int64
	err := q.pool.QueryRow(ctx, `
SELECT count(*) FROM erasure_requests
WHERE status = 'failed' AND pseudonymised_at IS NOT NULL AND `+requeueMatches,
		f.All, f.refs(), nonEmpty(f.ErrorCode), nonEmpty(f.Outcome)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("requeue: %w", err)
	}
	return n, nil
}
