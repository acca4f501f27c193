//go:build bench

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// 10. The floor: what a bare HTTP round trip to knotfake and a bare batched claim and finish
// cost alone, on the same machine, against which section 9's CPU per request is set.
func benchFloor(t *testing.T, r *benchReport) {
	fake, fakeURL := startKnotfake(t, "-missing", "0")

	h := benchFloorHTTP(t, fakeURL, fake.cmd.Process.Pid)
	r.info("10", fmt.Sprintf("(a) bare HTTP round trip: knotclient, 100 goroutines with keep-alive → knotfake, %d calls", benchBacklog),
		fmt.Sprintf("%.0f/s, %s", h.rate, h.cpu.perRequest(benchBacklog)))

	pgbench := benchPgbench(t)
	const clients = 4
	c := benchFloorClaimFinish(t, pgbench, clients, false)
	r.info("10", fmt.Sprintf("(b) bare claim and finish of batches of 100: pgbench, %d clients, %d rows", clients, benchBacklog),
		fmt.Sprintf("%.0f rows/s, %s", c.rate, c.cpu.perRequest(benchBacklog)))
	ce := benchFloorClaimFinish(t, pgbench, clients, true)
	r.info("10", "(b') the same, the finish also inserting one erasure_attempts row per request",
		fmt.Sprintf("%.0f rows/s, %s", ce.rate, ce.cpu.perRequest(benchBacklog)))

	floor := (h.cpu.total() + c.cpu.total()) / benchBacklog
	floorEvidence := (h.cpu.total() + ce.cpu.total()) / benchBacklog
	r.info("10", "floor: (a) + (b) CPU per request; with the evidence, (a) + (b')",
		fmt.Sprintf("%s; %s", benchMicros(floor), benchMicros(floorEvidence)))
	if benchPeerOursCPU > 0 {
		r.info("10", "erasure-worker's CPU per request (section 9) / floor; / floor with evidence",
			fmt.Sprintf("%.2f× (%s); %.2f×", benchPeerOursCPU/floor, benchMicros(benchPeerOursCPU), benchPeerOursCPU/floorEvidence))
		r.info("10", "River's CPU per request (section 9) / floor; / floor with evidence",
			fmt.Sprintf("%.2f× (%s); %.2f×", benchPeerRiverCPU/floor, benchMicros(benchPeerRiverCPU), benchPeerRiverCPU/floorEvidence))
		r.bound(benchPeerBounds(h.cpu, ce.cpu, floorEvidence))
	}
	r.note("**10.** (a) runs in the test process: %d calls of knotclient's DeleteUser (the request both peers send, "+
		"signed the same way) from 100 goroutines over kept-alive connections to a knotfake process of its own (`-missing 0`); "+
		"CPU is the test process's and knotfake's. (b) is pgbench (%s) on a fresh database migrated as the worker's, over "+
		"%d pending rows: each transaction of its script claims 100 pending rows (a CTE with `ORDER BY run_after, id LIMIT 100 "+
		"FOR UPDATE SKIP LOCKED`, then an UPDATE to running with a lease and a claim token, committed) and then finishes "+
		"them (one UPDATE to succeeded of the rows running under that client's lease, committed): the same state changes "+
		"as the worker's claim and finish, in the simplest statements, without the fence on a claim token per row or "+
		"anything else a worker needs; (b') adds the INSERT into erasure_attempts to the finish. CPU is every process of "+
		"the PostgreSQL server (client backends of other databases left out) and pgbench's, from /proc as in section 9; "+
		"rows/s from pgbench's start to its exit.", benchBacklog, pgbench, benchBacklog)
}

type benchFloorRun struct {
	rate float64
	cpu  benchCPU
}

