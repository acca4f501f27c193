//go:build chaos

package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A Knot outage shorter than the retry horizon fails nothing: every call answers 500 for a
// while, then Knot recovers and every request succeeds. The retries wait jittered backoffs, so
// that they do not come back as one burst the moment Knot recovers.
func TestChaosKnotOutage(t *testing.T) {
	t.Parallel()
	const (
		n          = chaosOutageRequests
		minBackoff = chaosOutageMinBackoff
		maxBackoff = chaosOutageMaxBackoff
	)
	r, w, outageUntil := startChaosOutage(t)

	// Shortly before Knot recovers nothing has failed, and each waiting request's wait is
	// jittered: at least half of its nominal backoff (RETRY_MIN_BACKOFF doubling per attempt up
	// to RETRY_MAX_BACKOFF), measured from the end of its last call to its run_after.
	time.Sleep(time.Until(outageUntil.Add(-time.Second)))
	if c := r.counts(t); chaosFailed(c) != 0 {
		t.Fatalf("during the outage: %v; want no request failed", c)
	}
	during := fakeStats(t, r.fakeURL)
	if during.Faulted["outage"] < 2*n {
		t.Fatalf("Knot answered only %d calls 500 during the outage: the test proves nothing", during.Faulted["outage"])
	}
	// Bounds a loaded machine cannot break: load only lengthens a wait (the row is written after
	// the call ends), so none is under half its nominal backoff, and without jitter none could
	// be under the nominal itself. How far under is logged, not judged.
	ratios := chaosBackoffRatios(t, r.db(t), minBackoff, maxBackoff)
	var short, underNominal int
	for _, x := range ratios {
		if x < 0.45 {
			t.Errorf("a request waits %.2f of its nominal backoff; the jitter keeps it at half or more", x)
		}
		if x < 0.9 {
			short++
		}
		if x < 1 {
			underNominal++
		}
	}
	if len(ratios) < n/2 || underNominal == 0 {
		t.Errorf("of %d requests waiting on a backoff, none waits less than the nominal: their backoff is not jittered", len(ratios))
	}

	// Forget the outage's calls: what the fake counts from then on is the recovery (and the
	// outage's last 100ms, so that no delete after it goes uncounted).
	time.Sleep(time.Until(outageUntil.Add(-100 * time.Millisecond)))
	resetFake(t, r.fakeURL)
	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	st := fakeStats(t, r.fakeURL)
	t.Logf("outage: %d calls answered 500; %d of %d waiting requests wait less than 0.9 of their nominal backoff; after it, per second: %v",
		during.Faulted["outage"], short, len(ratios), st.PerSecond)
	// How spread out the retries come back (the busiest second against the requests waiting)
	// is a figure of `make bench`, section 8: a stalled machine bunches them whatever the jitter.
	var ids []string
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		ids = append(ids, row.ExternalUserID)
		if row.Attempts < 2 {
			bad.add("request %s succeeded after %d attempts; every request should have met the outage", row.RequestRef, row.Attempts)
		}
	}
	bad.report(t)
	if want := chaosExistingUsers(ids, 0.1); st.Deleted != want || c["succeeded/deleted"] != want {
		t.Errorf("fake deleted %d users and the table says %d; %d of the %d exist", st.Deleted, c["succeeded/deleted"], want, n)
	}
	w.noPanic(t)
}

