//go:build bench

package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

const (
	// benchPurgeRows is how many finished rows section 11 purges: half of them due to be
	// pseudonymised, half due to be deleted. BENCH_PURGE_ROWS changes it.
	benchPurgeRows = 1_000_000
	// benchPurgeOn and benchPurgeOff are the windows with the purge and without, in turn.
	benchPurgeOn  = 30 * time.Second
	benchPurgeOff = 15 * time.Second
	// benchPurgeAhead is how many pending rows the feeder keeps ahead of the worker, so that it
	// never runs dry while the purge runs; it adds them benchPurgeChunk at a time.
	benchPurgeAhead = 150_000
	benchPurgeChunk = 20_000
)

// 11. Purging a million finished rows while the worker runs at full speed (issue #12).
func benchPurge(t *testing.T, r *benchReport) {
	total := int64(benchPurgeRows)
	if s := os.Getenv("BENCH_PURGE_ROWS"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 2 {
			t.Fatalf("BENCH_PURGE_ROWS=%q: want a count of rows, at least 2", s)
		}
		total = n
	}
	toPseudonymise, toDelete := total/2, total-total/2
	ctx := context.Background()
	_, fakeURL := startKnotfake(t, "-missing", "0")
	dbURL := queuetest.URL(t)
	conn := connect(t, dbURL)
	autovacuum := benchAutovacuumOn(t)

	built := time.Now()
	benchPurgeBuild(t, conn, "", toPseudonymise, toDelete)
	benchExec(t, conn, `VACUUM ANALYZE`)
	buildTook := time.Since(built)
	var tableBytes int64
	if err := conn.QueryRow(ctx, `SELECT pg_total_relation_size('erasure_requests') + pg_total_relation_size('erasure_attempts')
  + pg_total_relation_size('erasure_reports') + pg_total_relation_size('erasure_report_attempts')`).Scan(&tableBytes); err != nil {
		t.Fatal(err)
	}

	// The worker and the purge share one pool, as in `run`.
	tracer := newBenchTracer()
	pool := benchPool(t, dbURL, tracer)
	q := queue.New(pool)
	reg := prometheus.NewRegistry()
	w, err := worker.New(q, benchKnotClient(t, fakeURL), worker.Config{
		ID: "bench-purge", RateLimit: benchNoLimitRPS, Burst: benchNoLimitBurst, Metrics: worker.NewMetrics(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	purgeMetrics := worker.NewRetentionMetrics(reg)
	purge, err := worker.NewRetention(q, worker.RetentionConfig{
		ID: "bench-purge", Identifier: worker.DefaultIdentifierRetention,
		Keys:     worker.NewIdentifierKeys([]byte("the key of section 11, at least 32 bytes long")),
		Evidence: worker.DefaultEvidenceRetention, Metrics: purgeMetrics,
	})
	if err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	completed := func() int64 { return int64(benchGauge(t, reg, "erasure_requests_completed_total")) }
	feeder := connect(t, dbURL)
	var inserted int64
	feed := func() error {
		for inserted-completed() < benchPurgeAhead {
			if err := benchInsertPendingOn(feeder, "purge", inserted+1, inserted+benchPurgeChunk); err != nil {
				return fmt.Errorf("feeding the worker: %w", err)
			}
			inserted += benchPurgeChunk
		}
		return nil
	}
	if err := feed(); err != nil {
		t.Fatal(err)
	}
	benchExec(t, conn, `ANALYZE erasure_requests`)
	var bg sync.WaitGroup
	bg.Go(func() { w.Run(runCtx) })
	bg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-tick.C:
				if err := feed(); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	queuetest.WaitFor(t, time.Minute, "the worker's first result", func() bool { return completed() > 0 })
	time.Sleep(5 * time.Second) // past the start, to a steady pace

	// Windows with and without the purge take turns until it is done, so that both share
	// whatever else the machine does meanwhile: autovacuum, checkpoints, the table's growth.
	tracer.keep("claim", "finish", "retention select", "pseudonymise", "retention delete")
	stopProfile := r.profile(t, "11-purge")
	var (
		windows                    []benchPurgeWindow
		purging                    time.Duration // the time the purge ran, in all
		pseudonymisedIn, deletedIn time.Duration // the time it had run when each step was done
	)
	// Done when nothing is due, by the partial indexes the purge reads: its counters miss a
	// batch that committed while its window's end cancelled it.
	watcher := connect(t, dbURL)
	due := func(after time.Duration, where string) bool {
		var yes bool
		if err := watcher.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM erasure_requests WHERE `+where+
			` AND completed_at < now() - $1 * interval '1 millisecond')`, after.Milliseconds()).Scan(&yes); err != nil {
			t.Errorf("reading what is due: %v", err)
			return false
		}
		return yes
	}
	window := func(on bool, d time.Duration) {
		wnd := benchPurgeWindow{on: on, from: time.Now(), doneFrom: completed()}
		var wg sync.WaitGroup
		pctx, stop := context.WithCancel(runCtx)
		if on {
			wg.Go(func() { purge.Run(pctx) })
		}
		for time.Since(wnd.from) < d && (!on || pseudonymisedIn == 0 || deletedIn == 0) {
			time.Sleep(250 * time.Millisecond)
			if !on {
				continue
			}
			ran := purging + time.Since(wnd.from)
			if pseudonymisedIn == 0 && !due(worker.DefaultIdentifierRetention, `pseudonymised_at IS NULL AND status IN ('succeeded', 'failed')`) {
				pseudonymisedIn = ran
			}
			if deletedIn == 0 && !due(worker.DefaultEvidenceRetention, `pseudonymised_at IS NOT NULL`) {
				deletedIn = ran
			}
		}
		stop()
		wg.Wait()
		wnd.to, wnd.doneTo = time.Now(), completed()
		if on {
			purging += wnd.to.Sub(wnd.from)
		}
		windows = append(windows, wnd)
	}
	for pseudonymisedIn == 0 || deletedIn == 0 {
		if purging > 10*time.Minute {
			t.Fatalf("after 10 minutes of purging, %v of %d pseudonymised and %v of %d deleted",
				testutil.ToFloat64(purgeMetrics.Pseudonymised), toPseudonymise, testutil.ToFloat64(purgeMetrics.Deleted), toDelete)
		}
		window(false, benchPurgeOff)
		window(true, benchPurgeOn)
	}
	window(false, benchPurgeOff)
	stopProfile()
	cancel()
	bg.Wait()
	pool.Close()

	// The purge did its job: no raw id of the week-old rows, nothing left of the old ones.
	var raw, left int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM erasure_requests WHERE request_ref LIKE 'week-%' AND pseudonymised_at IS NULL`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM erasure_requests WHERE request_ref LIKE 'old-%')
  + (SELECT count(*) FROM erasure_reports) + (SELECT count(*) FROM erasure_report_attempts)`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if raw != 0 || left != 0 {
		t.Errorf("after the purge: %d week-old rows keep their raw id, %d old rows, reports and report attempts are left", raw, left)
	}

	var vacuums, analyzes int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(sum(autovacuum_count), 0), coalesce(sum(autoanalyze_count), 0) FROM pg_stat_user_tables`).
		Scan(&vacuums, &analyzes); err != nil {
		t.Fatal(err)
	}
	floorRows := min(toPseudonymise, toDelete, 100_000)
	floorP, floorD := benchPurgeFloor(t, conn, floorRows)

	base, during := benchPurgePhase(tracer, windows, false), benchPurgePhase(tracer, windows, true)
	for _, p := range []struct {
		name string
		ph   benchPurgePhaseFigures
	}{{"without the purge", base}, {"while purging", during}} {
		r.info("11", fmt.Sprintf("claim p50 / p99 / max, %s (%d windows, %v)", p.name, p.ph.windows, p.ph.took.Round(time.Second)),
			fmt.Sprintf("%s / %s / %s (%d claims)", benchMs(p.ph.claimP50), benchMs(p.ph.claimP99), benchMs(p.ph.claimMax), p.ph.claims))
		r.info("11", "finish p50 / p99, "+p.name, fmt.Sprintf("%s / %s (%d finishes)", benchMs(p.ph.finishP50), benchMs(p.ph.finishP99), p.ph.finishes))
		r.info("11", "worker's completions, "+p.name, fmt.Sprintf("%.0f/s", p.ph.rate))
	}
	ratio := float64(during.claimP99) / float64(base.claimP99)
	if !r.judge("11", "claim p99 while purging / without", fmt.Sprintf("%.2f", ratio), "≤ 1.5", ratio <= 1.5) {
		r.missed("11. Claim p99 while purging: CPU profile of the test process (worker and purge in-process)", pprofTop(r.profileDir+"/11-purge.pprof"))
	}
	r.info("11", fmt.Sprintf("purge of %s rows: pseudonymised / deleted per second of purging, each until its last row", benchCount(total)),
		fmt.Sprintf("%.0f/s (%s in %v) / %.0f/s (%s in %v)",
			float64(toPseudonymise)/pseudonymisedIn.Seconds(), benchCount(toPseudonymise), pseudonymisedIn.Round(100*time.Millisecond),
			float64(toDelete)/deletedIn.Seconds(), benchCount(toDelete), deletedIn.Round(100*time.Millisecond)))
	r.info("11", "purge of "+benchCount(total)+" rows: rows per second of purging, both steps", fmt.Sprintf("%.0f/s (%v)", float64(total)/purging.Seconds(), purging.Round(100*time.Millisecond)))
	r.info("11", fmt.Sprintf("floor: bare UPDATE / DELETE … WHERE id = ANY(1000 ids), %s rows each, alone, no pause", benchCount(floorRows)),
		fmt.Sprintf("%.0f/s / %.0f/s", floorP, floorD))
	for _, kind := range []string{"retention select", "pseudonymise", "retention delete"} {
		lat := tracer.between(kind, windows[0].from, windows[len(windows)-1].to)
		if len(lat) > 0 {
			r.info("11", kind+" statements of 1000 rows: how many, p50 / max", fmt.Sprintf("%d, %s / %s",
				len(lat), benchMs(benchPercentile(lat, 0.5)), benchMs(lat[len(lat)-1])))
		}
	}
	r.note("**11.** `worker.Run` and `worker.Retention.Run` in the test process on one pool, as `run` has them, with the "+
		"default retention (IDENTIFIER_RETENTION 7d, EVIDENCE_RETENTION 730d, RETENTION_INTERVAL 1m, batches of 1000), "+
		"no rate limit and knotfake with no latency. Before the worker starts the table holds %s rows finished nine to "+
		"eight days ago with their raw ids and %s finished 732 to 731 days ago and pseudonymised, each with one call, "+
		"the old ones with a delivered report and its attempt (%s with indexes, built and VACUUM ANALYZEd in %v); a "+
		"feeder keeps %s pending rows ahead of the worker, %s at a time. Statement times are a `pgx.QueryTracer`'s on "+
		"the shared pool, from 5 s after the first result, in windows that take turns: %v without the purge, then %v "+
		"of `Retention.Run` (started anew each time, as a replica that takes the duty over), until it has "+
		"pseudonymised and deleted all of them, and %v without to close. Autovacuum is %s: it vacuumed the "+
		"tables %d times and analyzed them %d times meanwhile. The floor is the same rows built "+
		"again, %s of each kind, once the worker has stopped, and written by bare statements of a thousand ids read "+
		"beforehand, one after another on one connection: what these cores can pseudonymise and delete with nothing "+
		"else running and no pause.",
		benchCount(toPseudonymise), benchCount(toDelete), benchBytes(tableBytes), buildTook.Round(time.Second),
		benchCount(benchPurgeAhead), benchCount(benchPurgeChunk), benchPurgeOff, benchPurgeOn, benchPurgeOff, autovacuum, vacuums, analyzes, benchCount(floorRows))
	t.Logf("purge: without %+v; with %+v; pseudonymised in %v, deleted in %v of %v purging; statements %s", base, during, pseudonymisedIn, deletedIn, purging, tracer)
}

// benchAutovacuumOn turns autovacuum on for the server if it is off (a CI server may run without
// it), until the test ends, and says what it found: the purge's deletions and the worker's own
// updates leave dead rows that a deployment's autovacuum clears while both run.
func benchAutovacuumOn(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, queuetest.ServerURL())
	var on string
	if err := conn.QueryRow(ctx, `SHOW autovacuum`).Scan(&on); err != nil {
		t.Fatal(err)
	}
	if on == "on" {
		return "on, as the server had it"
	}
	benchExec(t, conn, `ALTER SYSTEM SET autovacuum = on`)
	benchExec(t, conn, `SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, queuetest.ServerURL())
		if err != nil {
			t.Errorf("autovacuum was turned on for section 11 and stays on: %v", err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, `ALTER SYSTEM RESET autovacuum`); err == nil {
			_, err = c.Exec(ctx, `SELECT pg_reload_conf()`)
		}
	})
	queuetest.WaitFor(t, 10*time.Second, "autovacuum to be on", func() bool {
		return conn.QueryRow(ctx, `SHOW autovacuum`).Scan(&on) == nil && on == "on"
	})
	return "on (the server had it off; the section turned it on, with ALTER SYSTEM, and off again after)"
}

// benchPurgeBuild inserts what a purge meets in a deployment that keeps the defaults: week
// requests that finished eight to nine days ago with their raw id and one call, and old ones that
// finished 731 to 732 days ago, pseudonymised long since, each with its call and a delivered
// report with its attempt. Their refs start with prefix, then "week-" or "old-".
func benchPurgeBuild(t *testing.T, conn *pgx.Conn, prefix string, week, old int64) {
	t.Helper()
	benchExec(t, conn, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts,
                              run_after, received_at, due_at, completed_at)
SELECT $2 || 'week-' || lpad(i::text, 9, '0'), 'person-' || $2 || 'week-' || i, 'succeeded', 'deleted', 1,
       now() - interval '9 days', now() - interval '9 days', now() + interval '21 days',
       now() - interval '9 days' + i * (interval '1 day' / $1)
FROM generate_series(1, $1::bigint) AS i`, week, prefix)
	benchExec(t, conn, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts,
                              run_after, received_at, due_at, completed_at, pseudonymised_at)
SELECT $2 || 'old-' || lpad(i::text, 9, '0'), 'hmac-sha256:' || encode(sha256(($2 || i)::bytea), 'hex'),
       'succeeded', 'deleted', 1,
       now() - interval '732 days', now() - interval '732 days', now() - interval '702 days',
       now() - interval '732 days' + i * (interval '1 day' / $1), now() - interval '725 days'
FROM generate_series(1, $1::bigint) AS i`, old, prefix)
	benchExec(t, conn, `
INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, result)
SELECT id, 1, 'worker-old', completed_at - interval '40 milliseconds', 40, 200, 'deleted'
FROM erasure_requests WHERE request_ref LIKE $1 || 'week-%' OR request_ref LIKE $1 || 'old-%'`, prefix)
	benchExec(t, conn, `
