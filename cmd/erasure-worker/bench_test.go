//go:build bench

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// TestBench measures the worker against its own limits (issue #6): what it costs per request
// in CPU, database round trips and memory, and how that cost grows with the table, each figure
// beside its goal; then (sections 7 and 8) the timing figures of the shared rate limit and of
// the fault suite, which `make test` and `make chaos` must not judge on a busy machine; the
// same job on River (9) and the floors (10); the purge of retention beside the worker (11); and
// the rate limit at every rate, burst and number of replicas beside a bare rate.Limiter (12). It
// judges nothing: it prints a table and writes it to BENCHMARKS.md with the
// machine it ran on. Run it with `make bench` (binaries built without the race detector, as
// bench_ratelimit_test.go sets).
//
// BENCH_ONLY=1,3 runs only those sections (for working on one); BENCHMARKS.md is then left
// alone. Every in-process phase runs under the CPU profiler; the profile's top entries go into
// BENCHMARKS.md under each goal missed, and the profiles themselves stay in BENCH_PROFILE_DIR
// (default bin/bench-profiles). BENCH_PROFILE_ALL=1 reports them for every goal, met or not.
func TestBench(t *testing.T) {
	r := newBenchReport(t)
	sections := []struct {
		id, name string
		run      func(*testing.T, *benchReport)
	}{
		{"1", "pipeline", benchPipeline}, // and section 2, measured during its whole-worker run
		{"3", "claim_cost", benchClaimCost},
		{"4", "pickup", benchPickup},
		{"5", "memory", benchMemory},
		{"6", "realistic", benchRealistic},
		{"7", "shared_rate", benchSharedRate},
		{"8", "faults", benchFaults},
		{"9", "peer", benchPeer},           // the same job on River, both as processes (issue #13)
		{"10", "floor", benchFloor},        // a bare HTTP round trip and a bare claim and finish
		{"11", "purge", benchPurge},        // a million finished rows purged beside the worker (issue #12)
		{"12", "rate_grid", benchRateGrid}, // rate × burst × replicas against a bare rate.Limiter (issue #19)
		{"13", "console", benchConsole},
	}
	var only []string
	if s := os.Getenv("BENCH_ONLY"); s != "" {
		only = strings.Split(s, ",")
	}
	for _, s := range sections {
		if only != nil && !slices.Contains(only, s.id) {
			continue
		}
		t.Run(s.name, func(t *testing.T) { s.run(t, r) })
	}
	r.finish()
	fmt.Fprintln(os.Stdout, "\n"+r.markdown())
	if only != nil {
		t.Logf("BENCH_ONLY=%s: BENCHMARKS.md left as it was", os.Getenv("BENCH_ONLY"))
		return
	}
	if err := os.WriteFile(filepath.Join(benchRepoRoot(t), "BENCHMARKS.md"), []byte(r.markdown()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// benchRow is one figure of the table.
type benchRow struct {
	section  string // "1", "2", ...
	figure   string
	measured string
	goal     string // empty: reported for context, no goal of its own
	met      string // "yes", "**no**", or "" without a goal
}

type benchReport struct {
	mu         sync.Mutex
	started    time.Time
	took       time.Duration
	loadBefore string
	loadAfter  string
	machine    string
	rows       []benchRow
	notes      []string
	profiles   []string // markdown sections: the profile of each phase whose goal was missed
	bounds     []string // paragraphs that set missed goals beside the figures that bound them
	profileDir string
}

func newBenchReport(t *testing.T) *benchReport {
	dir := os.Getenv("BENCH_PROFILE_DIR")
	if dir == "" {
		dir = filepath.Join(benchRepoRoot(t), "bin", "bench-profiles")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &benchReport{
		started:    time.Now(),
		loadBefore: benchLoad(),
		machine:    benchMachine(t),
		profileDir: dir,
	}
}

func (r *benchReport) add(section, figure, measured, goal string, met *bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	row := benchRow{section: section, figure: figure, measured: measured, goal: goal}
	if met != nil {
		row.met = "yes"
		if !*met {
			row.met = "**no**"
		}
	}
	r.rows = append(r.rows, row)
}

// judge adds a figure with a goal and returns whether it was met; with BENCH_PROFILE_ALL=1 it
// returns false, so that what bounds each figure is reported whether met or not.
func (r *benchReport) judge(section, figure, measured, goal string, met bool) bool {
	r.add(section, figure, measured, goal, &met)
	return met && os.Getenv("BENCH_PROFILE_ALL") != "1"
}

func (r *benchReport) info(section, figure, measured string) {
	r.add(section, figure, measured, "", nil)
}

func (r *benchReport) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// bound puts a paragraph that explains a missed goal, from the figures, at the head of "What
// bounds the goals missed".
func (r *benchReport) bound(text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bounds = append(r.bounds, text)
}

// missed puts what bounds a missed goal into the report: the top of a CPU profile, or for the
// database, the plan.
func (r *benchReport) missed(title, body string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.profiles = append(r.profiles, fmt.Sprintf("### %s\n\n```\n%s\n```\n", title, strings.TrimRight(body, "\n")))
}

func (r *benchReport) finish() {
	r.took = time.Since(r.started).Round(time.Second)
	r.loadAfter = benchLoad()
}

func (r *benchReport) markdown() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("What the worker costs per request (CPU, database round trips, memory) and how that cost grows\n")
	b.WriteString("with the table, each figure beside its goal (issue #6). Written by `make bench`\n")
	b.WriteString("(`cmd/erasure-worker/bench_test.go`), a benchmark rather than a timed test: it fails on no\n")
	b.WriteString("figure. The figures move with the machine and its load: compare runs on one quiet machine.\n\n")
	fmt.Fprintf(&b, "- command: `make bench` (`go test -tags bench -run '^TestBench$' ./cmd/erasure-worker`), took %v\n", r.took)
	fmt.Fprintf(&b, "- machine: %s\n", r.machine)
	fmt.Fprintf(&b, "- date: %s\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- load average (1, 5, 15 min): %s at the start, %s at the end\n\n", r.loadBefore, r.loadAfter)
	b.WriteString("| # | figure | measured | goal | met |\n| --- | --- | ---: | --- | --- |\n")
	for _, row := range r.rows {
		goal := row.goal
		if goal == "" {
			goal = "—"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", row.section, row.figure, row.measured, goal, row.met)
	}
	if len(r.notes) > 0 {
		b.WriteString("\n## How each figure is taken\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	if len(r.profiles)+len(r.bounds) > 0 {
		b.WriteString("\n## What bounds the goals missed\n\n")
		for _, p := range r.bounds {
			b.WriteString(p + "\n")
		}
		for _, p := range r.profiles {
			b.WriteString(p + "\n")
		}
	}
	return b.String()
}

// benchProfile runs the CPU profiler until the returned function is called, which returns the
// profile's path.
func (r *benchReport) profile(t *testing.T, name string) func() string {
	t.Helper()
	path := filepath.Join(r.profileDir, name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() string {
		once.Do(func() {
			pprof.StopCPUProfile()
			f.Close()
		})
		return path
	}
	t.Cleanup(func() { stop() })
	return stop
}

// pprofTop is `go tool pprof -top -nodecount=15` of a profile, and the same by cumulative time
// (which names the callers that the flat list leaves as bare syscalls).
func pprofTop(path string, extra ...string) string {
	var b strings.Builder
	for i, view := range [][]string{{"-top", "-nodecount=15"}, {"-top", "-cum", "-nodecount=25"}} {
		args := append(append(append([]string{"tool", "pprof"}, view...), extra...), path)
		out, err := exec.Command("go", args...).CombinedOutput()
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "go %s\n", strings.Join(append(args[:len(args)-1], filepath.Base(path)), " "))
		if err != nil {
			fmt.Fprintf(&b, "%v\n%s", err, out)
			continue
		}
		for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			// The header lines that name the test binary, the file and the time say nothing here.
			if strings.HasPrefix(line, "File: ") || strings.HasPrefix(line, "Build ID: ") || strings.HasPrefix(line, "Time: ") {
				continue
			}
			if i > 0 && (strings.HasPrefix(line, "Type: ") || strings.HasPrefix(line, "Duration: ")) {
				continue
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func benchRepoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return dir
}

// benchMachine names the machine: cores, CPU model, memory, PostgreSQL and Go versions.
func benchMachine(t *testing.T) string {
	mem := ""
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var kb int64
			if n, _ := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); n == 1 {
				mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
			}
		}
		f.Close()
	}
	pg := "PostgreSQL (version unknown)"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, queuetest.ServerURL()); err == nil {
		var v string
		if conn.QueryRow(ctx, "SHOW server_version").Scan(&v) == nil {
			pg = "PostgreSQL " + strings.Fields(v)[0]
		}
		conn.Close(ctx)
	} else {
		t.Logf("server version: %v", err)
	}
	return fmt.Sprintf("%s%s, %s, %s %s/%s", machine(), mem, pg, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func benchLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}