// chaosBackoffRatios returns, for each request waiting after a retryable error, how long it
// waits (from the end of its attempt's last call to its run_after) as a share of its nominal
// backoff.
func chaosBackoffRatios(t *testing.T, conn *pgx.Conn, minBackoff, maxBackoff time.Duration) []float64 {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
SELECT r.attempts,
       extract(epoch FROM r.run_after - max(a.started_at + a.duration_ms * interval '1 millisecond'))
FROM erasure_requests r JOIN erasure_attempts a ON a.request_id = r.id AND a.attempt = r.attempts
WHERE r.status = 'pending' AND r.last_error_code = 'http_500'
GROUP BY r.id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []float64
	for rows.Next() {
		var attempts int
		var wait float64
		if err := rows.Scan(&attempts, &wait); err != nil {
			t.Fatal(err)
		}
		nominal := min(minBackoff<<(attempts-1), maxBackoff)
		out = append(out, wait/nominal.Seconds())
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// 429 with Retry-After: the worker holds every call until Retry-After has passed, so a storm
// of 429s meets a few bursts rather than the configured rate; it never comes back for a request
// sooner than told, spends no attempt on a 429, and finishes once Knot lets it.
func TestChaosRateLimited(t *testing.T) {
	t.Parallel()
	const (
		n     = 300
		rps   = 200
		storm = 6 * time.Second
	)
	r := newRig(t, withFake("-missing", "0.1"))
	r.enqueue(t, "rl", n)
	setFaults(t, r.fakeURL, `{"rate_limit_rate":1,"retry_after":"2s"}`)
	w := r.startWorker(t, "worker", "RATE_LIMIT_RPS="+strconv.Itoa(rps), "RATE_LIMIT_BURST=20", "CONCURRENCY=16",
		"KNOT_TIMEOUT=2s", "LEASE_DURATION=10s", "POLL_INTERVAL=200ms")
	stormStarted := time.Now()
	queuetest.WaitFor(t, time.Minute, "Knot's first 429", func() bool { return fakeStats(t, r.fakeURL).Faulted["rate_limit"] > 0 })
	time.Sleep(time.Until(stormStarted.Add(storm)))
	during := fakeStats(t, r.fakeURL)
	setFaults(t, r.fakeURL, `{}`)

	// At the configured rate the storm would have met rps calls a second.
	if limit := int64(rps * storm.Seconds() / 4); during.Faulted["rate_limit"] > limit {
		t.Errorf("%d calls answered 429 in a %v storm, at most %d expected from a worker that waits out Retry-After (per second %v)",
			during.Faulted["rate_limit"], storm, limit, during.PerSecond)
	}
	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	st := fakeStats(t, r.fakeURL)
	t.Logf("429 storm: %d calls answered 429 over %v (per second %v); whole run per second %v",
		during.Faulted["rate_limit"], storm, during.PerSecond, st.PerSecond)
	if st.EarlyRetries != 0 {
		t.Errorf("%d calls came back for a request before its Retry-After", st.EarlyRetries)
	}
	var ids []string
	var limited int
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		ids = append(ids, row.ExternalUserID)
		if row.Attempts != 1 {
			bad.add("request %s spent %d attempts; a 429 must not spend one", row.RequestRef, row.Attempts)
		}
		if row.Calls > row.Successes {
			limited++
		}
	}
	bad.report(t)
	if limited == 0 {
		t.Error("no request records a 429 in erasure_attempts")
	}
	if want := chaosExistingUsers(ids, 0.1); st.Deleted != want {
		t.Errorf("fake deleted %d users; %d of the %d exist", st.Deleted, want, n)
	}
	if got := w.metric(t, `erasure_knot_requests_total{code="429"}`); got != float64(st.Faulted["rate_limit"]) {
		t.Errorf("erasure_knot_requests_total{code=\"429\"} is %v; Knot answered %d 429s", got, st.Faulted["rate_limit"])
	}
	w.noPanic(t)
}

// Rejected credentials (401): the worker pauses instead of failing anything. No request fails
// or spends an attempt, erasure_worker_paused is 1, one log line says why, only a probe a
// PAUSE_PROBE_INTERVAL goes out, and the worker resumes by itself once Knot accepts the
// credentials again.
func TestChaosCredentialsRejected(t *testing.T) {
	t.Parallel()
	const n = 200
	r := newRig(t, withFake("-missing", "0.1"))
	r.enqueue(t, "cr", n)
	setFaults(t, r.fakeURL, `{"reject_credentials":true}`)
	w := r.startWorker(t, "worker", "PAUSE_PROBE_INTERVAL=500ms", "CONCURRENCY=8", "RATE_LIMIT_RPS=200",
		"KNOT_TIMEOUT=2s", "LEASE_DURATION=10s", "POLL_INTERVAL=200ms")
	queuetest.WaitFor(t, time.Minute, "six rejected calls", func() bool { return fakeStats(t, r.fakeURL).Faulted["reject_credentials"] >= 6 })
	time.Sleep(time.Second)
	st := fakeStats(t, r.fakeURL)
	rejecting := time.Since(st.FirstCall)

	// Nothing failed, no attempt was spent, and beyond the first claims (sent before the first
	// 401 came back) one call went out per probe interval.
	// The probe holds one request while its call is out (running, its claim's attempt not yet
	// given back); whether each attempt came back is checked once the queue has drained.
	conn := r.db(t)
	if got := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status IN ('succeeded', 'failed') OR (status = 'pending' AND attempts <> 0)`); got != 0 {
		t.Errorf("while Knot rejects the credentials, %d requests are finished or spent an attempt: %v", got, r.counts(t))
	}
	if got := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'running'`); got > 1 {
		t.Errorf("while Knot rejects the credentials, %d requests are claimed; only the probe's may be: %v", got, r.counts(t))
	}
	if most := int64(8 + rejecting/(500*time.Millisecond) + 2); st.Calls > most {
		t.Errorf("%d calls in %v of rejected credentials; probing every 500ms allows about %d", st.Calls, rejecting.Round(time.Millisecond), most)
	}
	if w.metric(t, "erasure_worker_paused") != 1 {
		t.Error("erasure_worker_paused is not 1 while Knot rejects the credentials")
	}
	if code := w.probe("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz answers %d while paused; the pod is healthy", code)
	}
	if got := w.logLines("Knot rejected the credentials (401)"); len(got) != 1 {
		t.Errorf("%d log lines say the credentials were rejected; want exactly one", len(got))
	} else if got[0]["level"] != "ERROR" {
		t.Errorf("the credentials line is logged at %v, want ERROR", got[0]["level"])
	}

	// Said once: no other warning or error about the credentials, however many probes failed.
	var credentialLines int
	for _, l := range w.logLines("") {
		msg, _ := l["msg"].(string)
		if (l["level"] == "ERROR" || l["level"] == "WARN") && (strings.Contains(msg, "401") || strings.Contains(msg, "credential")) {
			credentialLines++
		}
	}
	if credentialLines != 1 {
		t.Errorf("%d warnings and errors about the credentials while paused; want the one that says why", credentialLines)
	}

	setFaults(t, r.fakeURL, `{}`)
	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	if w.metric(t, "erasure_worker_paused") != 0 {
		t.Error("erasure_worker_paused is still 1 after the worker resumed")
	}
	if got := w.logLines("resuming"); len(got) != 1 {
		t.Errorf("%d log lines say the worker resumed; want one", len(got))
	}
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		if row.Attempts != 1 {
			bad.add("request %s spent %d attempts; a 401 must not spend one", row.RequestRef, row.Attempts)
		}
	}
	bad.report(t)
	if got := w.logLines("Knot rejected the credentials (401)"); len(got) != 1 {
		t.Errorf("%d log lines say the credentials were rejected; want exactly one", len(got))
	}
	w.noPanic(t)
}

