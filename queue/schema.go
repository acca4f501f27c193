package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SchemaError says that the database's schema is not the one this binary was built for, and
// what to do about it. Commands print it as it is: it is written for the operator.
type SchemaError struct {
	Applied int32 // the version `migrate` recorded in the database; 0 when it never ran
	Binary  int32 // the version this binary carries (SchemaVersion)
}

func (e *SchemaError) Error() string {
	switch {
	case e.Applied == 0:
		return fmt.Sprintf("the database has no erasure-worker schema (version 0, this binary needs %d): run `erasure-worker migrate`", e.Binary)
	case e.Applied < e.Binary:
		return fmt.Sprintf("schema version %d is older than this binary's %d: run `erasure-worker migrate`", e.Applied, e.Binary)
	default:
		return fmt.Sprintf("schema version %d is newer than this binary's %d: roll forward to a newer erasure-worker (migrating down is not supported)", e.Applied, e.Binary)
	}
}

// AppliedSchemaVersion reads the schema version `migrate` recorded. A database it never ran
// against has no version table: that is version 0, not an error.
func (q *Queue) AppliedSchemaVersion(ctx context.Context) (int32, error) {
	var v int32
	err := q.pool.QueryRow(ctx, `SELECT version FROM `+versionTable).Scan(&v)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "42P01": // undefined_table
		return 0, nil
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read the schema version: %w", err)
	}
	return v, nil
}

// CheckSchema returns nil when the database holds exactly this binary's schema, a
// *SchemaError when it holds an older or newer one (or none), and any other error when the
// version cannot be read.
func (q *Queue) CheckSchema(ctx context.Context) error {
	want, err := SchemaVersion()
	if err != nil {
		return fmt.Errorf("read the migrations this binary carries: %w", err)
	}
	have, err := q.AppliedSchemaVersion(ctx)
	if err != nil {
		return err
	}
	if have != want {
		return &SchemaError{Applied: have, Binary: want}
	}
	return nil
}
