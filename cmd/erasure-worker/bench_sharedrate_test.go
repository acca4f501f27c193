//go:build bench

package main

import (
	"fmt"
	"testing"
)

// 7. The shared rate limit: how close three replicas come to RATE_LIMIT_RPS, and how much of a
// dead replica's share the survivors take over. `make test` runs the same scenarios
// (ratelimit_e2e_test.go) and asserts only what load cannot break.
func benchSharedRate(t *testing.T, r *benchReport) {
	run := rateThreeReplicas(t)
	got := run.achieved(0, len(run.perSecond))
	t.Logf("3 replicas: per second %v", run.st.PerSecond)
	r.judge("7", fmt.Sprintf("rate of 3 replicas sharing RATE_LIMIT_RPS=%d, over %d s", sharedRPS, len(run.perSecond)),
		fmt.Sprintf("%.1f/s (%.1f%%)", got, 100*got/sharedRPS), fmt.Sprintf("≥ 95%% (%.0f/s)", 0.95*sharedRPS), got >= 0.95*sharedRPS)
	r.info("7", "busiest one-second window, 3 replicas", fmt.Sprintf("%d (limit %d + burst %d)", run.st.BusiestSecond, sharedRPS, sharedBurst))

	run, after := rateJoinAndDie(t)
	got = run.achieved(after, len(run.perSecond))
	t.Logf("join and kill: per second %v, taken over from second %d", run.st.PerSecond, after)
	r.judge("7", "rate of the 2 survivors from 3 s after a third replica's kill -9",
		fmt.Sprintf("%.1f/s (%.1f%%)", got, 100*got/sharedRPS), fmt.Sprintf("≥ 95%% (%.0f/s)", 0.95*sharedRPS), got >= 0.95*sharedRPS)
	r.info("7", "busiest one-second window, replicas joining and dying", fmt.Sprintf("%d (limit %d + burst %d)", run.st.BusiestSecond, sharedRPS, sharedBurst))
	r.note("**7.** The binaries through the e2e harness, as `make test`'s TestSharedRateLimit* run them: knotfake `-latency 5ms`, "+
		"replicas with RATE_LIMIT_RPS=%d, RATE_LIMIT_BURST=%d, CONCURRENCY=8, RATE_LIMIT_SYNC_INTERVAL=250ms, a backlog beyond the run. "+
		"Three replicas for 12 s; then two, a third joining after 5 s, the first killed 5 s later, 7 s more. Rates are means of knotfake's "+
		"whole seconds (the first and last partial ones dropped).", sharedRPS, sharedBurst)
}
