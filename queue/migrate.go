package queue

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"github.com/erasure-worker/erasure-worker/migrations"
)

// versionTable records which migrations have run. It is schema-qualified by search_path, like
// the tables it versions.
const versionTable = "erasure_schema_version"

// Migrate applies every migration not yet applied, under tern's Postgres advisory lock: replicas
// that start at once wait for each other instead of racing. It returns the schema version before
// and after.
func Migrate(ctx context.Context, conn *pgx.Conn) (from, to int32, err error) {
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return 0, 0, fmt.Errorf("migrate: prepare version table: %w", err)
	}
	if err := m.LoadMigrations(migrations.FS); err != nil {
		return 0, 0, fmt.Errorf("migrate: load migrations: %w", err)
	}
	if from, err = m.GetCurrentVersion(ctx); err != nil {
		return 0, 0, fmt.Errorf("migrate: read schema version: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return from, 0, fmt.Errorf("migrate: %w", err)
	}
	if to, err = m.GetCurrentVersion(ctx); err != nil {
		return from, 0, fmt.Errorf("migrate: read schema version: %w", err)
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
