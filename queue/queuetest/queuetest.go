// Package queuetest gives tests a fresh, migrated PostgreSQL database of their own, cloned
// from a template (pgtestdb), so tests that touch the database run in parallel and never see
// each other's rows. It talks to a real server, named by TEST_DATABASE_URL; `make test` starts a
// throwaway one when none is running. WaitFor is the one way tests wait for the queue (or
// anything else) to reach a state.
package queuetest

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver pgtestdb uses
	"github.com/peterldowns/pgtestdb"

	"github.com/erasure-worker/erasure-worker/migrations"
	"github.com/erasure-worker/erasure-worker/queue"
)

// defaultURL is where a developer's local server usually is.
const defaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ServerURL is the superuser URL of the test server: TEST_DATABASE_URL, or the local default.
func ServerURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return defaultURL
}

// URL returns the connection URL of a fresh database with every migration applied. It is
// dropped when the test passes and kept for inspection when it fails.
func URL(t testing.TB) string {
	t.Helper()
	return pgtestdb.Custom(t, config(t), migrator{}).URL()
}

// EmptyURL returns the connection URL of a fresh database with nothing in it, for testing
// migrations themselves.
func EmptyURL(t testing.TB) string {
	t.Helper()
	return pgtestdb.Custom(t, config(t), pgtestdb.NoopMigrator{}).URL()
}

func config(t testing.TB) pgtestdb.Config {
	t.Helper()
	cfg, err := pgx.ParseConfig(ServerURL())
	if err != nil {
		t.Fatalf("queuetest: TEST_DATABASE_URL: %v", err)
	}
	return pgtestdb.Config{
		DriverName: "pgx",
		Host:       cfg.Host,
		Port:       fmt.Sprint(cfg.Port),
		User:       cfg.User,
		Password:   cfg.Password,
		Database:   cfg.Database,
		Options:    "sslmode=disable",
	}
}

// Pool returns a pool on a fresh migrated database, closed when the test ends. It is configured
// as the binary configures its own (queue.ParsePoolConfig), so that every test runs the queue's
// statements the way production sends them.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := queue.ParsePoolConfig(URL(t))
	if err != nil {
		t.Fatalf("queuetest: %v", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("queuetest: connect: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// migrator builds pgtestdb's template with the same migrations `erasure-worker migrate` runs.
type migrator struct{}

// Hash names the template after the migrations' contents, so a changed migration gets a new
// template instead of a stale one.
func (migrator) Hash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
		h.Write(b)
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))[:16], err
}

func (migrator) Migrate(ctx context.Context, _ *sql.DB, conf pgtestdb.Config) error {
	conn, err := pgx.Connect(ctx, conf.URL())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, _, err = queue.Migrate(ctx, conn)
	return err
}

// WaitFor polls cond until it holds, failing the test after within with what in the message.
// It polls quickly at first (a unit test's queue drains in milliseconds) and backs off to a
// poll every 100ms, so a long wait against real processes does not load a busy machine.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	interval := 5 * time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(interval)
		interval = min(2*interval, 100*time.Millisecond)
	}
}