// A rotated KNOT_SECRET_FILE is picked up without a restart: the worker starts with a wrong
// secret in the file, pauses on Knot's 401, and resumes once the file holds the right one.
func TestChaosSecretFileRotation(t *testing.T) {
	t.Parallel()
	const n = 100
	r := newRig(t, withFake("-missing", "0.1"))
	r.enqueue(t, "sf", n)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	writeSecret := func(s string) {
		// Atomically, as a Kubernetes secret volume swaps its files.
		tmp := filepath.Join(dir, ".secret.tmp")
		if err := os.WriteFile(tmp, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, secretFile); err != nil {
			t.Fatal(err)
		}
	}
	const wrong = "wrong-secret-value"
	writeSecret(wrong)
	w := r.startWorker(t, "worker", "KNOT_SECRET_FILE="+secretFile, "PAUSE_PROBE_INTERVAL=500ms", "CONCURRENCY=8",
		"RATE_LIMIT_RPS=200", "KNOT_TIMEOUT=2s", "LEASE_DURATION=10s", "POLL_INTERVAL=200ms")
	queuetest.WaitFor(t, time.Minute, "erasure_worker_paused 1", func() bool { return w.metric(t, "erasure_worker_paused") == 1 })
	rejected := fakeStats(t, r.fakeURL).BadCredentials
	queuetest.WaitFor(t, time.Minute, "three probes", func() bool { return fakeStats(t, r.fakeURL).BadCredentials >= rejected+3 })
	// A paused worker claims one request per probe, and gives its attempt back on the 401: at
	// most that one is running, and none is finished or spent an attempt.
	conn := r.db(t)
	if got := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status IN ('succeeded', 'failed') OR (status = 'pending' AND attempts <> 0)`); got != 0 {
		t.Errorf("while paused, %d requests are finished or spent an attempt: %v", got, r.counts(t))
	}
	if got := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'running'`); got > 1 {
		t.Errorf("while paused, %d requests are claimed; only the probe's may be: %v", got, r.counts(t))
	}

	writeSecret(knotSecret)
	queuetest.WaitFor(t, 30*time.Second, "the worker to resume once the file holds the right secret", func() bool {
		return w.metric(t, "erasure_worker_paused") == 0
	})
	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		if row.Attempts != 1 {
			bad.add("request %s spent %d attempts; a 401 must not spend one", row.RequestRef, row.Attempts)
		}
	}
	bad.report(t)
	if w.metric(t, "erasure_worker_paused") != 0 {
		t.Error("erasure_worker_paused is still 1 after the secret was rotated")
	}
	if out := w.out.String(); strings.Contains(out, wrong) || strings.Contains(out, knotSecret) {
		t.Error("the worker's log holds a secret")
	}
	if got := w.logLines("Knot rejected the credentials (401)"); len(got) != 1 {
		t.Errorf("%d log lines say the credentials were rejected; want exactly one", len(got))
	}
	w.noPanic(t)
}

