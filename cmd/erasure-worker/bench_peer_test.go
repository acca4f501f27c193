//go:build bench

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// benchPeerRuns is how many times each peer runs, alternating (ours, River, ours, ...).
const benchPeerRuns = 3

// benchPeerOursCPU is section 9's median CPU per request of erasure-worker (seconds), for
// section 10 to set beside the floor; zero when section 9 did not run.
var benchPeerOursCPU, benchPeerRiverCPU float64

// benchPeerFigures are the rest of section 9's medians that section 10 sets beside the floor:
// requests per second from start, and CPU per request (seconds) of each process and machine-wide.
var benchPeerFigures struct {
	oursRate, riverRate       float64
	oursMachine, riverMachine float64
	oursParts                 map[string]float64
}

// benchPeerRun is one peer's run over the backlog.
type benchPeerRun struct {
	took      time.Duration // from process start (ours) or Client.Start (River) to the last completion
	fromFirst time.Duration // from the first call Knot saw to the last completion
	firstCall time.Duration // from start to the first call Knot saw
	// serving and starting are when the process logged that it serves /metrics (its pool is
	// open) and that the worker starts (the schema is checked); ours only.
	serving, starting time.Duration
	cpu               benchCPU
}

func (p benchPeerRun) rate() float64          { return benchBacklog / p.took.Seconds() }
func (p benchPeerRun) rateFromFirst() float64 { return benchBacklog / p.fromFirst.Seconds() }

func (p benchPeerRun) String() string {
	return fmt.Sprintf("%.0f/s (%.0f/s from the first call at %v), %s", p.rate(), p.rateFromFirst(),
		p.firstCall.Round(time.Millisecond), p.cpu.perRequest(benchBacklog))
}

