package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

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
	Connector string // the connector's name
	Target    int    // which of the request's receivers (one per callback); 0 otherwise
	// Lane is the receiver's host where the connector reports to many (callback hosts), so
	// that each is delivered apart; "" for the connector's one receiver.
	Lane string
	// Credentials is what the delivery needs (JSON): kept until delivered, never shown.
	Credentials []byte
	// AtIntake makes the report deliverable at once, before the request finishes; the
	// request's other reports of this connector wait until it is delivered or failed.
	AtIntake bool
	// Hold keeps the report back until this long after intake; 0: no hold.
	Hold time.Duration
}

// RenewReports replaces the reports of one connector of the request id with these, for a
// repeat of the request that brings new credentials (connector.NewReport.Renewed): each takes
// the new credentials, hold and lane with a fresh count of attempts, and is deliverable again if
// the request has finished, or waits for it. A report in delivery is left as it is; a target the
// request did not have is added. It returns how many it renewed or added.
func (q *Queue) RenewReports(ctx context.Context, id int64, reports []NewReport) (int64, error) {
	if len(reports) == 0 {
		return 0, nil
	}
	var cols reportColumns
	for _, r := range reports {
		cols.add(r)
	}
	const renewSQL = `
INSERT INTO erasure_reports AS rep (request_id, connector, lane, target, credentials, not_before, status, run_after, ready_at)
SELECT r.id, n.connector, n.lane, n.target, n.credentials, h.not_before,
       CASE WHEN r.completed_at IS NULL THEN 'waiting' ELSE 'pending' END,
       CASE WHEN r.completed_at IS NOT NULL THEN greatest(now(), h.not_before) END,
       CASE WHEN r.completed_at IS NOT NULL THEN now() END
FROM erasure_requests r
CROSS JOIN unnest($2::text[], $3::int[], $4::text[], $5::jsonb[], $6::bigint[]) AS n(connector, target, lane, credentials, hold_ms)
CROSS JOIN LATERAL (SELECT CASE WHEN n.hold_ms > 0 THEN now() + n.hold_ms * interval '1 millisecond' END AS not_before) h
WHERE r.id = $1
ON CONFLICT (request_id, connector, target) DO UPDATE
SET lane = excluded.lane, credentials = excluded.credentials, not_before = excluded.not_before,
    status = excluded.status, run_after = excluded.run_after, ready_at = excluded.ready_at,
    attempts = 0, delivered_at = NULL
WHERE rep.status <> 'delivering' AND NOT rep.at_intake`
	tag, err := q.pool.Exec(ctx, renewSQL, id, cols.connectors, cols.targets, cols.lanes, cols.credentials, cols.holdMS)
	if err != nil {
		return 0, fmt.Errorf("renew reports: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Admission is what intake did with one NewRequest.
type Admission int

const (
	Inserted  Admission = iota + 1
	Duplicate           // a request with this request_ref already exists; nothing changed
	Rejected            // refused; see the error beside it (a *FieldError when one field is at fault)
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
	// A request the table would refuse is refused here first, naming the field; the valid ones
	// go to the database together.
	results := make([]EnqueueResult, len(reqs))
	valid := make([]NewRequest, 0, len(reqs))
	at := make([]int, 0, len(reqs))
	for i, r := range reqs {
		if err := ValidateIDs(r.RequestRef, r.ExternalUserID); err != nil {
			results[i] = EnqueueResult{Admission: Rejected, Err: err}
			continue
		}
		valid, at = append(valid, r), append(at, i)
	}
	if len(valid) == 0 {
		return results, nil
	}
	got, err := q.enqueueValid(ctx, valid)
	if err != nil {
		return nil, err
	}
	for j, r := range got {
		results[at[j]] = r
	}
	return results, nil
}

func (q *Queue) enqueueValid(ctx context.Context, reqs []NewRequest) ([]EnqueueResult, error) {
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
	var repRefs []string
	var reps reportColumns
	for i, r := range reqs {
		refs[i], users[i] = r.RequestRef, r.ExternalUserID
		if !r.DueAt.IsZero() {
			dues[i] = &reqs[i].DueAt
		}
		for _, rep := range r.Reports {
			repRefs = append(repRefs, r.RequestRef)
			reps.add(rep)
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
-- A report at intake is deliverable at once (no sooner than its hold); the others wait for
-- the request to finish.
reports AS (
    INSERT INTO erasure_reports (request_id, connector, lane, target, credentials, at_intake, not_before,
                                 status, run_after, ready_at)
    SELECT i.id, r.connector, r.lane, r.target, r.credentials, r.at_intake, h.not_before,
           CASE WHEN r.at_intake THEN 'pending' ELSE 'waiting' END,
           CASE WHEN r.at_intake THEN greatest(now(), h.not_before) END,
           CASE WHEN r.at_intake THEN now() END
    FROM unnest($5::text[], $6::text[], $7::int[], $8::jsonb[], $9::text[], $10::bool[], $11::bigint[])
        AS r(ref, connector, target, credentials, lane, at_intake, hold_ms)
    JOIN inserted i ON i.request_ref = r.ref
    CROSS JOIN LATERAL (SELECT CASE WHEN r.hold_ms > 0 THEN now() + r.hold_ms * interval '1 millisecond' END AS not_before) h
)
SELECT id, request_ref FROM inserted`
	rows, err := q.pool.Query(ctx, enqueueSQL, refs, users, dues, int64(DefaultDeadline/time.Second),
		repRefs, reps.connectors, reps.targets, reps.credentials, reps.lanes, reps.atIntake, reps.holdMS)
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

// reportColumns are NewReports as the arrays a statement unnests, one a column.
type reportColumns struct {
	connectors, lanes []string
	targets           []int32
	atIntake          []bool
	holdMS            []int64
	// JSON as text, not []byte: sent unprepared (QueryExecModeExec), a []byte goes as bytea,
	// which no cast turns into jsonb.
	credentials []*string
}

func (c *reportColumns) add(r NewReport) {
	c.connectors, c.lanes = append(c.connectors, r.Connector), append(c.lanes, r.Lane)
	c.targets, c.atIntake = append(c.targets, int32(r.Target)), append(c.atIntake, r.AtIntake)
	c.holdMS = append(c.holdMS, max(r.Hold.Milliseconds(), 0))
	var cred *string
	if r.Credentials != nil {
		v := string(r.Credentials)
		cred = &v
	}
	c.credentials = append(c.credentials, cred)
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

func describeRowError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Errorf("refused by the database: %s", pgErr.Message)
	}
	return err
}

// The limits of erasure_requests' CHECK constraints (migrations/001_erasure_requests.sql).
const (
	MaxRequestRefBytes     = 255
	MaxExternalUserIDBytes = 1024
)

// FieldError is a request refused for one of its fields. It never holds the field's value: an
// external_user_id is personal data, and the error goes back to the sender and into logs.
type FieldError struct {
	Field  string // request_ref or external_user_id
	Reason string
	// Over is how many bytes the field is over its limit; 0 when the reason is another.
	Over int
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// ValidateIDs applies the table's rules to a request's ids, and what PostgreSQL's text needs:
// present, not blank, within its limit, valid UTF-8 and no NUL; a request_ref has no control
// character, and an external_user_id does not look like a pseudonym. It is the one place these rules
// are written: every door's refusal of an id comes from here, counting a connector's prefix,
// since it checks the request_ref that will be stored.
func ValidateIDs(requestRef, externalUserID string) *FieldError {
	if err := validateID("request_ref", requestRef, MaxRequestRefBytes); err != nil {
		return err
	}
	return validateID("external_user_id", externalUserID, MaxExternalUserIDBytes)
}

func validateID(field, v string, limit int) *FieldError {
	fail := func(format string, args ...any) *FieldError {
		return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case v == "":
		return fail("empty")
	case len(v) > limit:
		e := fail("%d bytes, longer than %d", len(v), limit)
		e.Over = len(v) - limit
		return e
	case !utf8.ValidString(v):
		return fail("not valid UTF-8")
	case strings.TrimSpace(v) == "":
		return fail("only whitespace")
	}
	if i := strings.IndexByte(v, 0); i >= 0 {
		return fail("contains a NUL character at byte %d", i)
	}
	if field == "request_ref" {
		// status, evidence and logs print it: a terminal would obey an escape sequence in it.
		if i := strings.IndexFunc(v, isControl); i >= 0 {
			r, _ := utf8.DecodeRuneInString(v[i:])
			return fail("contains the control character %U at byte %d", r, i)
		}
	} else if strings.HasPrefix(v, PseudonymPrefix) {
		return fail("starts with %s, which marks an id already pseudonymised", PseudonymPrefix)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

// PseudonymPrefix starts every pseudonymised external_user_id (worker/pseudonym.go), and no id
// that intake takes: a raw id of that shape would be taken for a pseudonym.
const PseudonymPrefix = "hmac-sha256:"
