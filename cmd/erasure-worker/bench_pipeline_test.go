//go:build bench

package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

// benchBacklog is the deep backlog of sections 1 and 2.
const benchBacklog = 30000

// benchFixedConcurrency is the CONCURRENCY section 1 tries too when auto misses its goal: as
// many calls as knotclient keeps idle connections for, so that none has to dial.
const benchFixedConcurrency = 64

// 1 and 2. Pipeline efficiency, and database round trips per request at full throughput.
func benchPipeline(t *testing.T, r *benchReport) {
	_, fakeURL := startKnotfake(t, "-missing", "0")
	conc := 0 // auto
	if s := os.Getenv("BENCH_CONCURRENCY"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("BENCH_CONCURRENCY: %v", err)
		}
		conc = n
	}

	p := benchPipelineAt(t, r, fakeURL, conc)
	if !p.met && conc == 0 {
		r.note("**1.** With CONCURRENCY=auto the efficiency missed its goal, so (a), (b) and (c) ran again at "+
			"CONCURRENCY=%d, the idle connections knotclient keeps per host.", benchFixedConcurrency)
		benchPipelineAt(t, r, fakeURL, benchFixedConcurrency)
	}
	r.note("**1.** No rate limit (RATE_LIMIT_RPS=%g, burst %g), knotfake with no latency and no faults, a backlog of %d pending "+
		"rows inserted by one INSERT … SELECT generate_series into a fresh database. (b) and (c) run `worker.Run` in the test "+
		"process, timed from Run until the worker's completed counter (read every 100ms) reaches the backlog; the rate limit "+
		"holds the first call until the worker's second heartbeat (RATE_LIMIT_SYNC_INTERVAL 1s, the default), so each run "+
		"also gives the rate after its first result. (a) calls the knotfake process with the worker's own client at the "+
		"largest in-flight count sampled in (c). All three share the machine's cores with PostgreSQL and knotfake.",
		benchNoLimitRPS, float64(benchNoLimitBurst), benchBacklog)
	if p.eff > 1.05 {
		r.note("**1.** The efficiency is above 1: (a) and (b) do not compete for the cores alone. (b) is bound by the " +
			"time its statements take one after another (see the finish statements in section 2), not by CPU, so the " +
			"whole worker overlaps its HTTP with that wait.")
	}

	c := p.c
	stmts, xacts := c.statementTotal(), c.xacts
	perStmt, perXact := float64(stmts)/float64(c.n), float64(xacts)/float64(c.n)
	stmtsMet := r.judge("2", "statements per completed request, whole worker (c)", fmt.Sprintf("%.4f (%d for %d)", perStmt, stmts, c.n), "< 0.1", perStmt < 0.1)
	xactsMet := r.judge("2", "transactions per completed request, whole worker (c)", fmt.Sprintf("%.4f (%d for %d)", perXact, xacts, c.n), "< 0.1", perXact < 0.1)
	for _, kind := range []string{"claim", "finish"} {
		count, mean := c.tracer.stats(kind)
		if count > 0 {
			r.info("2", kind+" statements in (c): how many, requests per statement, mean time",
				fmt.Sprintf("%d, %.0f, %s", count, float64(c.n)/float64(count), benchMs(mean)))
		}
	}
	bStmts := p.b.statementTotal()
	r.info("2", "statements per completed request, database alone (b)", fmt.Sprintf("%.4f (%d for %d)", float64(bStmts)/float64(p.b.n), bStmts, p.b.n))
	r.note("**2.** Statements are counted by a `pgx.QueryTracer` on the worker's pool (the LISTEN connection copies its "+
		"config, so it is counted too); in (c) they were: %s. Transactions are the change of `xact_commit + xact_rollback` "+
		"in `pg_stat_database` for the test database from before the pool opened to after it closed (the backends flush "+
		"their counts when they exit); the harness sends nothing to that database meanwhile, but autovacuum's transactions "+
		"count. Prepared-statement round trips (pgx prepares each statement once per connection) are not queries and are "+
		"not counted as statements.", c.statementBreakdown())
	if !stmtsMet || !xactsMet {
		r.missed("2. Database round trips per request: the whole worker (c)", "statements by kind: "+c.statementBreakdown()+"\n\n"+pprofTop(c.profile))
	}
}