INSERT INTO erasure_reports (request_id, connector, status, attempts, ready_at, delivered_at, last_result, last_http_status)
SELECT id, 'webhook', 'delivered', 1, completed_at, completed_at + interval '1 second', 'delivered', 204
FROM erasure_requests WHERE request_ref LIKE $1 || 'old-%'`, prefix)
	benchExec(t, conn, `
INSERT INTO erasure_report_attempts (report_id, attempted_at, worker, duration_ms, http_status, result)
SELECT p.id, p.delivered_at, 'worker-old', 30, 204, 'delivered'
FROM erasure_reports p JOIN erasure_requests r ON r.id = p.request_id WHERE r.request_ref LIKE $1 || 'old-%'`, prefix)
}

// benchPurgeFloor is the physical limit beside the purge: the same rows built again and
// written by bare batched statements, a thousand known ids each, one after another with no
// pause and nothing else running. It returns the rows per second of each.
func benchPurgeFloor(t *testing.T, conn *pgx.Conn, n int64) (pseudonymise, remove float64) {
	t.Helper()
	ctx := context.Background()
	benchPurgeBuild(t, conn, "floor-", n, n)
	benchExec(t, conn, `VACUUM ANALYZE`)
	run := func(like, sql string) float64 {
		rows, err := conn.Query(ctx, `SELECT id FROM erasure_requests WHERE request_ref LIKE $1 ORDER BY id`, like)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for from := 0; from < len(ids); from += 1000 {
			benchExec(t, conn, sql, ids[from:min(from+1000, len(ids))])
		}
		return float64(len(ids)) / time.Since(start).Seconds()
	}
	pseudonymise = run("floor-week-%", `UPDATE erasure_requests
