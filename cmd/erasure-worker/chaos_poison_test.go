//go:build chaos

package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A result the database will never accept blocks nothing else: one request's success violates
// a constraint (here one added for the test; in life a trigger, a full disk for one row, a
// value out of range). Every other request succeeds, the worker stays up and healthy, and the
// poisoned request fails alone with a readable reason saying its result could not be recorded.
func TestChaosPoisonedResult(t *testing.T) {
	t.Parallel()
	const (
		n      = 200
		poison = "poison-0"
	)
	r := newRig(t, withFake("-missing", "0"))
	conn := r.db(t)
	if _, err := conn.Exec(context.Background(),
		`ALTER TABLE erasure_requests ADD CONSTRAINT poison CHECK (request_ref <> '`+poison+`' OR status <> 'succeeded')`); err != nil {
		t.Fatal(err)
	}
	r.enqueue(t, "poison", n) // poison-0 ... poison-199
	w := r.startWorker(t, "worker", "RATE_LIMIT_RPS=200", "RATE_LIMIT_BURST=20", "CONCURRENCY=16",
		"KNOT_TIMEOUT=2s", "LEASE_DURATION=10s", "POLL_INTERVAL=200ms")

	others := func() int64 {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE request_ref <> $1 AND status = 'succeeded'`, poison)
	}
	var done int64
	defer func() {
		if t.Failed() { // also when a wait below gave up
			t.Logf("%d of the other %d requests succeeded; final states %v", done, n-1, r.counts(t))
		}
	}()
	queuetest.WaitFor(t, 30*time.Second, "every request but the poisoned one to succeed", func() bool {
		done = others()
		select {
		case <-w.done:
			t.Fatalf("the worker exited (%v) with %d of the other %d requests done", w.cmd.ProcessState, done, n-1)
		default:
		}
		return done == n-1
	})
	queuetest.WaitFor(t, 30*time.Second, "the poisoned request to fail", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE request_ref = $1 AND status = 'failed'`, poison) == 1
	})
	for _, row := range r.rows(t) {
		if row.RequestRef != poison {
			continue
		}
		if !strings.Contains(strings.ToLower(row.LastError), "record") {
			t.Errorf("the poisoned request failed with last_error %q (code %q); want a reason saying its result could not be recorded",
				row.LastError, row.LastErrorCode)
		}
		t.Logf("poisoned request: %s/%s after %d attempts, %d calls: %q", row.Status, row.Outcome, row.Attempts, row.Calls, row.LastError)
	}
	c := r.counts(t)
	if c["succeeded/deleted"] != n-1 || chaosFailed(c) != 1 || c["pending"]+c["running"] != 0 {
		t.Errorf("final states %v: want %d succeeded and the poisoned one failed", c, n-1)
	}
	st := fakeStats(t, r.fakeURL)
	if st.Deleted != n {
		t.Errorf("the fake deleted %d users of %d: every user, the poisoned one too, should be deleted at Knot", st.Deleted, n)
	}
	if code := w.probe("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz answers %d after a result the database refused", code)
	}
	w.noPanic(t)
}
