//go:build bench

package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// What the sections of TestBench (one file each: bench_pipeline, bench_claimcost, bench_pickup,
// bench_memory, bench_realistic) share.

const (
	benchNoLimitRPS   = 1e6 // "no rate limit": far above anything this machine can do
	benchNoLimitBurst = 1e5 // the default, a tenth of the rate: a bucket 100ms deep
)

func benchKnotClient(t *testing.T, baseURL string) *knotclient.Client {
	t.Helper()
	c, err := knotclient.New(knotclient.Config{BaseURL: baseURL, ClientID: "e2e-client", Secret: "e2e-secret"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func benchPool(t *testing.T, dbURL string, tracer pgx.QueryTracer) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if tracer != nil {
		cfg.ConnConfig.Tracer = tracer
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func benchExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", strings.Fields(sql)[0], err)
	}
}

// benchInsertPending inserts pending requests from..to in one statement, on a connection of its
// own that is closed before it returns.
func benchInsertPending(t *testing.T, dbURL, prefix string, from, to int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := benchInsertPendingOn(conn, prefix, int64(from), int64(to)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `ANALYZE erasure_requests`); err != nil {
		t.Fatal(err)
	}
}

// benchInsertPendingOn inserts pending requests from..to in one statement on conn.
func benchInsertPendingOn(conn *pgx.Conn, prefix string, from, to int64) error {
	_, err := conn.Exec(context.Background(), `
INSERT INTO erasure_requests (request_ref, external_user_id)
SELECT $1 || '-' || lpad(i::text, 9, '0'), 'person-' || $1 || '-' || i
FROM generate_series($2::bigint, $3::bigint) AS i`, prefix, from, to)
	if err != nil {
		return fmt.Errorf("insert pending: %w", err)
	}
	return nil
}

func benchDBName(t *testing.T, dbURL string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

// benchXacts is the database's committed and rolled back transactions so far, read from
// another database so that the reading adds none.
func benchXacts(t *testing.T, dbName string) int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, queuetest.ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, `SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1`, dbName).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// benchGauge sums the samples of one metric family.
func benchGauge(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// benchProcStatus reads a kB field of /proc/PID/status.
func benchProcStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// benchPercentile is the nearest-rank percentile of sorted durations.
func benchPercentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func benchMs(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func benchCount(n int64) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.FormatInt(n, 10)
}

func benchBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d kB", n/1024)
}
