//go:build bench

package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/worker"
)

// 5. Memory: peak RSS of the `erasure-worker run` process at full throughput, by backlog size.
func benchMemory(t *testing.T, r *benchReport) {
	const runFor = 10 * time.Second
	var peaks []int64
	var lastDB string
	for _, size := range []int{10_000, 1_000_000} {
		rg := newRig(t, withFake("-missing", "0"))
		start := time.Now()
		benchInsertPending(t, rg.dbURL, "memory", 1, size)
		fill := time.Since(start)
		p := rg.startWorker(t, "worker", fmt.Sprintf("RATE_LIMIT_RPS=%g", benchNoLimitRPS), fmt.Sprintf("RATE_LIMIT_BURST=%g", float64(benchNoLimitBurst)))
		var rssMax int64
		for end := time.Now().Add(runFor); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
			rssMax = max(rssMax, benchProcStatus(t, p.cmd.Process.Pid, "VmRSS"))
		}
		hwm := benchProcStatus(t, p.cmd.Process.Pid, "VmHWM")
		if code, _ := p.stop(t, 30*time.Second); code != 0 {
			t.Errorf("worker exited %d", code)
		}
		c := rg.counts(t)
		finished := c["succeeded/deleted"]
		peaks = append(peaks, hwm)
		lastDB = rg.dbURL
		r.info("5", fmt.Sprintf("peak RSS (VmHWM) of `erasure-worker run`, %s pending, %v at full throughput", benchCount(int64(size)), runFor),
			fmt.Sprintf("%s (%d finished, %.0f/s)", benchBytes(hwm*1024), finished, float64(finished)/runFor.Seconds()))
		t.Logf("memory %d pending: VmHWM %d kB, largest VmRSS sampled %d kB, %d finished (backlog inserted in %v)", size, hwm, rssMax, finished, fill)
	}
	ratio := float64(peaks[1]) / float64(peaks[0])
	if !r.judge("5", "peak RSS with 1M pending / with 10k", fmt.Sprintf("%.2f", ratio), "≤ 1.25 (flat)", ratio <= 1.25) {
		r.missed("5. Memory: heap of an in-process worker over the 1M backlog for 10s (the binary serves no profiles)", benchHeapProfile(t, r, lastDB, runFor))
	}
	r.note("**5.** The `erasure-worker run` binary (built without -race) against the knotfake process (no latency), "+
		"RATE_LIMIT_RPS=%g, burst %g, CONCURRENCY auto, over a backlog inserted by INSERT … SELECT generate_series; VmHWM "+
		"from /proc/PID/status after %v, just before SIGTERM. Flat means within a quarter: nothing should load the backlog.",
		benchNoLimitRPS, float64(benchNoLimitBurst), runFor)
}

// benchHeapProfile runs the worker in-process over what is left of a backlog and returns the top
// of its in-use heap.
func benchHeapProfile(t *testing.T, r *benchReport, dbURL string, runFor time.Duration) string {
	_, fakeURL := startKnotfake(t, "-missing", "0")
	pool := benchPool(t, dbURL, nil)
	w, err := worker.New(queue.New(pool), benchKnotClient(t, fakeURL), worker.Config{
		ID: "bench-heap", RateLimit: benchNoLimitRPS, Burst: benchNoLimitBurst,
	})
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { w.Run(ctx); done <- nil }()
	time.Sleep(runFor)
	runtime.GC()
	path := r.profileDir + "/5-heap.pprof"
	f, err := os.Create(path)
	if err != nil {
		cancel()
		<-done
		return err.Error()
	}
	err = pprof.Lookup("heap").WriteTo(f, 0)
	f.Close()
	cancel()
	<-done
	if err != nil {
		return err.Error()
	}
	return pprofTop(path, "-sample_index=inuse_space")
}
