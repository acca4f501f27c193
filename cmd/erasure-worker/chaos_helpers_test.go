//go:build chaos || bench

package main

// The fault suite (`make chaos`): real erasure-worker and knotfake processes against a real
// PostgreSQL, each scenario breaking one thing and then asserting on every row's final state and
// on what the fake saw. Its world is the rig of rig_test.go; this file holds what the scenarios
// share beyond it. Run one scenario with
//
//	deploy/local/with-postgres go test -tags chaos -run TestChaosKill9 -v ./cmd/erasure-worker
//
// `make bench` (tag bench) runs some of the same scenarios for the figures the fault suite must
// not judge.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// chaosQueryInt runs a query returning one integer.
func chaosQueryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// chaosAllSucceeded checks that every one of n rows succeeded.
func chaosAllSucceeded(t *testing.T, c map[string]int64, n int64) {
	t.Helper()
	if done := c["succeeded/deleted"] + c["succeeded/not_found"]; done != n || chaosFailed(c) != 0 {
		t.Errorf("final states %v: want all %d succeeded", c, n)
	}
}

// chaosFailed counts the failed rows in counts, whatever their outcome.
func chaosFailed(c map[string]int64) int64 {
	var n int64
	for k, v := range c {
		if strings.HasPrefix(k, "failed") {
			n += v
		}
	}
	return n
}

// chaosExistingUsers counts, of ids, those the fake started with -missing share treats as existing.
func chaosExistingUsers(ids []string, share float64) int64 {
	exists := knotfake.MissingShare(share)
	var n int64
	for _, id := range ids {
		if exists(id) {
			n++
		}
	}
	return n
}

// chaosRowErrors collects what is wrong with single rows and reports how many and the first
// few, so that a break that touches every row does not print thousands of lines.
type chaosRowErrors struct {
	n     int
	first []string
}

func (e *chaosRowErrors) add(format string, args ...any) {
	e.n++
	if len(e.first) < 5 {
		e.first = append(e.first, fmt.Sprintf(format, args...))
	}
}

func (e *chaosRowErrors) report(t *testing.T) {
	t.Helper()
	if e.n > 0 {
		t.Errorf("%d rows are wrong; the first:\n\t%s", e.n, strings.Join(e.first, "\n\t"))
	}
}

// chaosOutage makes every call to the fake answer 500 for d, and returns when that ends.
func chaosOutage(t *testing.T, fakeURL string, d time.Duration) time.Time {
	t.Helper()
	return setFaults(t, fakeURL, `{"outage_for":"`+d.String()+`"}`).OutageUntil
}

// The Knot outage of TestChaosKnotOutage and of section 8 of `make bench`: 300 requests, 10s
// of 500s, backoffs from 1s doubling to 8s. Retry horizon: waits of 1s, 2s, 4s, then 8s, each
// jittered to at least half, over 11 retries: at least 35s, well beyond the outage.
const (
	chaosOutageRequests   = 300
	chaosOutageFor        = 10 * time.Second
	chaosOutageMinBackoff = time.Second
	chaosOutageMaxBackoff = 8 * time.Second
)

// startChaosOutage enqueues the requests (a tenth of them for users Knot does not have), starts
// the outage and then one worker, and returns when the outage ends. The worker has the rate
// limit and the concurrency far above what the requests need, so that only the backoff's
// jitter can spread the retries, and twelve attempts, so that none fails in the outage.
func startChaosOutage(t *testing.T) (*rig, *workerProc, time.Time) {
	t.Helper()
	r := newRig(t, withFake("-missing", "0.1"))
	r.enqueue(t, "out", chaosOutageRequests)
	until := chaosOutage(t, r.fakeURL, chaosOutageFor)
	w := r.startWorker(t, "worker", "RATE_LIMIT_RPS=2000", "RATE_LIMIT_BURST=500", "CONCURRENCY=300",
		"QUICK_RETRIES=1", "KNOT_TIMEOUT=1s", "LEASE_DURATION=10s", "RETRY_MIN_BACKOFF="+chaosOutageMinBackoff.String(),
		"RETRY_MAX_BACKOFF="+chaosOutageMaxBackoff.String(), "MAX_ATTEMPTS=12", "POLL_INTERVAL=200ms")
	return r, w, until
}

