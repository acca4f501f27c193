package queue

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"github.com/erasure-worker/erasure-worker/migrations"
)

// versionTable records which migrations have run. It is schema-qualified by search_path, like
// the tables it versions. Its shape is tern's: one row, one int4 column named version.
const versionTable = "erasure_schema_version"

// migrateLock is tern's advisory lock number: a `migrate` of an older binary, which ran tern's
// Migrator under the session lock of that number, and this one still exclude each other.
const migrateLock = int64(9628173550095224)

// Migrate applies every migration not yet applied and returns the schema version before and
// after. tern parses the migrations; they run here, all in one transaction under a
// transaction-level advisory lock: replicas that start at once wait for each other instead of
// racing, a failed migration leaves the schema as it was, and nothing outlives the transaction.
// That is what lets it run through a pooler in transaction mode, where tern's own Migrator
// cannot: its session advisory lock would be taken on one server connection and released on
// another (or never), and the next migrate would wait for it for ever.
func Migrate(ctx context.Context, conn *pgx.Conn) (from, to int32, err error) {
	m, err := migrate.NewMigrator(ctx, nil, versionTable) // no connection: it only parses
	if err != nil {
		return 0, 0, fmt.Errorf("migrate: %w", err)
	}
	if err := m.LoadMigrations(migrations.FS); err != nil {
		return 0, 0, fmt.Errorf("migrate: load migrations: %w", err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("migrate: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // a no-op after Commit
	// Statements without arguments go by the simple protocol, whatever the connection's mode:
	// nothing is prepared, and a migration may hold many statements.
	if _, err := tx.Exec(ctx, fmt.Sprintf(`SELECT pg_advisory_xact_lock(%d)`, migrateLock)); err != nil {
		return 0, 0, fmt.Errorf("migrate: take the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `
CREATE TABLE IF NOT EXISTS `+versionTable+` (version int4 NOT NULL);
INSERT INTO `+versionTable+` (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM `+versionTable+`)`); err != nil {
		return 0, 0, fmt.Errorf("migrate: prepare version table: %w", err)
	}
	if err := tx.QueryRow(ctx, `SELECT version FROM `+versionTable, pgx.QueryExecModeSimpleProtocol).Scan(&from); err != nil {
		return 0, 0, fmt.Errorf("migrate: read schema version: %w", err)
	}
	to = int32(len(m.Migrations))
	if from < 0 || from > to {
		return from, 0, fmt.Errorf("migrate: schema version %d is newer than this binary's %d: roll forward to a newer erasure-worker (migrating down is not supported)", from, to)
	}
	for _, mig := range m.Migrations[from:] {
		if _, err := tx.Exec(ctx, mig.UpSQL); err != nil {
			return from, 0, fmt.Errorf("migrate: %s: %w", mig.Name, err)
		}
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET version = %d`, versionTable, to)); err != nil {
		return from, 0, fmt.Errorf("migrate: record schema version: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return from, 0, fmt.Errorf("migrate: %w", err)
	}
	return from, to, nil
}

// SchemaVersion is the number of the newest migration this binary carries.
func SchemaVersion() (int32, error) {
	names, err := migrate.FindMigrations(migrations.FS)
	if err != nil {
		return 0, err
	}
	return int32(len(names)), nil
}
