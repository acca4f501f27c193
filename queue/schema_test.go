package queue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

func TestCheckSchemaSaysWhatToDo(t *testing.T) {
	t.Parallel()
	binary, err := queue.SchemaVersion()
	if err != nil || binary < 2 {
		t.Fatalf("SchemaVersion() = %d, %v: this test needs at least two migrations", binary, err)
	}
	ctx := context.Background()
	open := func(t *testing.T, url string) *pgxpool.Pool {
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool
	}
	exec := func(t *testing.T, pool *pgxpool.Pool, sql string) {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T) *pgxpool.Pool
		applied int32
		want    string // the whole message; empty when the schema matches
	}{
		{"never migrated", func(t *testing.T) *pgxpool.Pool { return open(t, queuetest.EmptyURL(t)) }, 0,
			fmt.Sprintf("the database has no erasure-worker schema (version 0, this binary needs %d): run `erasure-worker migrate`", binary)},
		{"version table without its row", func(t *testing.T) *pgxpool.Pool {
			pool := open(t, queuetest.EmptyURL(t))
			exec(t, pool, `CREATE TABLE erasure_schema_version (version int4 NOT NULL)`)
			return pool
		}, 0, fmt.Sprintf("the database has no erasure-worker schema (version 0, this binary needs %d): run `erasure-worker migrate`", binary)},
		{"migrated", func(t *testing.T) *pgxpool.Pool { return queuetest.Pool(t) }, binary, ""},
		{"older", func(t *testing.T) *pgxpool.Pool {
			pool := queuetest.Pool(t)
			exec(t, pool, `UPDATE erasure_schema_version SET version = 1`)
			return pool
		}, 1, fmt.Sprintf("schema version 1 is older than this binary's %d: run `erasure-worker migrate`", binary)},
		{"newer", func(t *testing.T) *pgxpool.Pool {
			pool := queuetest.Pool(t)
			exec(t, pool, `UPDATE erasure_schema_version SET version = version + 1`)
			return pool
		}, binary + 1, fmt.Sprintf("schema version %d is newer than this binary's %d: roll forward to a newer erasure-worker (migrating down is not supported)", binary+1, binary)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := queue.New(tc.prepare(t))
			applied, err := q.AppliedSchemaVersion(ctx)
			if err != nil || applied != tc.applied {
				t.Errorf("AppliedSchemaVersion() = %d, %v; want %d", applied, err, tc.applied)
			}
			err = q.CheckSchema(ctx)
			if tc.want == "" {
				if err != nil {
					t.Errorf("CheckSchema() = %v; want nil", err)
				}
				return
			}
			var se *queue.SchemaError
			if !errors.As(err, &se) || se.Applied != tc.applied || se.Binary != binary {
				t.Fatalf("CheckSchema() = %#v; want a *SchemaError{Applied: %d, Binary: %d}", err, tc.applied, binary)
			}
			if err.Error() != tc.want {
				t.Errorf("CheckSchema() says\n\t%s\nwant\n\t%s", err, tc.want)
			}
		})
	}
}

// A database that cannot answer is not a schema mismatch: the caller must not tell the operator
// to migrate it.
func TestCheckSchemaOnAClosedPoolIsNotASchemaError(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), queuetest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	err = queue.New(pool).CheckSchema(context.Background())
	var se *queue.SchemaError
	if err == nil || errors.As(err, &se) {
		t.Errorf("CheckSchema() on a closed pool = %v; want an error that is not a *SchemaError", err)
	}
}