type benchPipelineRun struct {
	b, c benchDrain
	eff  float64
	met  bool
}

// benchPipelineAt measures (b), (c) and then (a) at the concurrency (c) reached, and reports them.
func benchPipelineAt(t *testing.T, r *benchReport, fakeURL string, conc int) benchPipelineRun {
	name, suffix := "auto", ""
	if conc > 0 {
		name, suffix = strconv.Itoa(conc), "-"+strconv.Itoa(conc)
	}
	resetFake(t, fakeURL)
	b := benchDrainRun(t, r, "1b-database-alone"+suffix, benchBacklog, benchNoopKnot{}, conc)
	c := benchDrainRun(t, r, "1c-whole-worker"+suffix, benchBacklog, benchKnotClient(t, fakeURL), conc)
	httpConc := max(c.peakInflight, 1)
	a, aProfile := benchHTTPAlone(t, r, fakeURL, benchBacklog, httpConc, "1a-http-alone"+suffix)

	bound := 1 / (1/a + 1/b.rate())
	eff := c.rate() / bound
	r.info("1", fmt.Sprintf("(a) HTTP alone: knotclient → knotfake process, %d calls in flight", httpConc), fmt.Sprintf("%.0f req/s", a))
	r.info("1", fmt.Sprintf("(b) database alone: worker with a no-op Knot, CONCURRENCY=%s (peak in flight %d)", name, b.peakInflight),
		fmt.Sprintf("%.0f req/s (%.0f after the first result at %v)", b.rate(), b.steadyRate(), b.firstDone.Round(time.Millisecond)))
	r.info("1", fmt.Sprintf("(c) whole worker: knotclient → knotfake, CONCURRENCY=%s (peak in flight %d)", name, c.peakInflight),
		fmt.Sprintf("%.0f req/s (%.0f after the first result at %v)", c.rate(), c.steadyRate(), c.firstDone.Round(time.Millisecond)))
	r.info("1", "bound of (a) and (b) on the same cores: 1 / (1/a + 1/b)", fmt.Sprintf("%.0f req/s", bound))
	met := r.judge("1", fmt.Sprintf("efficiency at CONCURRENCY=%s: (c) / bound, timed from start", name), fmt.Sprintf("%.2f", eff), "≥ 0.80", eff >= 0.8)
	if !met {
		r.missed("1. Pipeline efficiency at CONCURRENCY="+name+": the whole worker (c), CPU profile of the test process (worker in-process; knotfake and PostgreSQL are other processes)", pprofTop(c.profile))
		r.missed("1. Pipeline efficiency at CONCURRENCY="+name+": database alone (b)", pprofTop(b.profile))
		r.missed("1. Pipeline efficiency at CONCURRENCY="+name+": HTTP alone (a)", pprofTop(aProfile))
	}
	steadyEff := c.steadyRate() / (1 / (1/a + 1/b.steadyRate()))
	r.info("1", fmt.Sprintf("efficiency at CONCURRENCY=%s after the first result: (c) / bound, both steady", name), fmt.Sprintf("%.2f", steadyEff))
	return benchPipelineRun{b: b, c: c, eff: eff, met: eff >= 0.8}
}

// benchNoopKnot answers every call at once: section 1b, the database alone.
type benchNoopKnot struct{}

func (benchNoopKnot) DeleteUser(context.Context, string) (knotclient.Result, error) {
	return knotclient.Result{Outcome: knotclient.Deleted, StatusCode: http.StatusOK}, nil
}

