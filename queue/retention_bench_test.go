package queue_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// BenchmarkRetentionIndexes weighs the purge's indexes: what they cost the hot path (a finish of
// 100 claimed requests) against what they save the purge (its select of the ids due, and the
// gauges), on a table of 200,000 finished requests (30,000 still identified, the rest
// pseudonymised). Four databases, one per choice, take turns round by round, so that a busy
// machine slows each alike; each figure is the median over the rounds, and the WAL a finish
// writes is exact. The WAL is the server's: run it on a server of its own,
//
//	WITH_POSTGRES_THROWAWAY=1 deploy/local/with-postgres go test -run '^$' -bench RetentionIndexes -benchtime 300x ./queue
func BenchmarkRetentionIndexes(b *testing.B) {
	type choice struct {
		name, sql string
		q         *queue.Queue
		tb        *testBundle
		finish    []time.Duration
		wal       []int64
		purge     []time.Duration
		stats     []time.Duration
	}
	choices := []*choice{
		{name: "partial", sql: ``}, // migration 006
		{name: "none", sql: `DROP INDEX erasure_requests_identified, erasure_requests_pseudonymised`},
		{name: "brin", sql: `DROP INDEX erasure_requests_identified, erasure_requests_pseudonymised;
CREATE INDEX erasure_requests_completed_brin ON erasure_requests USING brin (completed_at)`},
		{name: "finished", sql: `DROP INDEX erasure_requests_identified, erasure_requests_pseudonymised;
CREATE INDEX erasure_requests_finished ON erasure_requests (completed_at) WHERE status IN ('succeeded', 'failed')`},
	}
	for _, c := range choices {
		pool := queuetest.Pool(b)
		c.q, c.tb = queue.New(pool), &testBundle{pool: pool, ctx: context.Background()}
		for _, sql := range []string{`
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at, pseudonymised_at)
SELECT 'old-' || i,
       CASE WHEN i > 30000 THEN 'hmac-sha256:' || encode(sha256(('u' || i)::bytea), 'hex') ELSE 'user-' || i END,
       'succeeded', 'deleted', 1, now() - i * interval '20 seconds',
       CASE WHEN i > 30000 THEN now() END
FROM generate_series(1, 200000) AS i`, c.sql, `VACUUM ANALYZE erasure_requests`} {
			if sql == "" {
				continue
			}
			if _, err := pool.Exec(c.tb.ctx, sql); err != nil {
				b.Fatalf("%s: %v", c.name, err)
			}
		}
	}
	lsn := func(c *choice) int64 {
		var n int64
		if err := c.tb.pool.QueryRow(c.tb.ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint`).Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n
	}
	timed := func(f func() error) time.Duration {
		began := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return time.Since(began)
	}
	b.ResetTimer()
	for i := range b.N {
		for _, c := range choices {
			ctx := c.tb.ctx
			if _, err := c.tb.pool.Exec(ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id)
SELECT 'b-' || $1::int || '-' || j, 'new-user-' || $1::int || '-' || j FROM generate_series(1, 100) AS j`, i); err != nil {
				b.Fatal(err)
			}
			jobs, err := c.q.Claim(ctx, "w1", 100, time.Minute)
			if err != nil || len(jobs) != 100 {
				b.Fatalf("claimed %d (%v)", len(jobs), err)
			}
			results := make([]queue.Result, len(jobs))
			for k, j := range jobs {
				results[k] = j.Result()
				results[k].Transition, results[k].Outcome = queue.Succeed, queue.OutcomeDeleted
				results[k].Calls = []queue.Call{{StartedAt: time.Now(), Duration: time.Millisecond, HTTPStatus: 200, Result: "deleted"}}
			}
			before := lsn(c)
			c.finish = append(c.finish, timed(func() error { _, err := c.q.Finish(ctx, "w1", results); return err }))
			c.wal = append(c.wal, lsn(c)-before)
			c.purge = append(c.purge, timed(func() error {
				_, err := c.q.ToPseudonymise(ctx, 7*24*time.Hour, queue.RetentionCursor{}, 1000)
				return err
			}))
			c.stats = append(c.stats, timed(func() error { _, err := c.q.RetentionStats(ctx, 7*24*time.Hour, 730*24*time.Hour); return err }))
		}
	}
	b.StopTimer()
	for _, c := range choices {
		name := strings.ReplaceAll(c.name, " ", "_")
		b.ReportMetric(float64(median(c.finish).Microseconds()), "µs/finish-"+name)
		b.ReportMetric(float64(median(c.wal)), "WAL-B/finish-"+name)
		b.ReportMetric(float64(median(c.purge).Microseconds()), "µs/select-"+name)
		b.ReportMetric(float64(median(c.stats).Microseconds()), "µs/stats-"+name)
	}
}

func median[T int64 | time.Duration](s []T) T {
	s = slices.Clone(s)
	slices.Sort(s)
	return s[len(s)/2]
}
