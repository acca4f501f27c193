package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// recordSQL reads whole Records, the shape Lookup reads: a request's columns with its calls and
// its reports as JSON, in one statement. The caller appends the WHERE clause and the order.
const recordSQL = `
SELECT r.id, r.request_ref, r.external_user_id, r.status, coalesce(r.outcome, ''), r.attempts,
       r.received_at, r.due_at, r.completed_at, coalesce(r.last_error_code, ''), coalesce(r.last_error, ''),
       r.pseudonymised_at,
       coalesce((SELECT json_agg(json_build_object(
                    'attempt', a.attempt, 'worker', a.worker, 'started_at', a.started_at,
                    'duration_ms', a.duration_ms, 'http_status', a.http_status,
                    'error_code', a.error_code, 'result', a.result) ORDER BY a.started_at, a.id)
                 FROM erasure_attempts a WHERE a.request_id = r.id), '[]'),
       coalesce((SELECT json_agg(json_build_object(
                    'connector', p.connector, 'target', p.target, 'status', p.status,
                    'attempts', p.attempts, 'delivered_at', p.delivered_at,
                    'last_result', p.last_result, 'http_status', p.last_http_status) ORDER BY p.connector, p.target)
                 FROM erasure_reports p WHERE p.request_id = r.id), '[]')
FROM erasure_requests r
`

// scanRecord reads one row of recordSQL.
func scanRecord(row pgx.Row) (Record, error) {
	var rec Record
	var completed, pseudonymised *time.Time
	var calls []struct {
		Attempt    int       `json:"attempt"`
		Worker     string    `json:"worker"`
		StartedAt  time.Time `json:"started_at"`
		DurationMS int64     `json:"duration_ms"`
		HTTPStatus *int      `json:"http_status"`
		ErrorCode  *string   `json:"error_code"`
		Result     string    `json:"result"`
	}
	var reports []struct {
		Connector   string     `json:"connector"`
		Target      int        `json:"target"`
		Status      string     `json:"status"`
		Attempts    int        `json:"attempts"`
		DeliveredAt *time.Time `json:"delivered_at"`
		LastResult  *string    `json:"last_result"`
		HTTPStatus  *int       `json:"http_status"`
	}
	if err := row.Scan(&rec.ID, &rec.RequestRef, &rec.ExternalUserID,
		&rec.Status, &rec.Outcome, &rec.Attempts, &rec.ReceivedAt, &rec.DueAt, &completed,
		&rec.LastErrorCode, &rec.LastError, &pseudonymised, &calls, &reports); err != nil {
		return Record{}, err
	}
	if completed != nil {
		rec.CompletedAt = *completed
	}
	if pseudonymised != nil {
		rec.PseudonymisedAt = *pseudonymised
	}
	for _, c := range calls {
		cr := CallRecord{Attempt: c.Attempt, Worker: c.Worker, StartedAt: c.StartedAt,
			Duration: time.Duration(c.DurationMS) * time.Millisecond, Result: c.Result}
		if c.HTTPStatus != nil {
			cr.HTTPStatus = *c.HTTPStatus
		}
		if c.ErrorCode != nil {
			cr.ErrorCode = *c.ErrorCode
		}
		rec.Calls = append(rec.Calls, cr)
	}
	for _, p := range reports {
		rr := ReportRecord{Connector: p.Connector, Target: p.Target, Status: p.Status, Attempts: p.Attempts}
		if p.DeliveredAt != nil {
			rr.DeliveredAt = *p.DeliveredAt
		}
		if p.LastResult != nil {
			rr.LastResult = *p.LastResult
		}
		if p.HTTPStatus != nil {
			rr.HTTPStatus = *p.HTTPStatus
		}
		rec.Reports = append(rec.Reports, rr)
	}
	return rec, nil
}

// records runs recordSQL followed by rest (WHERE, ORDER BY, LIMIT) with args.
func (q *Queue) records(ctx context.Context, rest string, args ...any) ([]Record, error) {
	rows, err := q.pool.Query(ctx, recordSQL+rest, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) { return scanRecord(row) })
}

// LookupByExternalUserID reads the Records of every request whose external_user_id is one of
// candidates (a person's raw id and its pseudonyms under every key), oldest first; none is not
// an error. Nothing indexes external_user_id: this scans the table, fine for a person asking,
// not for a loop.
func (q *Queue) LookupByExternalUserID(ctx context.Context, candidates []string) ([]Record, error) {
	if len(candidates) == 0 {
		return nil, nil
	}
	recs, err := q.records(ctx, `WHERE r.external_user_id = ANY($1::text[]) ORDER BY r.received_at, r.id`, candidates)
	if err != nil {
		return nil, fmt.Errorf("look up requests by external_user_id: %w", err)
	}
	return recs, nil
}

// exportWindow is how many ids one statement of ExportRecords looks at.
const exportWindow = 2000

// ExportRecords calls each with the Record of every request received in [since, until), in id
// order, and stops at each's first error. It walks the primary key in windows of exportWindow
// ids, each its own short statement, up to the last id there was when it started: a period of
// millions is neither held in memory nor read under one long snapshot that would hold vacuum
// back, and each statement's work is bounded by its window whatever the planner estimates of
// the period (nothing indexes received_at: the windows read the table once between them). A
// request that finishes meanwhile may show its new state.
func (q *Queue) ExportRecords(ctx context.Context, since, until time.Time, each func(Record) error) error {
	var last int64
	if err := q.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM erasure_requests`).Scan(&last); err != nil {
		return fmt.Errorf("export records: %w", err)
	}
	for after := int64(0); after < last; after += exportWindow {
		page, err := q.records(ctx, `WHERE r.id > $1 AND r.id <= $2 AND r.received_at >= $3 AND r.received_at < $4 ORDER BY r.id`,
			after, min(after+exportWindow, last), since, until)
		if err != nil {
			return fmt.Errorf("export records: %w", err)
		}
		for _, rec := range page {
			if err := each(rec); err != nil {
				return err
			}
		}
	}
	return nil
}