// benchHTTPAlone makes n calls with conc goroutines and returns the calls per second.
func benchHTTPAlone(t *testing.T, r *benchReport, fakeURL string, n, conc int, profile string) (float64, string) {
	client := benchKnotClient(t, fakeURL)
	ctx := t.Context()
	var next, failed atomic.Int64
	stop := r.profile(t, profile)
	start := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if _, err := client.DeleteUser(ctx, fmt.Sprintf("http-alone-%d", i)); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	path := stop()
	if f := failed.Load(); f > 0 {
		t.Errorf("HTTP alone: %d of %d calls failed", f, n)
	}
	return float64(n) / took.Seconds(), path
}

// benchDrain is one in-process run of the worker over a backlog.
type benchDrain struct {
	n            int
	took         time.Duration // from Run to the last completion
	firstDone    time.Duration // from Run to the first sample that saw a completion
	doneAtFirst  int           // completions at that sample
	peakInflight int
	tracer       *benchTracer
	xacts        int64
	profile      string
}

func (d benchDrain) rate() float64 { return float64(d.n) / d.took.Seconds() }

func (d benchDrain) steadyRate() float64 {
	return float64(d.n-d.doneAtFirst) / (d.took - d.firstDone).Seconds()
}

func (d benchDrain) statementTotal() int64 { return d.tracer.total() }

func (d benchDrain) statementBreakdown() string { return d.tracer.String() }

// benchDrainRun runs worker.Run in this process over n pending rows in a fresh database, with no
// rate limit, until every row is finished.
func benchDrainRun(t *testing.T, r *benchReport, name string, n int, knot worker.Knot, concurrency int) benchDrain {
	t.Helper()
	ctx := context.Background()
	dbURL := queuetest.URL(t)
	benchInsertPending(t, dbURL, "drain", 1, n)
	dbName := benchDBName(t, dbURL)
	time.Sleep(500 * time.Millisecond) // the inserting backend has exited and flushed its counts
	xactsBefore := benchXacts(t, dbName)

	tracer := newBenchTracer()
	pool := benchPool(t, dbURL, tracer)
	reg := prometheus.NewRegistry()
	w, err := worker.New(queue.New(pool), knot, worker.Config{
		ID:          "bench-" + name,
		Concurrency: concurrency,
		RateLimit:   benchNoLimitRPS,
		Burst:       benchNoLimitBurst,
		Metrics:     worker.NewMetrics(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopProfile := r.profile(t, name)
	d := benchDrain{n: n, tracer: tracer}
	start := time.Now()
	done := make(chan error, 1)
	go func() { w.Run(runCtx); done <- nil }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Minute)
	for {
		var now time.Time
		select {
		case now = <-tick.C:
		case <-deadline:
			cancel()
			<-done
			t.Fatalf("%s: %d of %d done after 5 minutes", name, int(benchGauge(t, reg, "erasure_requests_completed_total")), n)
		}
		completed := int(benchGauge(t, reg, "erasure_requests_completed_total"))
		d.peakInflight = max(d.peakInflight, int(benchGauge(t, reg, "erasure_inflight_requests")))
		if completed > 0 && d.firstDone == 0 {
			d.firstDone, d.doneAtFirst = now.Sub(start), completed
		}
		if completed >= n {
			d.took = now.Sub(start)
			break
		}
	}
	d.profile = stopProfile()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("%s: Run: %v", name, err)
	}
	pool.Close()
	time.Sleep(time.Second) // the worker's backends exit and flush their counts
	d.xacts = benchXacts(t, dbName) - xactsBefore

	conn := connect(t, dbURL)
	var succeeded int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`).Scan(&succeeded); err != nil {
		t.Fatal(err)
	}
	if succeeded != n {
		t.Errorf("%s: %d of %d rows succeeded", name, succeeded, n)
	}
	t.Logf("%s: %d in %v (%.0f/s; first result after %v, then %.0f/s), peak in flight %d, statements %s, transactions %d",
		name, n, d.took.Round(time.Millisecond), d.rate(), d.firstDone, d.steadyRate(), d.peakInflight, tracer, d.xacts)
	return d
}