func benchFloorHTTP(t *testing.T, fakeURL string, fakePid int) benchFloorRun {
	t.Helper()
	client := benchKnotClient(t, fakeURL)
	ctx := t.Context()
	if _, err := client.DeleteUser(ctx, "floor-warm-up"); err != nil {
		t.Fatal(err)
	}
	resetFake(t, fakeURL)
	procs := benchProcsBegin(t, "", "", map[string]int{"test process": os.Getpid(), "knotfake": fakePid})
	var next, failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > benchBacklog {
					return
				}
				if _, err := client.DeleteUser(ctx, "floor-"+strconv.FormatInt(i, 10)); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	cpu := procs.end()
	if f := failed.Load(); f > 0 {
		t.Errorf("bare HTTP: %d of %d calls failed", f, benchBacklog)
	}
	return benchFloorRun{rate: benchBacklog / took.Seconds(), cpu: cpu}
}

// benchPgbench finds pgbench on PATH, else beside the server binaries with-postgres found.
func benchPgbench(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	dirs := []string{os.Getenv("PGTEST_BINDIR")}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for _, d := range append(dirs, matches...) {
		if p := filepath.Join(d, "pgbench"); d != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	t.Fatal("no pgbench on PATH, in PGTEST_BINDIR or in /usr/lib/postgresql/*/bin")
	return ""
}

// The bare claim and finish: the simplest statements that make the worker's state changes.
const (
	benchFloorClaim = `WITH picked AS (
    SELECT id FROM erasure_requests
    WHERE status = 'pending' AND run_after <= now()
    ORDER BY run_after, id LIMIT 100
    FOR UPDATE SKIP LOCKED
)
UPDATE erasure_requests r
SET status = 'running', attempts = r.attempts + 1, lease_owner = 'floor-:client_id',
    lease_expires_at = now() + interval '1 minute', claim_token = nextval('erasure_claim_token_seq')
FROM picked WHERE r.id = picked.id;
`
	benchFloorFinish = `UPDATE erasure_requests
SET status = 'succeeded', outcome = 'deleted', completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE status = 'running' AND lease_owner = 'floor-:client_id';
`
	benchFloorFinishEvidence = `WITH finished AS (
    UPDATE erasure_requests
    SET status = 'succeeded', outcome = 'deleted', completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
    WHERE status = 'running' AND lease_owner = 'floor-:client_id'
    RETURNING id, attempts
)
INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, result)
SELECT id, attempts, 'floor-:client_id', now(), 1, 200, 'deleted' FROM finished;
`
)

func benchFloorClaimFinish(t *testing.T, pgbench string, clients int, evidence bool) benchFloorRun {
	t.Helper()
	dbURL := queuetest.URL(t)
	benchInsertPending(t, dbURL, "floor", 1, benchBacklog)
	finish := benchFloorFinish
	if evidence {
		finish = benchFloorFinishEvidence
	}
	// pgbench puts each line of a script in its own statement unless it continues; join them.
	script := filepath.Join(t.TempDir(), "claim-finish.sql")
	body := strings.ReplaceAll(benchFloorClaim, "\n", " ") + "\n" + strings.ReplaceAll(finish, "\n", " ") + "\n"
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	batches := benchBacklog / 100
	if batches%clients != 0 {
		t.Fatalf("%d batches do not divide among %d clients", batches, clients)
	}
	cmd := exec.Command(pgbench, "-n", "-f", script, "-c", strconv.Itoa(clients), "-j", "2", "-t", strconv.Itoa(batches/clients), dbURL)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	procs := benchProcsBegin(t, queuetest.ServerURL(), benchDBName(t, dbURL), nil)
	stopSampling := procs.sample()
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	stopSampling()
	cpu := procs.end()
	if err != nil {
		t.Fatalf("pgbench: %v\n%s", err, out.String())
	}
	cpu.parts["pgbench"] = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	t.Logf("pgbench (evidence %v): %s", evidence, out.String())

	conn := connect(t, dbURL)
	var succeeded int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`).Scan(&succeeded); err != nil {
		t.Fatal(err)
	}
	if succeeded != benchBacklog {
		t.Errorf("pgbench: %d of %d rows succeeded", succeeded, benchBacklog)
	}
	return benchFloorRun{rate: benchBacklog / took.Seconds(), cpu: cpu}
}

// benchCPU is the CPU time (seconds) that a run cost, by process, and the machine's busy time.
type benchCPU struct {
	parts   map[string]float64 // "postgres", "worker", "knotfake", ...
	machine float64
}

func (c benchCPU) total() float64 {
	sum := 0.0
	for _, v := range c.parts {
		sum += v
	}
	return sum
}

func (c benchCPU) perRequest(n int) string {
	var parts []string
	for _, k := range []string{"worker", "riverpeer", "test process", "postgres", "pgbench", "knotfake"} {
		if v, ok := c.parts[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", k, benchMicros(v/float64(n))))
		}
	}
	return fmt.Sprintf("%s CPU per request (%s; machine %s)", benchMicros(c.total()/float64(n)), strings.Join(parts, ", "), benchMicros(c.machine/float64(n)))
}

func benchMicros(seconds float64) string { return fmt.Sprintf("%.0f µs", seconds*1e6) }

// benchClockTick is the unit of /proc's utime and stime: USER_HZ, 100 on every Linux build.
const benchClockTick = 10 * time.Millisecond

// benchProcs follows the CPU time of named processes and of every process of one PostgreSQL
// server, from begin to end. A process that appears meanwhile counts from zero; one that exits
// keeps what the last sample saw of it, so sample runs while processes may come and go.
type benchProcs struct {
	t          *testing.T
	postmaster int    // 0: no server followed
	db         string // client backends of other databases are left out
	mu         sync.Mutex
	named      map[int]string
	base, last map[int]int64 // ticks by pid
	machine0   int64
}

// benchProcsBegin starts following the named processes and, with serverURL set, the server's.
func benchProcsBegin(t *testing.T, serverURL, db string, named map[string]int) *benchProcs {
	t.Helper()
	p := &benchProcs{t: t, db: db, named: map[int]string{}, last: map[int]int64{}}
	if serverURL != "" {
		p.postmaster = benchPostmaster(t, serverURL)
	}
	for name, pid := range named {
		p.named[pid] = name
	}
	p.scan()
	p.base = map[int]int64{}
	for pid, v := range p.last {
		p.base[pid] = v
	}
	p.machine0 = benchMachineBusy(t)
	return p
}

func (p *benchProcs) add(name string, pid int) {
	p.mu.Lock()
	p.named[pid] = name
	p.mu.Unlock()
	p.scan()
}

// sample scans every 20ms until the returned function is called.
func (p *benchProcs) sample() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				p.scan()
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

func (p *benchProcs) scan() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pid := range p.named {
		if v, _, ok := benchTicks(pid); ok {
			p.last[pid] = v
		}
	}
	if p.postmaster == 0 {
		return
	}
	if v, _, ok := benchTicks(p.postmaster); ok {
		p.last[p.postmaster] = v
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		p.t.Errorf("/proc: %v", err)
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		v, ppid, ok := benchTicks(pid)
		if !ok || ppid != p.postmaster {
			continue
		}
		if title, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && benchPostgresInScope(string(title), p.db) {
			p.last[pid] = v
		}
	}
}

// end scans once more and returns what each process cost since begin.
func (p *benchProcs) end() benchCPU {
	p.scan()
	machine := benchMachineBusy(p.t)
	p.mu.Lock()
	defer p.mu.Unlock()
	c := benchCPU{parts: map[string]float64{}, machine: float64(machine-p.machine0) * benchClockTick.Seconds()}
	for pid, v := range p.last {
		name, ok := p.named[pid]
		if !ok {
			name = "postgres"
		}
		c.parts[name] += float64(v-p.base[pid]) * benchClockTick.Seconds()
	}
	return c
}

// benchTicks is a process's utime+stime and its parent, from /proc/PID/stat.
func benchTicks(pid int) (ticks int64, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name, in parentheses, may hold spaces: the fields follow its last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3, state
	if len(f) < 13 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return utime + stime, ppid, true
}

// benchPostgresInScope says whether a server process (by its title, "postgres: [cluster: ]user
// db host(port) state" for a client backend) is one to count: every background process, and
// the backends and autovacuum workers of db.
func benchPostgresInScope(cmdline, db string) bool {
	rest, ok := strings.CutPrefix(strings.ReplaceAll(cmdline, "\x00", " "), "postgres: ")
	if !ok {
		return true
	}
	f := strings.Fields(rest)
	if len(f) > 0 && strings.HasSuffix(f[0], ":") { // cluster_name
		f = f[1:]
	}
	switch {
	case len(f) >= 3 && f[0] == "autovacuum" && f[1] == "worker":
		return f[2] == db
	case len(f) >= 3 && (strings.HasSuffix(f[2], ")") || f[2] == "[local]"):
		return f[1] == db
	}
	return true
}

// benchPostmaster is the pid of the server behind url: the parent of a backend.
func benchPostmaster(t *testing.T, url string) int {
	t.Helper()
	var backend int
	if err := connect(t, url).QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		t.Fatal(err)
	}
	_, ppid, ok := benchTicks(backend)
	if !ok {
		t.Fatalf("backend %d is not in this machine's /proc: the server must run here for CPU figures", backend)
	}
	return ppid
}

// benchMachineBusy is the machine's non-idle, non-iowait time in clock ticks, from /proc/stat.
func benchMachineBusy(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return busy
}

// benchPeerBounds says, from section 9's medians and this run's floor, how far each missed goal
// of section 9 is from what the parts alone cost on this machine.
func benchPeerBounds(http, claimFinish benchCPU, floorEvidence float64) string {
	f := benchPeerFigures
	cores := float64(runtime.NumCPU())
	goalCPU := 0.6 * benchPeerRiverCPU
	goalRate := 1.5 * f.riverRate
	var b strings.Builder
	fmt.Fprintf(&b, "### 9 and 10. What the parts alone cost, set beside the goals\n\n")
	pgOurs, pgBare := f.oursParts["postgres"], claimFinish.parts["postgres"]/benchBacklog
	pg := fmt.Sprintf("PostgreSQL spends %s, less than the bare statements' %s (the worker's batches are larger than pgbench's)", benchMicros(pgOurs), benchMicros(pgBare))
	if pgOurs > pgBare {
		pg = fmt.Sprintf("PostgreSQL spends %s against the bare statements' %s (the fence on each row's claim token, the report CTE, "+
			"five partial indexes kept on every status change: the plans below)", benchMicros(pgOurs), benchMicros(pgBare))
	}
	fmt.Fprintf(&b, "- **CPU per request.** The goal, 0.6 × River's %s, is %s. The floor measured in this run, "+
		"a bare HTTP round trip to knotfake (%s) plus a bare batched claim and finish that keeps the evidence row (%s), "+
		"is %s: %s the goal. erasure-worker spends %s, %.2f× that floor. Its worker process spends %s against the bare "+
		"loop's %s (the profile below: the rate limiter's waits, a goroutine per call, pgx encoding the batches); %s.\n",
		benchMicros(benchPeerRiverCPU), benchMicros(goalCPU),
		benchMicros(http.total()/benchBacklog), benchMicros(claimFinish.total()/benchBacklog), benchMicros(floorEvidence),
		map[bool]string{true: "above", false: "below"}[floorEvidence > goalCPU],
		benchMicros(benchPeerOursCPU), benchPeerOursCPU/floorEvidence,
		benchMicros(f.oursParts["worker"]), benchMicros(http.parts["test process"]/benchBacklog), pg)
	most := cores / f.oursMachine
	fmt.Fprintf(&b, "- **Throughput.** The goal, 1.5 × River's %.0f/s, is %.0f/s. On these %.0f cores, at the %s of "+
		"machine-wide CPU erasure-worker's requests cost (PostgreSQL, knotfake and whatever else the machine ran included), "+
		"the most the machine can finish is %.0f/s; erasure-worker reached %.0f/s, %.0f%% of it. Reaching the goal needs "+
		"at most %s of machine CPU per request, %.2f× what it costs now; the floor's parts alone (%s, machine-wide more) "+
		"leave %s for everything else.\n",
		f.riverRate, goalRate, cores, benchMicros(f.oursMachine), most, f.oursRate, 100*f.oursRate/most,
		benchMicros(cores/goalRate), (cores/goalRate)/f.oursMachine, benchMicros(floorEvidence),
		benchMicros(max(cores/goalRate-floorEvidence, 0)))
	return b.String()
}
