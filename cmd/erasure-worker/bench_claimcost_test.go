//go:build bench

package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// 3. Claim cost as the table grows.
func benchClaimCost(t *testing.T, r *benchReport) {
	const (
		pending = 10000
		reps    = 300
		batch   = 64
		chunk   = 1_000_000
	)
	budget := 150 * time.Second // for building the 10 million rows
	if s := os.Getenv("BENCH_BUILD_BUDGET"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("BENCH_BUILD_BUDGET: %v", err)
		}
		budget = d
	}
	ctx := context.Background()
	dbURL := queuetest.URL(t)
	conn := connect(t, dbURL)
	// Autovacuum of millions of fresh rows would run during the measurement; vacuum is done here
	// between sizes instead, where it is cheap. Truncate at the end, whatever happens, so that a
	// database kept for a failed test does not keep gigabytes.
	benchExec(t, conn, `ALTER TABLE erasure_requests SET (autovacuum_enabled = false)`)
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, dbURL)
		if err == nil {
			_, _ = c.Exec(ctx, `TRUNCATE erasure_requests CASCADE`)
			c.Close(ctx)
		}
	})
	benchInsertPending(t, dbURL, "claim", 1, pending)

	tracer := newBenchTracer()
	pool := benchPool(t, dbURL, tracer)
	q := queue.New(pool)
	measure := func(label string) []time.Duration {
		benchExec(t, conn, `ANALYZE erasure_requests`)
		for range 20 { // warm the cache and the connections
			jobs, err := q.Claim(ctx, "bench-claim", batch, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := q.Release(ctx, "bench-claim", jobs); err != nil {
				t.Fatal(err)
			}
		}
		stop := r.profile(t, "3-claim-"+label)
		defer stop()
		lat := make([]time.Duration, 0, reps)
		for range reps {
			start := time.Now()
			jobs, err := q.Claim(ctx, "bench-claim", batch, time.Minute)
			lat = append(lat, time.Since(start))
			if err != nil {
				t.Fatal(err)
			}
			if len(jobs) != batch {
				t.Fatalf("claim returned %d jobs, want %d", len(jobs), batch)
			}
			if _, err := q.Release(ctx, "bench-claim", jobs); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(lat)
		return lat
	}

	var (
		built     int64
		base      time.Duration
		buildNote []string
		last      []time.Duration
	)
	for _, size := range []int64{10_000, 1_000_000, 10_000_000} {
		// Dead tuples from the previous size's claims go first, while the table is small.
		benchExec(t, conn, `VACUUM erasure_requests`)
		start := time.Now()
		for built < size {
			if built >= 1_000_000 && time.Since(start) > budget {
				break
			}
			to := min(built+chunk, size)
			benchExec(t, conn, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts,
                              run_after, received_at, due_at, completed_at)
SELECT 'done-' || lpad(i::text, 9, '0'), 'person-done-' || i, 'succeeded', 'deleted', 1,
       now() - interval '40 days', now() - interval '40 days', now() - interval '10 days',
       now() - interval '39 days' + i * interval '1 millisecond'
FROM generate_series($1::bigint, $2::bigint) AS i`, built+1, to)
			built = to
		}
		took := time.Since(start)
		var heap, total int64
		if err := conn.QueryRow(ctx, `SELECT pg_relation_size('erasure_requests'), pg_total_relation_size('erasure_requests')`).Scan(&heap, &total); err != nil {
			t.Fatal(err)
		}
		label := benchCount(built)
		buildNote = append(buildNote, fmt.Sprintf("%s finished rows built in %v (table %s, with indexes %s)",
			label, took.Round(100*time.Millisecond), benchBytes(heap), benchBytes(total)))
		if built < size {
			r.note("**3.** Building %s finished rows did not fit the %v budget: measured at %s.", benchCount(size), budget, label)
		}
		lat := measure(label)
		p50, p99 := benchPercentile(lat, 0.50), benchPercentile(lat, 0.99)
		r.info("3", fmt.Sprintf("claim of %d, %s finished + %s pending rows: p50 / p99", batch, label, benchCount(pending)),
			fmt.Sprintf("%s / %s", benchMs(p50), benchMs(p99)))
		t.Logf("claim at %s finished rows: p50 %v p99 %v max %v (built in %v)", label, p50, p99, lat[len(lat)-1], took)
		if base == 0 {
			base = p50
		}
		last = lat
		if built < size {
			break
		}
	}
	ratio := float64(benchPercentile(last, 0.5)) / float64(base)
	if !r.judge("3", fmt.Sprintf("claim p50 at %s finished rows / at 10k", benchCount(built)), fmt.Sprintf("%.2f", ratio), "≤ 1.5", ratio <= 1.5) {
		r.missed("3. Claim cost at "+benchCount(built)+" finished rows: the claim's plan (EXPLAIN ANALYZE, rolled back)", benchExplainClaim(t, dbURL, tracer))
		r.missed("3. Claim cost at "+benchCount(built)+" finished rows: CPU profile of the test process", pprofTop(r.profileDir+"/3-claim-"+benchCount(built)+".pprof"))
	}
	r.note("**3.** `queue.Claim(ctx, owner, %d, lease)` timed alone, each followed by `queue.Release` of the same rows, %d times "+
		"per size after 20 unmeasured rounds, beside %s pending rows. Finished rows (succeeded, deleted, completed_at set) are "+
		"added by INSERT … SELECT generate_series in chunks of a million, then ANALYZE; autovacuum is off for the table and "+
		"VACUUM runs before each size's rows are added, so no vacuum runs while claims are timed. %s.",
		batch, reps, benchCount(pending), strings.Join(buildNote, "; "))
}

// benchExplainClaim runs the claim statement the worker sends under EXPLAIN ANALYZE, in
// transactions rolled back: once planned for its parameters (a custom plan), and once with the
// generic plan that PostgreSQL may switch to after five runs of a prepared statement, which is
// how pgx sends it.
func benchExplainClaim(t *testing.T, dbURL string, tracer *benchTracer) string {
	sql, args := tracer.claimStatement()
	if sql == "" {
		return "no claim statement was seen"
	}
	ctx := context.Background()
	conn := connect(t, dbURL)
	explain := func(generic bool) string {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err.Error()
		}
		defer tx.Rollback(ctx)
		query := "EXPLAIN (ANALYZE, BUFFERS) " + sql
		if generic {
			if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = force_generic_plan"); err != nil {
				return err.Error()
			}
			if _, err := tx.Exec(ctx, "PREPARE bench_claim AS "+sql); err != nil {
				return err.Error()
			}
			params := make([]string, len(args))
			for i := range params {
				params[i] = fmt.Sprintf("$%d", i+1)
			}
			// EXPLAIN EXECUTE takes no bound parameters: the simple protocol inlines them.
			query = "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_claim(" + strings.Join(params, ", ") + ")"
			args = append([]any{pgx.QueryExecModeSimpleProtocol}, args...)
		}
		rows, err := tx.Query(ctx, query, args...)
		if err != nil {
			return err.Error()
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err.Error()
		}
		return strings.Join(lines, "\n")
	}
	return "custom plan:\n" + explain(false) + "\n\ngeneric plan:\n" + explain(true)
}
