package worker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A 429 whose Retry-After outlasts the lease: every claim held meanwhile goes back unspent
// instead of sleeping out the hold until lease recovery takes it and spends its attempt. With
// MAX_ATTEMPTS=1 a spent attempt would fail the request as exhausted without it ever being
// sent.
func TestRetryAfterLongerThanTheLeaseSpendsNoAttempt(t *testing.T) {
	b := setup(t, knotfake.Options{Faults: knotfake.Faults{RateLimitRate: 1, RetryAfter: knotfake.Duration(5 * time.Second)}})
	b.cfg.LeaseDuration = 3 * time.Second
	b.cfg.CallTimeout = 500 * time.Millisecond
	b.cfg.QuickRetries = 1
	b.cfg.MaxAttempts = 1
	b.cfg.RateLimit, b.cfg.Burst = 200, 20
	b.insert(t, users(60)...)
	b.start(t)
	queuetest.WaitFor(t, 10*time.Second, "a 429", func() bool { return b.fake.Stats().Faulted["rate_limit"] > 0 })
	time.Sleep(time.Second)
	b.fake.SetFaults(knotfake.Faults{})
	queuetest.WaitFor(t, 40*time.Second, "the queue to drain", b.drained(t))

	if n := b.count(t, `status = 'succeeded'`); n != 60 {
		t.Errorf("%d of 60 succeeded; failed: %d, lease_expired: %d", n,
			b.count(t, `status = 'failed'`), b.count(t, `last_error_code = 'lease_expired'`))
	}
	if n := b.count(t, `last_error_code IN ('lease_expired', 'worker_gone')`); n != 0 {
		t.Errorf("%d requests were taken back from a worker that was only waiting", n)
	}
}

// A result the database will never accept fails alone, with a readable reason, and the
// results batched with it, and after it, are recorded.
func TestAResultTheDatabaseRefusesFailsAlone(t *testing.T) {
	b := setup(t, knotfake.Options{})
	if _, err := b.pool.Exec(b.ctx, `ALTER TABLE erasure_requests ADD CONSTRAINT poison CHECK (request_ref <> 'ref-7' OR status <> 'succeeded')`); err != nil {
		t.Fatal(err)
	}
	b.insert(t, users(40)...)
	b.start(t)
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))

	if n := b.count(t, `status = 'succeeded'`); n != 39 {
		t.Errorf("%d of the 39 recordable requests succeeded", n)
	}
	var status, code, reason string
	if err := b.pool.QueryRow(b.ctx, `SELECT status, last_error_code, last_error FROM erasure_requests WHERE request_ref = 'ref-7'`).
		Scan(&status, &code, &reason); err != nil {
		t.Fatal(err)
	}
	if status != "failed" || code != "unrecordable_result" || !strings.Contains(reason, "could not record") || !strings.Contains(reason, "poison") {
		t.Errorf("the refused request: %s %s %q; want failed with the reason", status, code, reason)
	}
	// The worker goes on.
	if _, err := b.pool.Exec(b.ctx, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('after', 'user-after')`); err != nil {
		t.Fatal(err)
	}
	queuetest.WaitFor(t, 10*time.Second, "a request after the refused one", func() bool {
		return b.count(t, `request_ref = 'after' AND status = 'succeeded'`) == 1
	})
}

// A 200 whose body is not Knot's answer is retried, and counted by what it was: the dashboard's
// code="200" counts deletions only.
func TestAnUnreadable200IsNotCountedAsOne(t *testing.T) {
	b := setup(t, knotfake.Options{Faults: knotfake.Faults{EmptyOKRate: 0.3, TruncatedRate: 0.2}})
	b.cfg.MaxAttempts = 50
	b.insert(t, users(50)...)
	b.start(t)
	queuetest.WaitFor(t, 30*time.Second, "the queue to drain", b.drained(t))

	st := b.fake.Stats()
	if st.Faulted["empty_ok"]+st.Faulted["truncated"] == 0 {
		t.Fatal("the fake answered no unreadable 200: the test proves nothing")
	}
	if got := testutil.ToFloat64(b.metrics.KnotRequests.WithLabelValues("200")); got != float64(st.Deleted) {
		t.Errorf(`erasure_knot_requests_total{code="200"} = %v, but Knot deleted %d`, got, st.Deleted)
	}
	if got := testutil.ToFloat64(b.metrics.KnotRequests.WithLabelValues("invalid_response")); got != float64(st.Faulted["empty_ok"]+st.Faulted["truncated"]) {
		t.Errorf(`erasure_knot_requests_total{code="invalid_response"} = %v, want %d`, got, st.Faulted["empty_ok"]+st.Faulted["truncated"])
	}
}
