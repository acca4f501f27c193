package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"

	"github.com/erasure-worker/erasure-worker/migrations"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// oldReleaseBeatSQL is the heartbeat of the release before migration 011: it does not tell
// whether the replica is paused.
const oldReleaseBeatSQL = `
WITH me AS (
    INSERT INTO erasure_workers (id, busy, share_rps, expires_at, ceiling_rps, burst, takes_from_bucket)
    VALUES ($1, $2, $3, now() + $7 * interval '1 millisecond', $4, nullif($9, 0), true)
    ON CONFLICT (id) DO UPDATE
    SET heartbeat_at = now(), busy = excluded.busy, share_rps = excluded.share_rps, expires_at = excluded.expires_at,
        ceiling_rps = excluded.ceiling_rps, burst = excluded.burst, takes_from_bucket = true
),
gone AS (
    DELETE FROM erasure_workers WHERE expires_at < now() - interval '1 hour'
),
others AS (
    SELECT count(*) AS n,
           coalesce(sum(CASE WHEN busy THEN 1.0 ELSE $8 END), 0)::float8 AS weight,
           least($4, min(ceiling_rps)) AS ceiling,
           coalesce(least(nullif($9, 0), min(burst)), 0) AS burst
    FROM erasure_workers
    WHERE id <> $1 AND expires_at > now()
),
lim AS (
    INSERT INTO erasure_rate_limit AS l (ceiling_rps, current_rps, burst)
    SELECT ceiling, ceiling, nullif(burst, 0) FROM others
    ON CONFLICT (singleton) DO UPDATE
    SET ceiling_rps = excluded.ceiling_rps, burst = excluded.burst,
        current_rps = CASE
            WHEN l.decreased_at > now() - $6 * interval '1 millisecond' THEN least(l.current_rps, excluded.ceiling_rps)
            ELSE least(excluded.ceiling_rps, l.current_rps + $5 * extract(epoch FROM now() - l.increased_at))
        END,
        increased_at = now()
    RETURNING current_rps, ceiling_rps, greatest(extract(epoch FROM l.hold_until - now()), 0) AS hold
)
SELECT lim.ceiling_rps, others.burst, lim.current_rps, lim.hold::float8, others.n, others.weight
FROM lim, others`

// While a rolling update runs, the previous release's replicas keep beating after 011, and
// read as replicas that do not tell their pause, beside the new ones that do.
func TestMigration011KeepsThePreviousReleaseWorking(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, m, url := schemaAt(t, 10)
	if m.Migrations[10].Name != "011_replica_paused.sql" {
		t.Fatalf("migration 11 is %v", m.Migrations[10].Name)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%.60s: %v", sql, err)
		}
	}
	oldBeat := func() {
		t.Helper()
		exec(oldReleaseBeatSQL, "old-replica", true, 5.0, 10.0, 1.0, int64(2000), int64(60000), 0.01, 0)
	}
	oldBeat()
	if from, to, err := queue.Migrate(ctx, conn); err != nil || from != 10 || int(to) != len(m.Migrations) {
		t.Fatalf("migrate: %d -> %d (%v); want 10 -> %d", from, to, err, len(m.Migrations))
	}
	oldBeat()

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	q := queue.New(pool)
	for _, h := range []queue.Heartbeat{
		{ID: "new-paused", Busy: true, CeilingRPS: 10, TTL: time.Minute, IdleWeight: 0.01, Paused: true},
		{ID: "new-working", Busy: true, CeilingRPS: 10, TTL: time.Minute, IdleWeight: 0.01},
	} {
		if _, err := q.Beat(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	oldBeat() // after a new replica's beat too
	rl, err := q.ReadRateLimit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]bool{}
	for _, r := range rl.Replicas {
		got[r.ID] = [2]bool{r.Paused, r.PausedKnown}
	}
	want := map[string][2]bool{"old-replica": {false, false}, "new-paused": {true, true}, "new-working": {false, true}}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("replica %s: paused, known = %v; want %v", id, got[id], w)
		}
	}
}

// schemaAt connects to a new database that holds the schema of the release whose last
// migration is version, as that release's migrate left it, and returns the migrations this
// binary carries and the database's URL.
func schemaAt(t *testing.T, version int) (*pgx.Conn, *migrate.Migrator, string) {
	t.Helper()
	ctx := context.Background()
	url := queuetest.EmptyURL(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	m, err := migrate.NewMigrator(ctx, nil, "erasure_schema_version")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.LoadMigrations(migrations.FS); err != nil {
		t.Fatal(err)
	}
	if len(m.Migrations) <= version {
		t.Fatalf("%d migrations: none after %d to test", len(m.Migrations), version)
	}
	for _, mig := range m.Migrations[:version] {
		if _, err := conn.Exec(ctx, mig.UpSQL); err != nil {
			t.Fatalf("%s: %v", mig.Name, err)
		}
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE erasure_schema_version (version int4 NOT NULL); INSERT INTO erasure_schema_version VALUES (%d)`, version)); err != nil {
		t.Fatal(err)
	}
	return conn, m, url
}
