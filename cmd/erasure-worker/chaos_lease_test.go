//go:build chaos

package main

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A Retry-After longer than the lease: Knot answers every call 429 with Retry-After 12s for a
// 6s storm, against workers whose lease is 5s. A claim must not sit out the hold under a lease
// that expires meanwhile (it goes back unspent, or its lease is renewed), so no request is
// recovered as lease_expired, none spends its few attempts on the hold and fails exhausted,
// and every one succeeds once Knot lets it, none sooner than told.
func TestChaosRetryAfterLongerThanLease(t *testing.T) {
	t.Parallel()
	const (
		n          = 300
		storm      = 6 * time.Second
		retryAfter = 12 * time.Second
	)
	r := newRig(t, withFake("-missing", "0.1"))
	r.enqueue(t, "ra", n)
	setFaults(t, r.fakeURL, fmt.Sprintf(`{"rate_limit_rate":1,"retry_after":%q}`, retryAfter))
	// LEASE_DURATION=5s is accepted with a 1s call timeout and one quick retry; two attempts,
	// so that a hold that spends attempts shows as requests failed exhausted.
	settings := []string{"LEASE_DURATION=5s", "KNOT_TIMEOUT=1s", "QUICK_RETRIES=1", "MAX_ATTEMPTS=2",
		"RATE_LIMIT_RPS=200", "RATE_LIMIT_BURST=20", "CONCURRENCY=16", "POLL_INTERVAL=200ms"}
	a := r.startWorker(t, "a", settings...)
	b := r.startWorker(t, "b", settings...)
	stormStarted := time.Now()
	queuetest.WaitFor(t, time.Minute, "Knot's first 429", func() bool { return fakeStats(t, r.fakeURL).Faulted["rate_limit"] > 0 })
	time.Sleep(time.Until(stormStarted.Add(storm)))
	setFaults(t, r.fakeURL, `{}`)

	// The last 429 holds every call for 12s; then 300 requests at 200/s.
	c := r.drained(t, 40*time.Second)
	st := fakeStats(t, r.fakeURL)
	t.Logf("Retry-After %v over a %v storm, lease 5s: %d calls answered 429; final %v; per second %v",
		retryAfter, storm, st.Faulted["rate_limit"], c, st.PerSecond)
	chaosAllSucceeded(t, c, n)
	var expired, exhausted int
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		switch {
		case row.LastErrorCode == "lease_expired" || row.LastErrorCode == "worker_gone":
			expired++
			bad.add("request %s was taken back (%s: %s/%s, %d attempts) while it waited out Retry-After",
				row.RequestRef, row.LastErrorCode, row.Status, row.Outcome, row.Attempts)
		case row.Status == "failed" && row.Outcome == "exhausted":
			exhausted++
			bad.add("request %s failed exhausted after %d attempts: %s", row.RequestRef, row.Attempts, row.LastError)
		}
	}
	if expired+exhausted > 0 {
		t.Errorf("%d requests were taken back from a waiting worker and %d failed exhausted, of %d", expired, exhausted, n)
	}
	bad.report(t)
	if st.Faulted["rate_limit"] == 0 {
		t.Fatal("Knot answered no 429: the test proves nothing")
	}
	if st.EarlyRetries != 0 {
		t.Errorf("%d calls came back for a request before its Retry-After", st.EarlyRetries)
	}
	for _, w := range []*workerProc{a, b} {
		w.noPanic(t)
		if code := w.probe("/healthz"); code != http.StatusOK {
			t.Errorf("worker %s: /healthz answers %d", w.id, code)
		}
	}
}
