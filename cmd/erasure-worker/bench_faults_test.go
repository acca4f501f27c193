//go:build bench

package main

import (
	"fmt"
	"testing"
	"time"
)

// 8. Faults: the figures of the fault suite (`make chaos`) that depend on how loaded the
// machine is, so the suite does not judge them.
func benchFaults(t *testing.T, r *benchReport) {
	benchOutageBurst(t, r)
	benchKillTakeover(t, r)
}

// benchKillTakeover: how long after a kill -9 of one of two replicas (default LEASE_DURATION,
// 2m) every request is done; `make chaos` only checks it is well under the lease.
func benchKillTakeover(t *testing.T, r *benchReport) {
	const within = time.Minute
	_, k := runTakeover(t, within)
	measured := fmt.Sprintf("%.1f s (%d claims held)", k.took.Seconds(), k.held)
	if !k.done {
		measured = fmt.Sprintf("not done after %v (%d claims held; %d pending or running)", within, k.held,
			k.counts["pending"]+k.counts["running"])
	}
	r.judge("8", fmt.Sprintf("kill -9 takeover: all %d requests done, from the kill of a replica holding claims (default lease 2m)", k.n),
		measured, "≤ 15 s", k.done && k.took <= 15*time.Second)
	r.note("**8.** Kill -9 takeover: two replicas at RATE_LIMIT_RPS=400 with the default LEASE_DURATION, %d requests, knotfake "+
		"30±30 ms; one replica frozen (SIGSTOP) a tenth of the way in while it holds claims, then killed; the time runs from the "+
		"kill until nothing is pending or running (capped at %v).", k.n, within)
}

// benchOutageBurst: after a Knot outage, do the retries come back spread out by their jittered
// backoff or as one burst? The busiest second after Knot recovers, against the requests waiting.
func benchOutageBurst(t *testing.T, r *benchReport) {
	const n, outage = chaosOutageRequests, chaosOutageFor
	rig, w, outageUntil := startChaosOutage(t)
	time.Sleep(time.Until(outageUntil.Add(-100 * time.Millisecond)))
	resetFake(t, rig.fakeURL) // count the recovery only
	c := rig.drained(t, 2*time.Minute)
	st := fakeStats(t, rig.fakeURL)
	w.stop(t, 30*time.Second)
	t.Logf("outage: final %v; after it, per second %v", c, st.PerSecond)
	share := float64(st.BusiestSecond) / n
	r.judge("8", fmt.Sprintf("busiest second after a %v Knot outage, of %d requests waiting", outage, n),
		fmt.Sprintf("%d (%.2f)", st.BusiestSecond, share), "≤ 0.75", share <= 0.75)
	r.note("**8.** The fault suite's rig (`make chaos`, real processes). Outage: knotfake answers 500 for %v to %d requests; "+
		"one worker with RETRY_MIN_BACKOFF=%v, RETRY_MAX_BACKOFF=%v, rate and concurrency far above need, so that only the "+
		"jitter spreads the retries; the fake's counts are reset 100 ms before the outage ends.", outage, n,
		chaosOutageMinBackoff, chaosOutageMaxBackoff)
}
