package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

const (
	clientID = "test-client"
	secret   = "test-secret"
)

type testBundle struct {
	ctx     context.Context
	pool    *pgxpool.Pool
	q       *queue.Queue
	fake    *knotfake.Server
	knot    *knotclient.Client
	url     string
	metrics *worker.Metrics
	cfg     worker.Config
	// forbidden ids are answered 403 in front of the fake: knotfake speaks only the spec's
	// answers, and Knot documents 403 too.
	forbidden sync.Map
}

// setup returns a worker config with short intervals, a fresh database and a fake Knot.
func setup(t *testing.T, opts knotfake.Options) *testBundle {
	t.Helper()
	t.Parallel()
	opts.ClientID, opts.Secret = clientID, secret
	b := &testBundle{ctx: context.Background(), fake: knotfake.New(opts)}
	b.pool = queuetest.Pool(t)
	b.q = queue.New(b.pool)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct {
			ID string `json:"external_user_id"`
		}
		_ = json.Unmarshal(body, &req)
		if _, ok := b.forbidden.Load(req.ID); ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `{"error_type":"INVALID_INPUT","error_code":"NO_ACCESS","error_message":"No access."}`)
			return
		}
		b.fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	var err error
	b.knot, err = knotclient.New(knotclient.Config{BaseURL: srv.URL, ClientID: clientID, Secret: secret, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b.metrics = worker.NewMetrics(prometheus.NewRegistry())
	b.cfg = worker.Config{
		ID:                 "test-worker",
		Concurrency:        4,
		RateLimit:          1000,
		Burst:              50,
		LeaseDuration:      30 * time.Second,
		MaxAttempts:        5,
		CallTimeout:        2 * time.Second,
		QuickRetries:       2,
		QuickBackoff:       time.Millisecond,
		RetryMinBackoff:    10 * time.Millisecond,
		RetryMaxBackoff:    50 * time.Millisecond,
		PollInterval:       20 * time.Millisecond,
		RateSyncInterval:   200 * time.Millisecond,
		StatsInterval:      50 * time.Millisecond,
		PauseProbeInterval: 50 * time.Millisecond,
		ShutdownTimeout:    5 * time.Second,
		Metrics:            b.metrics,
		Logger:             testLogger(t),
	}
	return b
}

// start runs a worker until the test ends or stop is called; stop returns Run's error.
func (b *testBundle) start(t *testing.T) (stop func() error) {
	t.Helper()
	w, err := worker.New(b.q, b.knot, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { w.Run(ctx); done <- nil }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

func (b *testBundle) insert(t *testing.T, ids ...string) {
	t.Helper()
	for i, id := range ids {
		if _, err := b.pool.Exec(b.ctx, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, $2)`,
			fmt.Sprintf("ref-%d", i), id); err != nil {
			t.Fatal(err)
		}
	}
}

func users(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("user-%d", i)
	}
	return ids
}

func (b *testBundle) count(t *testing.T, where string) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_requests WHERE `+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *testBundle) drained(t *testing.T) func() bool {
	return func() bool { return b.count(t, `status IN ('pending', 'running')`) == 0 }
}

func TestDeletedAndNotFoundBothSucceed(t *testing.T) {
	b := setup(t, knotfake.Options{Exists: knotfake.MissingShare(0.3)})
	b.insert(t, users(200)...)
	b.start(t)
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))

	st := b.fake.Stats()
	if got := b.count(t, `status = 'succeeded' AND outcome = 'deleted'`); int64(got) != st.Deleted {
		t.Errorf("deleted rows %d, fake deleted %d", got, st.Deleted)
	}
	if got := b.count(t, `status = 'succeeded' AND outcome = 'not_found'`); int64(got) != st.NotFound || got == 0 {
		t.Errorf("not_found rows %d, fake answered USER_NOT_FOUND %d", got, st.NotFound)
	}
	if st.Calls != 200 || st.DuplicateDeletes != 0 {
		t.Errorf("fake saw %d calls and %d duplicate deletes, want 200 and 0", st.Calls, st.DuplicateDeletes)
	}
	var evidence int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_attempts WHERE http_status IN (200, 400)`).Scan(&evidence); err != nil || evidence != 200 {
		t.Errorf("evidence rows %d (%v), want 200", evidence, err)
	}
	if got := testutil.ToFloat64(b.metrics.Completed.WithLabelValues("deleted")); got != float64(st.Deleted) {
		t.Errorf("erasure_requests_completed_total{outcome=deleted} = %v, want %d", got, st.Deleted)
	}
}

func TestServerErrorsAreRetriedUntilTheyPass(t *testing.T) {
	b := setup(t, knotfake.Options{Faults: knotfake.Faults{ErrorRate: 0.4}})
	b.cfg.MaxAttempts = 50
	b.insert(t, users(100)...)
	b.start(t)
	queuetest.WaitFor(t, 30*time.Second, "the queue to drain", b.drained(t))

	if n := b.count(t, `status = 'succeeded'`); n != 100 {
		t.Fatalf("%d of 100 succeeded", n)
	}
	st := b.fake.Stats()
	if st.ByStatus["500"] == 0 {
		t.Fatal("the fake answered no 500s: the test proves nothing")
	}
	if st.Deleted != 100 {
		t.Fatalf("fake deleted %d users, want 100", st.Deleted)
	}
	if n := b.count(t, `attempts > 1`); n == 0 {
		t.Error("no request needed a second claim: quick retries alone cannot explain 40% errors on 100 requests")
	}
}

func TestRetryableErrorsExhaustAfterMaxAttempts(t *testing.T) {
	b := setup(t, knotfake.Options{Faults: knotfake.Faults{ErrorRate: 1}})
	b.cfg.MaxAttempts = 3
	b.insert(t, users(5)...)
	b.start(t)
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))

	if n := b.count(t, `status = 'failed' AND outcome = 'exhausted' AND attempts = 3 AND last_error_code = 'http_500'`); n != 5 {
		t.Fatalf("%d of 5 failed as exhausted after 3 attempts", n)
	}
	// Each claim made QuickRetries calls.
	if calls := b.fake.Stats().Calls; calls != 5*3*2 {
		t.Fatalf("fake saw %d calls, want %d", calls, 5*3*2)
	}
}

func TestPermanentRefusalFailsWithoutRetry(t *testing.T) {
	b := setup(t, knotfake.Options{})
	b.forbidden.Store("user-1", true)
	b.insert(t, users(3)...)
	b.start(t)
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))

	var status, outcome, code string
	var attempts int
	if err := b.pool.QueryRow(b.ctx, `SELECT status, outcome, last_error_code, attempts FROM erasure_requests WHERE external_user_id = 'user-1'`).
		Scan(&status, &outcome, &code, &attempts); err != nil {
		t.Fatal(err)
	}
	if status != "failed" || outcome != "rejected" || code != "NO_ACCESS" || attempts != 1 {
		t.Fatalf("403 row: %s/%s %s after %d attempts, want failed/rejected NO_ACCESS after 1", status, outcome, code, attempts)
	}
	if n := b.count(t, `status = 'succeeded'`); n != 2 {
		t.Fatalf("%d neighbours succeeded, want 2", n)
	}
}

func TestUnsendableRowFailsAloneAndIsNeverSent(t *testing.T) {
	b := setup(t, knotfake.Options{})
	// A control character gets past the table's checks but must never reach Knot.
	b.insert(t, "user-0", "bad\x01id", "user-2")
	b.start(t)
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))

	var outcome, lastErr string
	if err := b.pool.QueryRow(b.ctx, `SELECT outcome, last_error FROM erasure_requests WHERE request_ref = 'ref-1'`).Scan(&outcome, &lastErr); err != nil {
		t.Fatal(err)
	}
	if outcome != "invalid" || !strings.Contains(lastErr, "external_user_id") {
		t.Fatalf("bad row: outcome %q, last_error %q", outcome, lastErr)
	}
	if st := b.fake.Stats(); st.Calls != 2 || st.Deleted != 2 {
		t.Fatalf("fake saw %d calls, %d deletes; want 2 and 2 (the bad id never sent)", st.Calls, st.Deleted)
	}
}

func TestRateLimitedRequestsWaitRetryAfterWithoutSpendingAttempts(t *testing.T) {
	b := setup(t, knotfake.Options{Faults: knotfake.Faults{RateLimitRate: 1, RetryAfter: knotfake.Duration(time.Second)}})
	b.insert(t, users(10)...)
	b.start(t)
	queuetest.WaitFor(t, 10*time.Second, "a 429", func() bool { return b.fake.Stats().ByStatus["429"] > 0 })
	time.Sleep(300 * time.Millisecond)
	b.fake.SetFaults(knotfake.Faults{})
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))

	if n := b.count(t, `status = 'succeeded'`); n != 10 {
		t.Fatalf("%d of 10 succeeded", n)
	}
	// Only the claim that succeeded counts: the 429s spent nothing.
	if n := b.count(t, `attempts <> 1`); n != 0 {
		t.Fatalf("%d requests spent attempts on 429s", n)
	}
	if st := b.fake.Stats(); st.EarlyRetries != 0 {
		t.Fatalf("%d calls came back before their Retry-After", st.EarlyRetries)
	}
}

func TestRejectedCredentialsPauseThenResumeWithoutLosingAttempts(t *testing.T) {
	b := setup(t, knotfake.Options{Faults: knotfake.Faults{RejectCredentials: true}})
	b.cfg.MaxAttempts = 1
	b.insert(t, users(20)...)
	b.start(t)
	queuetest.WaitFor(t, 10*time.Second, "the worker to pause", func() bool { return testutil.ToFloat64(b.metrics.Paused) == 1 })
	// Its heartbeat tells the others (the console, `status`) that it is paused.
	queuetest.WaitFor(t, 10*time.Second, "the replica's row to say it is paused", b.replicaPaused(t, true))
	// While paused only the occasional probe goes out, and nothing fails or spends an attempt.
	time.Sleep(300 * time.Millisecond)
	// (A probe in flight holds one row running, its attempt counted until it is released.)
	if n := b.count(t, `status IN ('failed', 'succeeded') OR (status = 'pending' AND attempts > 0)`); n != 0 {
		t.Fatalf("%d requests failed, succeeded or spent an attempt while the credentials were rejected", n)
	}
	probes := b.fake.Stats().Calls
	if probes > 20 {
		t.Fatalf("%d calls in ~300ms of pause: the worker is not paused", probes)
	}

	b.fake.SetFaults(knotfake.Faults{})
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))
	if n := b.count(t, `status = 'succeeded'`); n != 20 {
		t.Fatalf("%d of 20 succeeded after the credentials were accepted again", n)
	}
	if got := testutil.ToFloat64(b.metrics.Paused); got != 0 {
		t.Fatalf("erasure_worker_paused = %v after resuming", got)
	}
	queuetest.WaitFor(t, 10*time.Second, "the replica's row to say it resumed", b.replicaPaused(t, false))
}

// replicaPaused tells whether the worker's row in erasure_workers says paused is want.
func (b *testBundle) replicaPaused(t *testing.T, want bool) func() bool {
	return func() bool {
		rl, err := b.q.ReadRateLimit(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rl.Replicas {
			if r.ID == b.cfg.ID {
				return r.PausedKnown && r.Paused == want
			}
		}
		return false
	}
}

func TestShutdownFinishesInFlightAndReleasesTheRest(t *testing.T) {
	b := setup(t, knotfake.Options{Faults: knotfake.Faults{Latency: knotfake.Duration(300 * time.Millisecond)}})
	b.cfg.Concurrency = 6
	b.cfg.RateLimit, b.cfg.Burst = 4, 2 // most claims wait on the limiter: they were never sent
	b.insert(t, users(30)...)
	stop := b.start(t)
	queuetest.WaitFor(t, 10*time.Second, "calls in flight", func() bool { return b.fake.Stats().Calls >= 2 })

	began := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v after shutdown", err)
	}
	if took := time.Since(began); took > b.cfg.ShutdownTimeout {
		t.Fatalf("shutdown took %v, longer than the %v timeout", took, b.cfg.ShutdownTimeout)
	}
	if n := b.count(t, `status = 'running'`); n != 0 {
		t.Fatalf("%d rows left running", n)
	}
	st := b.fake.Stats()
	if got := b.count(t, `status = 'succeeded'`); int64(got) != st.Deleted {
		t.Fatalf("%d succeeded rows, but the fake deleted %d: an in-flight call went unrecorded", got, st.Deleted)
	}
	// Every claim that never reached the fake went back without spending an attempt.
	if n := b.count(t, `status = 'pending' AND attempts <> 0`); n != 0 {
		t.Fatalf("%d unsent requests spent an attempt", n)
	}
	if n := b.count(t, `status = 'pending'`); n == 0 {
		t.Fatal("nothing was left pending: the test did not stop mid-run")
	}
}

func TestConfigValidationNamesTheSetting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  worker.Config
		want string
	}{
		{worker.Config{ID: "w", Concurrency: -1}, "CONCURRENCY"},
		{worker.Config{ID: "w", RateLimit: -5}, "RATE_LIMIT_RPS"},
		{worker.Config{ID: "w", LeaseDuration: time.Second}, "LEASE_DURATION"},
		{worker.Config{ID: "w", MaxAttempts: -1}, "MAX_ATTEMPTS"},
	} {
		_, err := worker.New(nil, nil, tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %+v: error %v, want one naming %s", tc.cfg, err, tc.want)
		}
	}
}