SET external_user_id = 'hmac-sha256:' || encode(sha256(convert_to(external_user_id, 'UTF8')), 'hex'), pseudonymised_at = now()
WHERE id = ANY($1)`)
	remove = run("floor-old-%", `DELETE FROM erasure_requests WHERE id = ANY($1)`)
	return pseudonymise, remove
}

// benchPurgeWindow is a time with or without the purge, and the worker's completions at its ends.
type benchPurgeWindow struct {
	on               bool
	from, to         time.Time
	doneFrom, doneTo int64
}

type benchPurgePhaseFigures struct {
	windows, claims, finishes    int
	took                         time.Duration
	claimP50, claimP99, claimMax time.Duration
	finishP50, finishP99         time.Duration
	rate                         float64
}

// benchPurgePhase is the figures of the windows with the purge (on) or without.
func benchPurgePhase(tr *benchTracer, windows []benchPurgeWindow, on bool) benchPurgePhaseFigures {
	var f benchPurgePhaseFigures
	var claims, finishes []time.Duration
	var done int64
	for _, w := range windows {
		if w.on != on {
			continue
		}
		f.windows++
		f.took += w.to.Sub(w.from)
		done += w.doneTo - w.doneFrom
		claims = append(claims, tr.between("claim", w.from, w.to)...)
		finishes = append(finishes, tr.between("finish", w.from, w.to)...)
	}
	slices.Sort(claims)
	slices.Sort(finishes)
	f.claims, f.finishes, f.rate = len(claims), len(finishes), float64(done)/f.took.Seconds()
	if len(claims) > 0 {
		f.claimP50, f.claimP99, f.claimMax = benchPercentile(claims, 0.5), benchPercentile(claims, 0.99), claims[len(claims)-1]
	}
	if len(finishes) > 0 {
		f.finishP50, f.finishP99 = benchPercentile(finishes, 0.5), benchPercentile(finishes, 0.99)
	}
	return f
}
