//go:build bench

package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func init() { raceBinaries = false }

// TestBenchRateLimit measures the shared rate limit with 1, 3 and 5 replicas against knotfake
// (5ms latency, a backlog far beyond the budget): the rate achieved, the worst one-second
// window and their ratios to RATE_LIMIT_RPS. It reports figures and judges nothing: run it with
// `make bench-ratelimit`.
func TestBenchRateLimit(t *testing.T) {
	const runFor = 15 * time.Second
	var table strings.Builder
	fmt.Fprintf(&table, "RATE_LIMIT_RPS=%d, RATE_LIMIT_BURST=%d, %v per run, knotfake latency 5ms, %s\n\n",
		sharedRPS, sharedBurst, runFor, machine())
	fmt.Fprintf(&table, "| replicas | achieved (calls/s) | achieved / limit | worst 1s window | worst / limit |\n")
	fmt.Fprintf(&table, "| ---: | ---: | ---: | ---: | ---: |\n")
	for _, n := range []int{1, 3, 5} {
		r := newRig(t, withFake("-latency", "5ms", "-missing", "0"), withRequests(10000))
		var replicas []*workerProc
		for range n {
			replicas = append(replicas, r.startWorker(t, "replica", replicaEnv...))
		}
		time.Sleep(runFor)
		run := observe(t, r.fakeURL)
		for _, p := range replicas {
			p.stop(t, 10*time.Second)
		}
		got := run.achieved(0, len(run.perSecond))
		t.Logf("%d replicas: per second %v", n, run.st.PerSecond)
		fmt.Fprintf(&table, "| %d | %.1f | %.3f | %d | %.2f |\n", n, got, got/sharedRPS,
			run.st.BusiestSecond, float64(run.st.BusiestSecond)/sharedRPS)
	}
	fmt.Fprintln(os.Stdout, "\n"+table.String())
}

func machine() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	model, cores := "", 0
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name\t: "); ok {
			model = v
			cores++
		}
	}
	return fmt.Sprintf("%d × %s", cores, model)
}
