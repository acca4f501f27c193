//go:build bench

package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// 6. Realistic latency: knotfake at 200ms a call, RATE_LIMIT_RPS=200, CONCURRENCY auto.
func benchRealistic(t *testing.T, r *benchReport) {
	const (
		rps    = 200
		runFor = 25 * time.Second
		skip   = 5 // whole seconds after the first call's second
	)
	rg := newRig(t, withFake("-latency", "200ms", "-missing", "0"), withRequests(rps*int(runFor/time.Second)+2000))
	p := rg.startWorker(t, "worker", fmt.Sprintf("RATE_LIMIT_RPS=%d", rps))
	addr := p.addr
	var inflight, share []string
	for end := time.Now().Add(runFor); time.Now().Before(end); time.Sleep(time.Second) {
		v, err := tryScrapeGauge("http://"+addr+"/metrics", "erasure_inflight_requests")
		s, err2 := tryScrapeGauge("http://"+addr+"/metrics", "erasure_rate_limit_rps")
		if err == nil && err2 == nil {
			inflight = append(inflight, strconv.Itoa(int(v)))
			share = append(share, strconv.Itoa(int(s)))
		}
	}
	run := observe(t, rg.fakeURL)
	if code, _ := p.stop(t, 30*time.Second); code != 0 {
		t.Errorf("worker exited %d", code)
	}
	if len(run.perSecond) <= skip+5 {
		t.Fatalf("only %d whole seconds of calls: %v", len(run.perSecond), run.st.PerSecond)
	}
	got := run.achieved(skip, len(run.perSecond))
	window := len(run.perSecond) - skip
	t.Logf("realistic: %.1f/s over %d s; per second %v; in flight each second %v; share %v", got, window, run.st.PerSecond, inflight, share)
	if !r.judge("6", fmt.Sprintf("rate at 200 ms per call, RATE_LIMIT_RPS=%d, CONCURRENCY auto, over %d s", rps, window),
		fmt.Sprintf("%.1f/s (%.1f%%)", got, 100*got/rps), fmt.Sprintf("≥ 98%% (%.0f/s)", 0.98*rps), got >= 0.98*rps) {
		r.missed("6. Rate at 200ms latency: what the binary reported (it serves no profiles)",
			fmt.Sprintf("calls per second at Knot: %v\nerasure_inflight_requests, each second: %s\nerasure_rate_limit_rps, each second: %s",
				run.st.PerSecond, strings.Join(inflight, " "), strings.Join(share, " ")))
	}
	r.info("6", "busiest one-second window at Knot", fmt.Sprintf("%d (limit %d + burst %d)", run.st.BusiestSecond, rps, rps/10))
	r.note("**6.** The binaries through the e2e harness: knotfake `-latency 200ms`, `erasure-worker run` with "+
		"RATE_LIMIT_RPS=%d and CONCURRENCY, RATE_LIMIT_BURST unset, a backlog beyond the run, %v. The rate is the mean of "+
		"knotfake's whole seconds after skipping the first partial second and the next %d (the two heartbeats before the "+
		"first share, and the latency estimate settling); the last partial second is dropped too.", rps, runFor, skip)
}