// 9. The peer: the same job on River, the same backlog, fake and machine, one process each.
func benchPeer(t *testing.T, r *benchReport) {
	workerBin := binary(t, "erasure-worker")
	riverBin := benchBuildRiverPeer(t)
	fake, fakeURL := startKnotfake(t, "-missing", "0")
	fakePid := fake.cmd.Process.Pid

	var ours, rivers []benchPeerRun
	for i := range benchPeerRuns {
		o := benchPeerOurs(t, fakeURL, fakePid)
		t.Logf("run %d, erasure-worker: %s", i+1, o)
		ours = append(ours, o)
		rv := benchPeerRiver(t, riverBin, fakeURL, fakePid, "")
		t.Logf("run %d, River: %s", i+1, rv)
		rivers = append(rivers, rv)
	}

	med := func(runs []benchPeerRun, f func(benchPeerRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, p := range runs {
			v[i] = f(p)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	rate := func(p benchPeerRun) float64 { return p.rate() }
	rateFirst := func(p benchPeerRun) float64 { return p.rateFromFirst() }
	cpu := func(p benchPeerRun) float64 { return p.cpu.total() / benchBacklog }
	machine := func(p benchPeerRun) float64 { return p.cpu.machine / benchBacklog }
	first := func(p benchPeerRun) float64 { return p.firstCall.Seconds() }
	part := func(name string) func(benchPeerRun) float64 {
		return func(p benchPeerRun) float64 { return p.cpu.parts[name] / benchBacklog }
	}
	benchPeerOursCPU, benchPeerRiverCPU = med(ours, cpu), med(rivers, cpu)
	benchPeerFigures.oursRate, benchPeerFigures.riverRate = med(ours, rate), med(rivers, rate)
	benchPeerFigures.oursMachine, benchPeerFigures.riverMachine = med(ours, machine), med(rivers, machine)
	benchPeerFigures.oursParts = map[string]float64{
		"worker": med(ours, part("worker")), "postgres": med(ours, part("postgres")), "knotfake": med(ours, part("knotfake")),
	}

	r.info("9", fmt.Sprintf("erasure-worker run, CONCURRENCY=100: requests/s from process start (from the first call), median of %d", benchPeerRuns),
		fmt.Sprintf("%.0f/s (%.0f/s)", med(ours, rate), med(ours, rateFirst)))
	r.info("9", fmt.Sprintf("River v0.51.2, MaxWorkers=100: jobs/s from Client.Start (from the first call), median of %d", benchPeerRuns),
		fmt.Sprintf("%.0f/s (%.0f/s)", med(rivers, rate), med(rivers, rateFirst)))
	ratio := med(ours, rate) / med(rivers, rate)
	rateMet := r.judge("9", "throughput erasure-worker / River (medians, timed from start)", fmt.Sprintf("%.2f", ratio), "≥ 1.5", ratio >= 1.5)
	r.info("9", "throughput erasure-worker / River (medians, timed from the first call)", fmt.Sprintf("%.2f", med(ours, rateFirst)/med(rivers, rateFirst)))

	r.info("9", "CPU per request, erasure-worker: worker + PostgreSQL + knotfake (median)",
		fmt.Sprintf("%s (worker %s, PostgreSQL %s, knotfake %s)", benchMicros(med(ours, cpu)),
			benchMicros(med(ours, part("worker"))), benchMicros(med(ours, part("postgres"))), benchMicros(med(ours, part("knotfake")))))
	r.info("9", "CPU per request, River: riverpeer + PostgreSQL + knotfake (median)",
		fmt.Sprintf("%s (riverpeer %s, PostgreSQL %s, knotfake %s)", benchMicros(med(rivers, cpu)),
			benchMicros(med(rivers, part("riverpeer"))), benchMicros(med(rivers, part("postgres"))), benchMicros(med(rivers, part("knotfake")))))
	cpuRatio := med(ours, cpu) / med(rivers, cpu)
	cpuMet := r.judge("9", "CPU per request erasure-worker / River (medians)", fmt.Sprintf("%.2f", cpuRatio), "≤ 0.6", cpuRatio <= 0.6)
	r.info("9", "machine-wide busy CPU per request (/proc/stat), erasure-worker; River; ratio",
		fmt.Sprintf("%s; %s; %.2f", benchMicros(med(ours, machine)), benchMicros(med(rivers, machine)), med(ours, machine)/med(rivers, machine)))
	firstMs := med(ours, first) * 1000
	firstMet := r.judge("9", "first call after start, erasure-worker run, a lone replica (median)", fmt.Sprintf("%.0f ms", firstMs), "≤ 100 ms", firstMs <= 100)
	ms := func(f func(benchPeerRun) time.Duration) float64 {
		return med(ours, func(p benchPeerRun) float64 { return f(p).Seconds() }) * 1000
	}
	servingMs := ms(func(p benchPeerRun) time.Duration { return p.serving })
	startingMs := ms(func(p benchPeerRun) time.Duration { return p.starting })
	execFloor, connFloor := benchStartFloor(t, workerBin, queuetest.URL(t))
	r.info("9", "the first call's path, erasure-worker (medians): pool open and serving; schema checked, worker starting; first call",
		fmt.Sprintf("%.0f ms; %.0f ms; %.0f ms (floors: starting the binary %.0f ms, a new PostgreSQL connection %.0f ms)",
			servingMs, startingMs, firstMs, float64(execFloor.Microseconds())/1000, float64(connFloor.Microseconds())/1000))
	if !firstMet {
		r.bound(fmt.Sprintf("### 9. The first call\n\n"+
			"- erasure-worker's first call is timed from the process's start: of its %.0f ms, %.0f ms go before it serves "+
			"/metrics (starting the binary, whose floor here is %.0f ms for `erasure-worker --version`: fork, exec, the Go "+
			"runtime and every package's init; then opening the pool, whose floor is a new PostgreSQL connection, %.0f ms), "+
			"%.0f ms to check the schema, and %.0f ms from the worker's start to the call: the first heartbeat, the first "+
			"claim and the first take from the shared bucket, one after the other (no call may go before the bucket's row "+
			"exists), over a backlog inserted just before the start, which PostgreSQL has no statistics for yet: it plans the "+
			"claim as a bitmap scan and a sort of every pending row instead of reading the claim index in order. River's %.0f ms is timed from Client.Start, in a process "+
			"already started, whose pool is already open and whose jobs were just inserted: its figure holds none of the "+
			"first %.0f ms.\n",
			firstMs, servingMs, float64(execFloor.Microseconds())/1000, float64(connFloor.Microseconds())/1000,
			startingMs-servingMs, firstMs-startingMs, med(rivers, first)*1000, servingMs))
	}
	r.info("9", "first call after Client.Start, River (median)", fmt.Sprintf("%.0f ms", med(rivers, first)*1000))

	var each []string
	for i := range ours {
		each = append(each, fmt.Sprintf("run %d: erasure-worker %s; River %s", i+1, ours[i], rivers[i]))
	}
	r.note("**9.** The same %d requests for each peer, each in a fresh database on the same server, the same knotfake "+
		"process (`-missing 0`, no latency, no faults; its stats reset before each run), %d runs alternating erasure-worker "+
		"and River. erasure-worker: `bin/erasure-worker run` as a process, CONCURRENCY=100, RATE_LIMIT_RPS=%g, "+
		"RATE_LIMIT_BURST=%g, the backlog inserted (one INSERT … SELECT) before the process starts, timed from its start "+
		"until its completed counter (scraped every 50 ms) reaches the backlog. River: `bench/riverpeer` (River v0.51.2 "+
		"with riverpgxv5, MaxWorkers=100 on one queue, FetchCooldown 1ms, River's minimum, since its documented default "+
		"of 100ms caps 100 workers at 1,000 jobs/s; everything else default), which migrates River's schema and inserts "+
		"the jobs with InsertManyFast before it is timed, from just before Client.Start to its last JobCompleted event. "+
		"Both make the same knotclient call and keep its evidence (ours a row in erasure_attempts, River's "+
		"river.RecordOutput into the job's metadata). CPU is utime+stime from /proc of the worker or riverpeer, of "+
		"knotfake and of every process of the PostgreSQL server (client backends of other databases left out), sampled "+
		"every 20 ms so that processes that exit meanwhile keep their share, from just before the start to the last "+
		"completion; machine-wide busy time is /proc/stat's non-idle, non-iowait time over the same span and includes "+
		"whatever else the machine ran. First call: knotfake's first_call less the start. Each run: %s.",
		benchBacklog, benchPeerRuns, benchNoLimitRPS, float64(benchNoLimitBurst), strings.Join(each, "; "))

	if rateMet && cpuMet && os.Getenv("BENCH_PROFILE_ALL") != "1" {
		return
	}
	// Where the time goes: the worker in this process under the profiler (the binary serves no
	// profiles), River's peer with its -cpuprofile, and the plans of our claim and finish.
	d := benchDrainRun(t, r, "9-erasure-worker-in-process", benchBacklog, benchKnotClient(t, fakeURL), 100)
	rivProfile := filepath.Join(r.profileDir, "9-riverpeer.pprof")
	rv := benchPeerRiver(t, riverBin, fakeURL, fakePid, rivProfile)
	r.missed(fmt.Sprintf("9. erasure-worker against River: the worker in the test process (worker.Run, CONCURRENCY=100, %.0f/s), CPU profile", d.rate()),
		pprofTop(d.profile))
	r.missed(fmt.Sprintf("9. erasure-worker against River: riverpeer -cpuprofile (%.0f/s, %s)", rv.rate(), rv.cpu.perRequest(benchBacklog)),
		pprofTop(rivProfile))
	r.missed("9. erasure-worker against River: the plans of one claim and one finish of 100 over a backlog of 30,000 (auto_explain, ANALYZE, BUFFERS)",
		benchClaimFinishPlans(t))
}

// benchBuildRiverPeer builds bench/riverpeer, a module of its own, beside the other binaries.
func benchBuildRiverPeer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(filepath.Dir(binary(t, "erasure-worker")), "riverpeer")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command("go", "-C", filepath.Join(benchRepoRoot(t), "bench", "riverpeer"), "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build bench/riverpeer: %v\n%s", err, out)
	}
	return bin
}

// benchPeerOurs runs `erasure-worker run` over a fresh backlog until every request is finished.
func benchPeerOurs(t *testing.T, fakeURL string, fakePid int) benchPeerRun {
	t.Helper()
	dbURL := queuetest.URL(t)
	benchInsertPending(t, dbURL, "peer", 1, benchBacklog)
	resetFake(t, fakeURL)
	rg := newRig(t, withDB(dbURL), withKnot(fakeURL), withoutMigrate(), withoutRetention())

	procs := benchProcsBegin(t, queuetest.ServerURL(), benchDBName(t, dbURL), map[string]int{"knotfake": fakePid})
	began := time.Now()
	p := rg.spawnWorker(t, "erasure-worker run", "CONCURRENCY=100",
		"RATE_LIMIT_RPS="+fmt.Sprint(benchNoLimitRPS), "RATE_LIMIT_BURST="+fmt.Sprint(benchNoLimitBurst))
	procs.add("worker", p.cmd.Process.Pid)
	stopSampling := procs.sample()
	deadline := time.Now().Add(3 * time.Minute)
	var end time.Time
	for {
		time.Sleep(50 * time.Millisecond)
		n, err := benchScrapeSum("http://"+p.addr+"/metrics", "erasure_requests_completed_total")
		if err == nil && n >= benchBacklog {
			end = time.Now()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("erasure-worker: %v of %d finished after 3 minutes (%v)", n, benchBacklog, err)
		}
	}
	stopSampling()
	cpu := procs.end()
	if code, _ := p.stop(t, 30*time.Second); code != 0 {
		t.Errorf("erasure-worker exited %d", code)
	}
	conn := connect(t, dbURL)
	var succeeded, attempts int
	if err := conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'),
       (SELECT count(*) FROM erasure_attempts)`).Scan(&succeeded, &attempts); err != nil {
		t.Fatal(err)
	}
	if succeeded != benchBacklog || attempts < benchBacklog {
		t.Errorf("erasure-worker: %d of %d succeeded, %d attempts recorded", succeeded, benchBacklog, attempts)
	}
	st := fakeStats(t, fakeURL)
	run := benchPeerRun{took: end.Sub(began), fromFirst: end.Sub(st.FirstCall), firstCall: st.FirstCall.Sub(began), cpu: cpu}
	run.serving = benchLogTime(p.out.String(), "serving /metrics").Sub(began)
	run.starting = benchLogTime(p.out.String(), "worker starting").Sub(began)
	return run
}

// benchLogTime is the time of the first JSON log line whose msg starts with msg.
func benchLogTime(logs, msg string) time.Time {
	for _, line := range strings.Split(logs, "\n") {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && strings.HasPrefix(l.Msg, msg) {
			return l.Time
		}
	}
	return time.Time{}
}

// benchStartFloor is what starting any process of the binary costs, and what a new PostgreSQL
// connection costs, on this machine now: the medians of 5 runs of `erasure-worker --version`
// (fork, exec, the Go runtime and every package's init, exit) and of 5 connections with one
// query.
func benchStartFloor(t *testing.T, workerBin, dbURL string) (execFloor, connectFloor time.Duration) {
	t.Helper()
	var execs, conns []time.Duration
	for range 5 {
		began := time.Now()
		if out, err := exec.Command(workerBin, "--version").CombinedOutput(); err != nil {
			t.Fatalf("%s --version: %v %s", workerBin, err, out)
		}
		execs = append(execs, time.Since(began))
		began = time.Now()
		conn := connect(t, dbURL)
		var one int
		if err := conn.QueryRow(context.Background(), `SELECT 1`).Scan(&one); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, time.Since(began))
		conn.Close(context.Background())
	}
	slices.Sort(execs)
	slices.Sort(conns)
	return execs[2], conns[2]
}

// benchPeerRiver runs bench/riverpeer over a fresh database; with profile set, under its CPU
// profiler.
func benchPeerRiver(t *testing.T, riverBin, fakeURL string, fakePid int, profile string) benchPeerRun {
	t.Helper()
	dbURL := queuetest.EmptyURL(t)
	resetFake(t, fakeURL)
	env := []string{"DATABASE_URL=" + dbURL, "KNOT_BASE_URL=" + fakeURL, "KNOT_CLIENT_ID=e2e-client", "KNOT_SECRET=e2e-secret",
		"PATH=" + os.Getenv("PATH")}
	args := []string{"-jobs", strconv.Itoa(benchBacklog), "-wait"}
	if profile != "" {
		args = append(args, "-cpuprofile", profile)
	}
	p, stdin := benchStartPiped(t, "riverpeer", env, riverBin, args...)
	benchWaitLine(t, p, `{"ready":true}`, 3*time.Minute)

	procs := benchProcsBegin(t, queuetest.ServerURL(), benchDBName(t, dbURL), map[string]int{"knotfake": fakePid, "riverpeer": p.cmd.Process.Pid})
	stopSampling := procs.sample()
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	line := benchWaitLine(t, p, `{"jobs":`, 3*time.Minute)
	stopSampling()
	cpu := procs.end()
	stdin.Close()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("riverpeer did not exit within 30s of its stdin closing")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("riverpeer exited %d:\n%s", code, p.out.String())
	}
	var res struct {
		Jobs       int   `json:"jobs"`
		StartedAt  int64 `json:"started_at_unix_nano"`
		FinishedAt int64 `json:"finished_at_unix_nano"`
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		t.Fatalf("riverpeer said %q: %v", line, err)
	}
	conn := connect(t, dbURL)
	var completed int
	if err := conn.QueryRow(context.Background(),
		`SELECT count(*) FROM river_job WHERE state = 'completed' AND metadata->'output'->>'http_status' = '200'`).Scan(&completed); err != nil {
		t.Fatal(err)
	}
	if completed != benchBacklog {
		t.Errorf("River: %d of %d jobs completed with their evidence", completed, benchBacklog)
	}
	started, finished := time.Unix(0, res.StartedAt), time.Unix(0, res.FinishedAt)
	st := fakeStats(t, fakeURL)
	return benchPeerRun{took: finished.Sub(started), fromFirst: finished.Sub(st.FirstCall), firstCall: st.FirstCall.Sub(started), cpu: cpu}
}

// benchStartPiped is start with a pipe to the process's standard input. At the end of the
// test the pipe is closed, and the process has ten seconds to exit by itself before it is killed.
func benchStartPiped(t *testing.T, name string, env []string, bin string, args ...string) (*process, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := startCmd(t, name, cmd)
	t.Cleanup(func() { // runs before startCmd's, which kills what is still running
		stdin.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	})
	return p, stdin
}

// benchWaitLine waits for a line of standard output that starts with prefix.
func benchWaitLine(t *testing.T, p *process, prefix string, within time.Duration) string {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case line, ok := <-p.stdoutLines:
			if !ok {
				t.Fatalf("exited before printing %s:\n%s", prefix, p.out.String())
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
		case <-timeout:
			t.Fatalf("no %s within %v:\n%s", prefix, within, p.out.String())
		}
	}
}

// benchScrapeSum sums every sample of a metric family on a /metrics page.
func benchScrapeSum(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	sum, found := 0.0, false
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, err
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("%s not found at %s", name, url)
	}
	return sum, nil
}

// benchClaimFinishPlans is the plan of one claim and one finish of 100 requests, the queue's
// own statements over a backlog, as auto_explain reports them to the session (ANALYZE, BUFFERS).
func benchClaimFinishPlans(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	dbURL := queuetest.URL(t)
	benchInsertPending(t, dbURL, "plan", 1, benchBacklog)
	// Loading auto_explain takes a superuser: the server's, on the test database.
	cfg, err := pgxpool.ParseConfig(queuetest.ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Database = benchDBName(t, dbURL)
	cfg.MaxConns = 1
	for k, v := range map[string]string{
		"session_preload_libraries":     "auto_explain",
		"auto_explain.log_min_duration": "0",
		"auto_explain.log_analyze":      "on",
		"auto_explain.log_buffers":      "on",
		"auto_explain.log_level":        "notice",
	} {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	var mu sync.Mutex
	var plans []string
	cfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		plans = append(plans, n.Message)
		mu.Unlock()
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	q := queue.New(pool)
	// Warm the connection and its prepared statements, as a running worker's are.
	for range 2 {
		mu.Lock()
		plans = nil
		mu.Unlock()
		jobs, err := q.Claim(ctx, "bench-plan", 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		results := make([]queue.Result, len(jobs))
		for i, j := range jobs {
			results[i] = j.Result()
			results[i].Transition, results[i].Outcome = queue.Succeed, "deleted"
			results[i].Calls = []queue.Call{{StartedAt: time.Now(), Duration: time.Millisecond, HTTPStatus: 200, Result: "deleted"}}
		}
		if _, err := q.Finish(ctx, "bench-plan", results); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return benchPlansOnly(plans)
}

// benchPlansOnly keeps the plans of the last claim and finish.
func benchPlansOnly(notices []string) string {
	var out []string
	for _, n := range notices {
		if strings.Contains(n, "plan:") {
			out = append(out, strings.TrimSpace(n))
		}
	}
	return strings.Join(out, "\n\n")
}
