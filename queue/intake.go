package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// NewRequest is one erasure request as the privacy request system hands it over.
type NewRequest struct {
	RequestRef     string
	ExternalUserID string
	DueAt          time.Time // zero: received_at + DefaultDeadline
	// Reports are the outcome reports the request's source wants, written with the request
	// and delivered once it finishes. None for the SQL contract and enqueue.
	Reports []NewReport
}

// NewReport is one report to write beside a new request.
type NewReport struct {
	Connector string // ConnectorWebhook, ConnectorKetch or ConnectorTranscend
	Target    int    // which of the request's receivers (Ketch's callbacks); 0 otherwise
	// Credentials is what the delivery needs (JSON): kept until delivered, never shown.
	Credentials []byte
}

// Admission is what intake did with one NewRequest.
type Admission int

const (
	Inserted  Admission = iota + 1
	Duplicate           // a request with this request_ref already exists; nothing changed
	Rejected            // the table refused it; see the error beside it
)

// EnqueueResult pairs a NewRequest's admission with the reason for a rejection.
type EnqueueResult struct {
	Admission Admission
	ID        int64 // Inserted only: the new row's id
	Err       error // Rejected only: which rule the row broke
}

// Enqueue inserts requests idempotently (a request_ref already present is a Duplicate) and
// reports what became of each, in order. A row the table's constraints refuse is Rejected
// alone: its valid neighbours are still inserted. The returned error is for failures that are
// not about one row (the database is unreachable), after which nothing can be assumed.
func (q *Queue) Enqueue(ctx context.Context, reqs []NewRequest) ([]EnqueueResult, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	results, err := q.enqueueBatch(ctx, reqs)
	if err == nil {
		return results, nil
	}
	if !isRowError(err) {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	// Some row broke a constraint, and the statement inserted nothing. Insert one by one so
	// that only the bad rows are refused, each with its own reason.
	results = make([]EnqueueResult, len(reqs))
	for i := range reqs {
		one, err := q.enqueueBatch(ctx, reqs[i:i+1])
		switch {
		case err == nil:
			results[i] = one[0]
		case isRowError(err):
			results[i] = EnqueueResult{Admission: Rejected, Err: describeRowError(err)}
		default:
			return nil, fmt.Errorf("enqueue: %w", err)
		}
	}
	return results, nil
}

func (q *Queue) enqueueBatch(ctx context.Context, reqs []NewRequest) ([]EnqueueResult, error) {
	refs := make([]string, len(reqs))
	users := make([]string, len(reqs))
	dues := make([]*time.Time, len(reqs))
	var repRefs, repConnectors []string
	var repTargets []int32
	// JSON as text, not []byte: sent unprepared (QueryExecModeExec), a []byte goes as bytea,
	// which no cast turns into jsonb.
	var repCredentials []*string
	for i, r := range reqs {
		refs[i], users[i] = r.RequestRef, r.ExternalUserID
		if !r.DueAt.IsZero() {
			dues[i] = &reqs[i].DueAt
		}
		for _, rep := range r.Reports {
			repRefs = append(repRefs, r.RequestRef)
			repConnectors = append(repConnectors, rep.Connector)
			repTargets = append(repTargets, int32(rep.Target))
			var cred *string
			if rep.Credentials != nil {
				c := string(rep.Credentials)
				cred = &c
			}
			repCredentials = append(repCredentials, cred)
		}
	}
	// The reports go in with their request, in the same statement, or not at all: a request
	// already present (a repeat) keeps the reports it came with.
	const enqueueSQL = `
WITH inserted AS (
    INSERT INTO erasure_requests (request_ref, external_user_id, due_at)
    SELECT ref, uid, coalesce(due, now() + $4 * interval '1 second')
    FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS t(ref, uid, due, n)
    ORDER BY n
    ON CONFLICT (request_ref) DO NOTHING
    RETURNING id, request_ref
),
reports AS (
    INSERT INTO erasure_reports (request_id, connector, target, credentials)
    SELECT i.id, r.connector, r.target, r.credentials
    FROM unnest($5::text[], $6::text[], $7::int[], $8::jsonb[]) AS r(ref, connector, target, credentials)
    JOIN inserted i ON i.request_ref = r.ref
)
SELECT id, request_ref FROM inserted`
	rows, err := q.pool.Query(ctx, enqueueSQL, refs, users, dues, int64(DefaultDeadline/time.Second),
		repRefs, repConnectors, repTargets, repCredentials)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	inserted := make(map[string]int64, len(reqs))
	for rows.Next() {
		var id int64
		var ref string
		if err := rows.Scan(&id, &ref); err != nil {
			return nil, err
		}
		inserted[ref] = id
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// The first occurrence of a returned ref was inserted; every other row was a duplicate,
	// of an older row or of an earlier line in this batch.
	results := make([]EnqueueResult, len(reqs))
	for i, r := range reqs {
		if id, ok := inserted[r.RequestRef]; ok {
			results[i] = EnqueueResult{Admission: Inserted, ID: id}
			delete(inserted, r.RequestRef)
		} else {
			results[i] = EnqueueResult{Admission: Duplicate}
		}
	}
	return results, nil
}

// isRowError reports whether err is about the data of a row (a constraint it broke, a value
// Postgres cannot store) rather than about the connection or the statement.
func isRowError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	// Class 22: data exception (bad encoding, NUL byte). Class 23: integrity constraint.
	return len(pgErr.Code) == 5 && (pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23")
}

// constraintReasons names, for each constraint of erasure_requests, what the row got wrong.
var constraintReasons = map[string]string{
	"request_ref_present":      "request_ref is empty, blank or longer than 255 bytes",
	"external_user_id_present": "external_user_id is empty, blank or longer than 1024 bytes",
}

func describeRowError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if reason, ok := constraintReasons[pgErr.ConstraintName]; ok {
			return errors.New(reason)
		}
		return fmt.Errorf("refused by the database: %s", pgErr.Message)
	}
	return err
}
