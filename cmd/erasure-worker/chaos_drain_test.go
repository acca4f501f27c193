//go:build chaos

package main

import (
	"syscall"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// SIGTERM drain: calls in flight finish and are recorded, claims never sent go back to pending
// at once without spending an attempt, the process exits 0 within SHUTDOWN_TIMEOUT, and an
// idle replica picks the released requests up at once (woken by NOTIFY, long before its poll
// or any lease would bring them back).
func TestChaosSigtermDrain(t *testing.T) {
	t.Parallel()
	const (
		n               = 16
		shutdownTimeout = 10 * time.Second
		poll            = 30 * time.Second
		lease           = time.Minute
		pickup          = 10 * time.Second // well under poll and lease
	)
	r := newRig(t, withFake("-latency", "2s", "-missing", "0"))
	r.enqueue(t, "dr", n)
	// Slow calls at two a second: the worker claims all n at once, and at any moment some are in
	// flight and others wait for the rate limit, unsent.
	settings := []string{"CONCURRENCY=16", "RATE_LIMIT_RPS=2", "RATE_LIMIT_BURST=1", "KNOT_TIMEOUT=5s",
		"LEASE_DURATION=" + lease.String(), "SHUTDOWN_TIMEOUT=" + shutdownTimeout.String(), "POLL_INTERVAL=" + poll.String()}
	a := r.startWorker(t, "draining", settings...)
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "the first worker to hold every request and call Knot", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE lease_owner = $1`, a.id) == n &&
			fakeStats(t, r.fakeURL).Calls >= 1
	})
	b := r.startWorker(t, "idle", settings...)
	time.Sleep(2 * time.Second) // its LISTEN connection is up; it finds nothing to claim

	// SIGTERM just after a call went out, so that one call has its whole 2s still to go.
	sent := fakeStats(t, r.fakeURL).Calls
	queuetest.WaitFor(t, 10*time.Second, "the next call", func() bool { return fakeStats(t, r.fakeURL).Calls > sent })
	sentBefore := fakeStats(t, r.fakeURL).Calls
	doneBefore := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`)
	if sentBefore <= doneBefore || sentBefore >= n {
		t.Fatalf("at SIGTERM %d calls were sent and %d recorded, of %d: want some in flight and some unsent", sentBefore, doneBefore, n)
	}
	termAt := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The unsent claims come back at once, not after the calls in flight: the idle replica
	// holds one of them while the first worker is still waiting for its calls.
	var tookOver time.Duration
	queuetest.WaitFor(t, pickup, "the idle replica to take a released request", func() bool {
		if chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE lease_owner = $1`, b.id) > 0 {
			tookOver = time.Since(termAt)
			return true
		}
		return false
	})
	exitedEarly := false
	select {
	case <-a.done:
		exitedEarly = true
	default:
	}
	select {
	case <-a.done:
	case <-time.After(2 * shutdownTimeout):
		t.Fatalf("the worker did not exit within %v of SIGTERM", 2*shutdownTimeout)
	}
	took := time.Since(termAt)
	if code := a.cmd.ProcessState.ExitCode(); code != 0 || took > shutdownTimeout {
		t.Errorf("SIGTERM: exit %d after %v; want 0 within SHUTDOWN_TIMEOUT %v", code, took, shutdownTimeout)
	}
	if exitedEarly {
		t.Errorf("the idle replica took a released request only %v after SIGTERM, once the first worker had exited (after %v): claims never sent must be released at once",
			tookOver, took)
	}

	// Everything the first worker sent is recorded as done; the rest went back and the idle
	// replica has them, long before its poll or a lease would have brought them back.
	sentByA := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_attempts WHERE worker = $1`, a.id)
	doneByA := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_attempts WHERE worker = $1 AND result = 'deleted'`, a.id)
	if sentByA < sentBefore || doneByA != sentByA {
		t.Errorf("the drained worker recorded %d calls, %d of them deletions; %d had been sent by SIGTERM", sentByA, doneByA, sentBefore)
	}
	released := int64(n) - sentByA
	if released <= 0 {
		t.Fatalf("the drained worker sent all %d requests: nothing was released, the test proves nothing", n)
	}
	queuetest.WaitFor(t, pickup, "the idle replica to take every released request", func() bool {
		return chaosQueryInt(t, conn, `
SELECT count(*) FROM erasure_requests r
WHERE r.lease_owner = $1 OR EXISTS (SELECT 1 FROM erasure_attempts a WHERE a.request_id = r.id AND a.worker = $1)`, b.id) == released
	})
	t.Logf("SIGTERM with %d sent, %d recorded: the idle replica held a released request after %v, the worker exited after %v; %d released",
		sentBefore, doneBefore, tookOver.Round(time.Millisecond), took.Round(time.Millisecond), released)

	c := r.drained(t, time.Minute)
	chaosAllSucceeded(t, c, n)
	st := fakeStats(t, r.fakeURL)
	if st.DuplicateDeletes != 0 || st.Calls != n {
		t.Errorf("Knot got %d calls, %d duplicate deletes; want one call per request", st.Calls, st.DuplicateDeletes)
	}
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		if row.Attempts != 1 || row.Calls != 1 {
			bad.add("request %s: %d attempts, %d calls recorded; want one of each (a released claim spends nothing)",
				row.RequestRef, row.Attempts, row.Calls)
		}
	}
	bad.report(t)
	a.noPanic(t)
	b.noPanic(t)
}
