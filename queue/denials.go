package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Denial is a door's final denial of a request: what it was, and why it was not carried out.
type Denial struct {
	RequestRef string
	Door       string
	Reason     string // a connector.Refusal
	Field      string // the sender's field at fault; "" when none
	FirstAt    time.Time
	LastAt     time.Time
	Times      int // how often the request came and was denied
}

// RecordDenial keeps the record of a denial, once per request_ref: a repeat counts one more
// time and moves LastAt, from which EVIDENCE_RETENTION counts.
func (q *Queue) RecordDenial(ctx context.Context, d Denial) error {
	_, err := q.pool.Exec(ctx, `
INSERT INTO erasure_denials (request_ref, door, reason, field) VALUES ($1, $2, $3, $4)
ON CONFLICT (request_ref) DO UPDATE
SET door = excluded.door, reason = excluded.reason, field = excluded.field,
    last_at = now(), times = erasure_denials.times + 1`,
		truncate(storable(d.RequestRef), 255), truncate(storable(d.Door), 64), truncate(storable(d.Reason), 64), nonEmpty(truncate(storable(d.Field), 256)))
	if err != nil {
		return fmt.Errorf("record denial: %w", err)
	}
	return nil
}

// LookupDenial reads the denial of request_ref, or ErrNotFound.
func (q *Queue) LookupDenial(ctx context.Context, requestRef string) (Denial, error) {
	var d Denial
	var field *string
	err := q.pool.QueryRow(ctx, `SELECT request_ref, door, reason, field, first_at, last_at, times FROM erasure_denials WHERE request_ref = $1`,
		requestRef).Scan(&d.RequestRef, &d.Door, &d.Reason, &field, &d.FirstAt, &d.LastAt, &d.Times)
	if errors.Is(err, pgx.ErrNoRows) {
		return Denial{}, ErrNotFound
	}
	if err != nil {
		return Denial{}, fmt.Errorf("look up denial: %w", err)
	}
	if field != nil {
		d.Field = *field
	}
	return d, nil
}

// deleteDenials deletes up to limit denials last repeated longer than after ago, oldest first.
func (q *Queue) deleteDenials(ctx context.Context, after time.Duration, limit int) (int64, error) {
	tag, err := q.pool.Exec(ctx, `
DELETE FROM erasure_denials d USING (
    SELECT request_ref FROM erasure_denials WHERE last_at < now() - $1 * interval '1 millisecond' ORDER BY last_at LIMIT $2
) old WHERE d.request_ref = old.request_ref`, after.Milliseconds(), limit)
	if err != nil {
		return 0, fmt.Errorf("delete denials: %w", err)
	}
	return tag.RowsAffected(), nil
}
