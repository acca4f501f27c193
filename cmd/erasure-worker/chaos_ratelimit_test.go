//go:build chaos

package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A rollout that lowers RATE_LIMIT_RPS: two replicas run at 100, then a third starts at 50 (as
// the first pod of a new ReplicaSet would). From a few seconds after it is up, the deployment
// keeps to the lowest limit among its live replicas: no one-second window above 50 plus the
// burst. Nothing fails meanwhile.
func TestChaosRolloutLowersRateLimit(t *testing.T) {
	t.Parallel()
	const (
		oldRPS, newRPS, burst = 100, 50, 1
		settle                = 4 * time.Second // four heartbeats of the third replica
		measure               = 10 * time.Second
	)
	r := newRig(t, withFake("-latency", "5ms", "-missing", "0"))
	r.enqueue(t, "ro", 5000) // beyond what the run can do: every replica stays busy
	common := []string{fmt.Sprintf("RATE_LIMIT_BURST=%d", burst), "CONCURRENCY=8", "POLL_INTERVAL=200ms"}
	workers := []*workerProc{
		r.startWorker(t, "old-a", append(common, fmt.Sprintf("RATE_LIMIT_RPS=%d", oldRPS))...),
		r.startWorker(t, "old-b", append(common, fmt.Sprintf("RATE_LIMIT_RPS=%d", oldRPS))...),
	}
	queuetest.WaitFor(t, time.Minute, "the old replicas to call Knot", func() bool { return fakeStats(t, r.fakeURL).Calls > oldRPS })
	time.Sleep(2 * time.Second)
	workers = append(workers, r.startWorker(t, "new", append(common, fmt.Sprintf("RATE_LIMIT_RPS=%d", newRPS))...))
	time.Sleep(settle)

	r.resetWindows(t)
	time.Sleep(measure)
	win := r.windows(t)
	t.Logf("rollout 100 -> 50: %d calls in %v from %v after the new replica started; busiest window %d; per second %v",
		win.Calls, measure, settle, win.Busiest, win.PerSecond)
	win.atMost(t, newRPS+burst, "the lowest RATE_LIMIT_RPS among the live replicas (50) plus RATE_LIMIT_BURST (1)")
	if win.Calls == 0 {
		t.Fatal("no call reached Knot while measuring: the test proves nothing")
	}
	chaosStopAll(t, r, workers)
}

// A batch after a lull, across replicas: five replicas share RATE_LIMIT_RPS=20 with
// RATE_LIMIT_BURST=1. They take every send from one bucket, so no one-second window at Knot
// may hold more than 20 plus 1, however many replicas there are. Five batches, each after a
// lull long enough to refill the bucket.
func TestChaosBurstAcrossReplicas(t *testing.T) {
	t.Parallel()
	const (
		replicas    = 5
		rps, burst  = 20, 1
		batches     = 5
		batch, lull = 40, 3 * time.Second
	)
	r := newRig(t, withFake("-latency", "5ms", "-missing", "0"))
	var workers []*workerProc
	for range replicas {
		workers = append(workers, r.startWorker(t, "replica", fmt.Sprintf("RATE_LIMIT_RPS=%d", rps),
			fmt.Sprintf("RATE_LIMIT_BURST=%d", burst), "CONCURRENCY=4", "POLL_INTERVAL=200ms"))
	}
	conn := r.db(t)
	r.resetWindows(t)
	for i := range batches {
		time.Sleep(lull) // every replica idle, its bucket full
		prefix := fmt.Sprintf("bu%d", i+1)
		r.enqueue(t, prefix, batch)
		queuetest.WaitFor(t, 30*time.Second, "batch "+prefix+" to be done", func() bool {
			return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status IN ('pending', 'running')`) == 0
		})
		t.Logf("after batch %d: busiest window so far %d", i+1, r.windows(t).Busiest)
	}
	win := r.windows(t)
	t.Logf("%d replicas, %d batches of %d after %v lulls: %d calls, busiest window %d; per second %v",
		replicas, batches, batch, lull, win.Calls, win.Busiest, win.PerSecond)
	win.atMost(t, rps+burst, "RATE_LIMIT_RPS=20 plus RATE_LIMIT_BURST=1, across 5 replicas")
	c := r.counts(t)
	chaosAllSucceeded(t, c, batches*batch)
	if win.Calls != batches*batch {
		t.Errorf("Knot got %d calls for %d requests", win.Calls, batches*batch)
	}
	chaosStopAll(t, r, workers)
}

// chaosStopAll stops the workers with SIGTERM and checks that each exits 0 without a panic and
// that nothing is left running or failed.
func chaosStopAll(t *testing.T, r *rig, workers []*workerProc) {
	t.Helper()
	for _, w := range workers {
		if code, took := w.stop(t, 30*time.Second); code != 0 {
			t.Errorf("worker %s: exit %d after SIGTERM (took %v)", w.id, code, took)
		}
		w.noPanic(t)
	}
	if c := r.counts(t); c["running"] != 0 || chaosFailed(c) != 0 {
		t.Errorf("after every worker stopped: %v; want nothing running or failed", c)
	}
}
