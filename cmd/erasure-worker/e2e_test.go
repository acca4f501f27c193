package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// These tests run the built binaries as real processes (rig_test.go): knotfake, then
// erasure-worker's migrate, enqueue and run, the way an operator would.

// The first promise: a worker against a Knot that fails 5% of calls finishes every
// request, and its table agrees with what Knot saw.
func TestEndToEndThousandsOfRequestsAgainstAFlakyKnot(t *testing.T) {
	t.Parallel()
	const n = 3000
	r := newRig(t, withFake("-error-rate", "0.05", "-missing", "0.1"), withRequests(n))
	w := r.startWorker(t, "worker", "RATE_LIMIT_RPS=2000", "RATE_LIMIT_BURST=50", "CONCURRENCY=16",
		"RETRY_MIN_BACKOFF=100ms", "RETRY_MAX_BACKOFF=1s", "POLL_INTERVAL=200ms")
	c := r.drained(t, 3*time.Minute)

	st := fakeStats(t, r.fakeURL)
	if c["failed"] != 0 || c["succeeded/deleted"]+c["succeeded/not_found"] != n {
		t.Errorf("final states %v: want all %d succeeded", c, n)
	}
	if c["succeeded/deleted"] != st.Deleted || c["succeeded/not_found"] != st.NotFound+st.DuplicateDeletes {
		t.Errorf("table deleted %d / not_found %d; fake deleted %d / not found %d + duplicates %d",
			c["succeeded/deleted"], c["succeeded/not_found"], st.Deleted, st.NotFound, st.DuplicateDeletes)
	}
	if st.ByStatus["500"] == 0 || st.NotFound == 0 {
		t.Errorf("fake answered %d 500s and %d not-founds: the test proves nothing", st.ByStatus["500"], st.NotFound)
	}
	if st.BadCredentials != 0 || st.InvalidRequests != 0 {
		t.Errorf("fake saw %d calls with bad credentials and %d with an empty or invalid id", st.BadCredentials, st.InvalidRequests)
	}

	// The metrics endpoint serves the contract's names; probes answer.
	body := httpGet(t, "http://"+w.addr+"/metrics")
	for _, name := range []string{"erasure_requests_completed_total{outcome=\"deleted\"}", "erasure_knot_requests_total{code=\"500\"}",
		"erasure_knot_request_duration_seconds_bucket", "erasure_queue_depth{status=\"pending\"}", "erasure_oldest_pending_age_seconds",
		"erasure_overdue_requests", "erasure_worker_paused 0", "erasure_rate_limit_wait_seconds_bucket", "erasure_inflight_requests",
		"go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if strings.Contains(body, "person-") {
		t.Error("/metrics holds an external_user_id")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if got := httpGet(t, "http://"+w.addr+path); !strings.HasPrefix(got, "ok") {
			t.Errorf("%s: %q", path, got)
		}
	}
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
	if strings.Contains(w.out.String(), "person-") || strings.Contains(w.out.String(), "e2e-secret") {
		t.Error("the worker's log holds an external_user_id or the secret")
	}
}

// With RATE_LIMIT_RPS=50 no second at Knot holds more than 50 plus the burst; SIGTERM mid-run
// exits 0 within the shutdown timeout and leaves nothing running.
func TestEndToEndRateLimitAndSigterm(t *testing.T) {
	t.Parallel()
	const n, rps, burst = 2000, 50, 5
	r := newRig(t, withFake("-latency", "20ms"), withRequests(n))
	w := r.startWorker(t, "worker", fmt.Sprintf("RATE_LIMIT_RPS=%d", rps), fmt.Sprintf("RATE_LIMIT_BURST=%d", burst),
		"CONCURRENCY=8", "SHUTDOWN_TIMEOUT=10s")
	// SIGTERM mid-run: once a hundred calls (two seconds at the limit) have reached Knot,
	// however long a busy machine takes to get there.
	queuetest.WaitFor(t, time.Minute, "a hundred calls at Knot", func() bool { return fakeStats(t, r.fakeURL).Calls >= 100 })

	code, took := w.stop(t, 20*time.Second)
	if code != 0 || took > 10*time.Second {
		t.Errorf("SIGTERM: exit %d after %v, want 0 within the 10s shutdown timeout", code, took)
	}
	c := r.counts(t)
	if c["running"] != 0 {
		t.Errorf("%d requests left running after SIGTERM", c["running"])
	}
	st := fakeStats(t, r.fakeURL)
	if st.BusiestSecond > rps+burst {
		t.Errorf("busiest second at Knot held %d calls; the limit is %d plus a burst of %d", st.BusiestSecond, rps, burst)
	}
	done := c["succeeded/deleted"] + c["succeeded/not_found"]
	if done != st.Deleted+st.NotFound || c["pending"] != n-done {
		t.Errorf("after SIGTERM: table %v; fake deleted %d, not found %d", c, st.Deleted, st.NotFound)
	}
}