// Knot hangs or talks garbage: calls that never answer, a proxy's HTML 502s, truncated JSON and
// 200s with an empty body. Every call ends within the client timeout and is recorded with its
// class; nothing panics; the worker keeps going and every request ends succeeded.
func TestChaosKnotGarbage(t *testing.T) {
	t.Parallel()
	const (
		n           = 400
		callTimeout = time.Second
	)
	r := newRig(t, withFake("-missing", "0.1", "-hang-rate", "0.05", "-bad-gateway-rate", "0.05",
		"-truncated-rate", "0.05", "-empty-ok-rate", "0.05"))
	r.enqueue(t, "gb", n)
	w := r.startWorker(t, "worker", "KNOT_TIMEOUT="+callTimeout.String(), "QUICK_RETRIES=2", "LEASE_DURATION=5s",
		"RATE_LIMIT_RPS=300", "CONCURRENCY=32", "RETRY_MIN_BACKOFF=200ms", "RETRY_MAX_BACKOFF=1s",
		"MAX_ATTEMPTS=20", "POLL_INTERVAL=200ms")
	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	st := fakeStats(t, r.fakeURL)
	t.Logf("fake: %d calls, faults %v, by status %v", st.Calls, st.Faulted, st.ByStatus)
	for _, kind := range []string{"hang", "bad_gateway", "truncated", "empty_ok"} {
		if st.Faulted[kind] == 0 {
			t.Errorf("the fake injected no %s fault: the test proves nothing", kind)
		}
	}

	// Every call the fake saw is in erasure_attempts, classified; none outlived the timeout.
	conn := r.db(t)
	rows, err := conn.Query(context.Background(), `
SELECT result, coalesce(http_status, 0), coalesce(error_code, ''), count(*), max(duration_ms)
FROM erasure_attempts GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`)
	if err != nil {
		t.Fatal(err)
	}
	type class struct {
		result, code string
		status       int
	}
	seen := map[class]int64{}
	var calls int64
	for rows.Next() {
		var k class
		var count, longest int64
		if err := rows.Scan(&k.result, &k.status, &k.code, &count, &longest); err != nil {
			t.Fatal(err)
		}
		seen[k] = count
		calls += count
		if time.Duration(longest)*time.Millisecond > callTimeout+time.Second { // a second for a busy machine
			t.Errorf("a call recorded as %+v took %dms; KNOT_TIMEOUT is %v", k, longest, callTimeout)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("erasure_attempts: %v", seen)
	if calls != st.Calls {
		t.Errorf("erasure_attempts records %d calls; the fake saw %d", calls, st.Calls)
	}
	for k, want := range map[class]int64{
		{"retryable", "timeout", 0}:            st.Faulted["hang"],
		{"retryable", "http_502", 502}:         st.Faulted["bad_gateway"],
		{"retryable", "invalid_response", 200}: st.Faulted["truncated"] + st.Faulted["empty_ok"],
	} {
		if seen[k] != want {
			t.Errorf("%d calls recorded as %+v; the fake gave %d such answers", seen[k], k, want)
		}
	}
	for k := range seen {
		switch k.result {
		case "deleted", "not_found", "retryable":
		default:
			t.Errorf("%d calls recorded as %+v: a garbled answer must be retried", seen[k], k)
		}
	}
	var ids []string
	for _, row := range r.rows(t) {
		ids = append(ids, row.ExternalUserID)
	}
	// A 200 that could not be read deleted nothing at the fake; the retry did.
	if want := chaosExistingUsers(ids, 0.1); st.Deleted != want {
		t.Errorf("fake deleted %d users; %d of the %d exist", st.Deleted, want, n)
	}
	w.noPanic(t)
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
}