// holding counts the requests the worker holds claimed (running under its lease).
func (w *workerProc) holding(t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'running' AND lease_owner = $1`, w.id)
}

// chaosTakeover is a kill -9 of one of two replicas with the default LEASE_DURATION (2m):
// 3000 requests at RATE_LIMIT_RPS=400, one replica killed a few seconds in while it holds
// claims. The survivor must take the dead replica's claims back once its heartbeat has expired,
// not a whole lease later.
type chaosTakeover struct {
	n        int
	victimID string
	held     int64         // running under the dead replica's lease when it was killed
	took     time.Duration // from the kill until nothing was pending or running
	done     bool          // everything finished within the wait
	counts   map[string]int64
	survivor *workerProc
}

// runTakeover runs chaosTakeover on a fresh rig, waiting at most within after the kill.
func runTakeover(t *testing.T, within time.Duration) (*rig, chaosTakeover) {
	t.Helper()
	const n = 3000
	r := newRig(t, withFake("-latency", "30ms", "-latency-jitter", "30ms", "-missing", "0.1"))
	r.enqueue(t, "tk", n)
	settings := []string{"RATE_LIMIT_RPS=400", "RATE_LIMIT_BURST=40", "CONCURRENCY=16"}
	victim := r.startWorker(t, "victim", settings...)
	survivor := r.startWorker(t, "survivor", settings...)
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "a tenth of the requests done and the victim holding claims", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`) >= n/10 &&
			victim.holding(t, conn) > 0
	})
	victim.freeze(t)
	k := chaosTakeover{n: n, victimID: victim.id, held: victim.holding(t, conn), survivor: survivor}
	if k.held == 0 {
		t.Fatal("the victim held no claim when it was stopped: the test proves nothing")
	}
	victim.kill9(t)
	killedAt := time.Now()
	deadline := killedAt.Add(within)
	for {
		k.counts = r.counts(t)
		if k.counts["pending"]+k.counts["running"] == 0 {
			k.took, k.done = time.Since(killedAt), true
			break
		}
		if time.Now().After(deadline) {
			k.took = time.Since(killedAt)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("kill -9 of %s holding %d claims: finished %v after the kill: %v (final %v)", k.victimID, k.held, k.done,
		k.took.Round(100*time.Millisecond), k.counts)
	return r, k
}

// chaosWindows is what the fake saw of the calls since its counts were last reset (resetWindows):
// the busiest sliding one-second window of their arrivals, and the calls in each whole second.
type chaosWindows struct {
	Calls     int64
	Busiest   int64
	PerSecond []int64
}

// resetWindows starts counting one-second windows afresh: it resets the fake's counts (and its
// memory of deleted users, so Deleted and DuplicateDeletes then count from here too).
func (r *rig) resetWindows(t *testing.T) {
	t.Helper()
	resetFake(t, r.fakeURL)
}

// windows returns the one-second windows since resetWindows.
func (r *rig) windows(t *testing.T) chaosWindows {
	t.Helper()
	st := fakeStats(t, r.fakeURL)
	return chaosWindows{Calls: st.Calls, Busiest: st.BusiestSecond, PerSecond: st.PerSecond}
}

// atMost fails the test if any one-second window held more than limit calls.
func (w chaosWindows) atMost(t *testing.T, limit int64, what string) {
	t.Helper()
	if w.Busiest > limit {
		t.Errorf("the busiest one-second window at Knot held %d calls; %s allows %d (per whole second: %v)",
			w.Busiest, what, limit, w.PerSecond)
	}
}
