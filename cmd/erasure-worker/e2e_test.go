package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// These tests run the built binaries as real processes: knotfake, then erasure-worker's
// migrate, enqueue and run, the way an operator would.

var (
	// raceBinaries builds the binaries under test with the race detector; benchmarks turn it
	// off to measure the real thing.
	raceBinaries = true

	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds erasure-worker and knotfake once per test process.
func binaries(t *testing.T) (worker, fake string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "erasure-e2e-bin-")
		if buildErr != nil {
			return
		}
		args := []string{"build", "-o", binDir + string(os.PathSeparator)}
		if raceBinaries {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "github.com/erasure-worker/erasure-worker/cmd/...")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "erasure-worker"), filepath.Join(binDir, "knotfake")
}

func cleanupBinaries() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// process is a running binary whose output is kept for the test log.
type process struct {
	cmd         *exec.Cmd
	out         *syncBuffer
	done        chan struct{} // closed once the process has exited and been waited for
	stdoutLines <-chan string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, name string, env []string, bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	return startCmd(t, name, cmd)
}

// startCmd starts cmd, collecting its output, and kills it at the end of the test if it is
// still running.
func startCmd(t *testing.T, name string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.out
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.out.Write([]byte(sc.Text() + "\n"))
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		_ = p.cmd.Wait() // the exit status is in ProcessState, safe to read once done is closed
		close(p.done)
	}()
	p.stdoutLines = lines
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit code and how long the process took to exit.
func (p *process) stop(t *testing.T, within time.Duration) (int, time.Duration) {
	t.Helper()
	began := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("process did not exit within %v of SIGTERM", within)
	}
	return p.cmd.ProcessState.ExitCode(), time.Since(began)
}

// startFake starts knotfake on a free port and returns its base URL.
func startFake(t *testing.T, fakeBin string, args ...string) (*process, string) {
	t.Helper()
	env := []string{"KNOT_CLIENT_ID=e2e-client", "KNOT_SECRET=e2e-secret"}
	p := start(t, "knotfake", env, fakeBin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	select {
	case line := <-p.stdoutLines:
		url, ok := strings.CutPrefix(line, "knotfake listening on ")
		if !ok {
			t.Fatalf("knotfake said %q", line)
		}
		return p, url
	case <-time.After(20 * time.Second):
		t.Fatal("knotfake did not start")
	}
	return nil, ""
}

func fakeStats(t *testing.T, url string) knotfake.Stats {
	t.Helper()
	resp, err := http.Get(url + "/_fake/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st knotfake.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// cli runs erasure-worker to completion.
func cli(t *testing.T, bin string, env []string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = exitErr.ExitCode()
	}
	return out.String(), errOut.String(), code
}

// handedOut is every address freeAddr returned in this test process.
var handedOut sync.Map

// freeAddr returns a loopback address that was free a moment ago and that it never returned
// before: the kernel may give a port just closed to the next listener, and two settings of one
// worker (LISTEN_ADDR, API_LISTEN_ADDR) then collide.
func freeAddr(t *testing.T) string {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, dup := handedOut.LoadOrStore(addr, true); !dup {
			return addr
		}
	}
}

type e2e struct {
	workerBin string
	fakeURL   string
	dbURL     string
	env       []string
}

// setupE2E starts knotfake with args, migrates an empty database with the binary and enqueues
// n requests through it.
func setupE2E(t *testing.T, n int, fakeArgs ...string) *e2e {
	t.Helper()
	workerBin, fakeBin := binaries(t)
	_, fakeURL := startFake(t, fakeBin, fakeArgs...)
	e := &e2e{workerBin: workerBin, fakeURL: fakeURL, dbURL: queuetest.EmptyURL(t)}
	e.env = []string{"DATABASE_URL=" + e.dbURL, "KNOT_BASE_URL=" + fakeURL, "KNOT_CLIENT_ID=e2e-client", "KNOT_SECRET=e2e-secret",
		"IDENTIFIER_KEY_FILE=" + identifierKeyFile(t), "LOG_FORMAT=json", "PATH=" + os.Getenv("PATH")}

	out, errOut, code := cli(t, workerBin, e.env, "", "migrate")
	if code != 0 || !strings.Contains(out, "schema migrated from version 0 to") {
		t.Fatalf("migrate: exit %d: %s %s", code, out, errOut)
	}
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"request_ref":"e2e-%d","external_user_id":"person-%d"}`+"\n", i, i)
	}
	out, errOut, code = cli(t, workerBin, e.env, in.String(), "enqueue")
	if code != 0 || out != fmt.Sprintf("inserted %d, duplicate 0, rejected 0\n", n) {
		t.Fatalf("enqueue: exit %d: %s %s", code, out, errOut)
	}
	return e
}

// identifierKeyFile writes a key file for IDENTIFIER_KEY_FILE, which `run` needs while
// IDENTIFIER_RETENTION is on (its default), and returns its path.
func identifierKeyFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "identifier-keys")
	if err := os.WriteFile(path, []byte("e2e-identifier-key-0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (e *e2e) startWorker(t *testing.T, extra ...string) (*process, string) {
	t.Helper()
	addr := freeAddr(t)
	env := append(append([]string{}, e.env...), "LISTEN_ADDR="+addr)
	return start(t, "erasure-worker run", append(env, extra...), e.workerBin, "run"), addr
}

func (e *e2e) conn(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func (e *e2e) counts(t *testing.T) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	conn := e.conn(t)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT status || coalesce('/' || outcome, ''), count(*) FROM erasure_requests GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	m, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct {
		k string
		n int64
	}, error) {
		var v struct {
			k string
			n int64
		}
		return v, r.Scan(&v.k, &v.n)
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, v := range m {
		out[v.k] = v.n
	}
	return out
}

// waitDrained waits until nothing is pending or running and returns the final counts; if the
// wait times out, the last counts are logged beside the failure.
func (e *e2e) waitDrained(t *testing.T, within time.Duration) map[string]int64 {
	t.Helper()
	var c map[string]int64
	drained := false
	defer func() {
		if !drained { // WaitFor gave up (t.Fatalf runs deferred calls)
			t.Logf("counts when the wait gave up: %v", c)
		}
	}()
	queuetest.WaitFor(t, within, "the queue to drain", func() bool {
		c = e.counts(t)
		return c["pending"]+c["running"] == 0
	})
	drained = true
	return c
}

// The first promise: a worker against a Knot that fails 5% of calls finishes every
// request, and its table agrees with what Knot saw.
func TestEndToEndThousandsOfRequestsAgainstAFlakyKnot(t *testing.T) {
	t.Parallel()
	const n = 3000
	e := setupE2E(t, n, "-error-rate", "0.05", "-missing", "0.1")
	w, addr := e.startWorker(t, "RATE_LIMIT_RPS=2000", "RATE_LIMIT_BURST=50", "CONCURRENCY=16",
		"RETRY_MIN_BACKOFF=100ms", "RETRY_MAX_BACKOFF=1s", "POLL_INTERVAL=200ms")
	c := e.waitDrained(t, 3*time.Minute)

	st := fakeStats(t, e.fakeURL)
	if c["failed"] != 0 || c["succeeded/deleted"]+c["succeeded/not_found"] != n {
		t.Errorf("final states %v: want all %d succeeded", c, n)
	}
	if c["succeeded/deleted"] != st.Deleted || c["succeeded/not_found"] != st.NotFound+st.DuplicateDeletes {
		t.Errorf("table deleted %d / not_found %d; fake deleted %d / not found %d + duplicates %d",
			c["succeeded/deleted"], c["succeeded/not_found"], st.Deleted, st.NotFound, st.DuplicateDeletes)
	}
	if st.ByStatus["500"] == 0 || st.NotFound == 0 {
		t.Errorf("fake answered %d 500s and %d not-founds: the test proves nothing", st.ByStatus["500"], st.NotFound)
	}
	if st.BadCredentials != 0 || st.InvalidRequests != 0 {
		t.Errorf("fake saw %d calls with bad credentials and %d with an empty or invalid id", st.BadCredentials, st.InvalidRequests)
	}

	// The metrics endpoint serves the contract's names; probes answer.
	body := httpGet(t, "http://"+addr+"/metrics")
	for _, name := range []string{"erasure_requests_completed_total{outcome=\"deleted\"}", "erasure_knot_requests_total{code=\"500\"}",
		"erasure_knot_request_duration_seconds_bucket", "erasure_queue_depth{status=\"pending\"}", "erasure_oldest_pending_age_seconds",
		"erasure_overdue_requests", "erasure_worker_paused 0", "erasure_rate_limit_wait_seconds_bucket", "erasure_inflight_requests",
		"go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if strings.Contains(body, "person-") {
		t.Error("/metrics holds an external_user_id")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if got := httpGet(t, "http://"+addr+path); !strings.HasPrefix(got, "ok") {
			t.Errorf("%s: %q", path, got)
		}
	}
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
	if strings.Contains(w.out.String(), "person-") || strings.Contains(w.out.String(), "e2e-secret") {
		t.Error("the worker's log holds an external_user_id or the secret")
	}
}

// With RATE_LIMIT_RPS=50 no second at Knot holds more than 50 plus the burst; SIGTERM mid-run
// exits 0 within the shutdown timeout and leaves nothing running.
func TestEndToEndRateLimitAndSigterm(t *testing.T) {
	t.Parallel()
	const n, rps, burst = 2000, 50, 5
	e := setupE2E(t, n, "-latency", "20ms")
	w, _ := e.startWorker(t, fmt.Sprintf("RATE_LIMIT_RPS=%d", rps), fmt.Sprintf("RATE_LIMIT_BURST=%d", burst),
		"CONCURRENCY=8", "SHUTDOWN_TIMEOUT=10s")
	// SIGTERM mid-run: once a hundred calls (two seconds at the limit) have reached Knot,
	// however long a busy machine takes to get there.
	queuetest.WaitFor(t, time.Minute, "a hundred calls at Knot", func() bool { return fakeStats(t, e.fakeURL).Calls >= 100 })

	code, took := w.stop(t, 20*time.Second)
	if code != 0 || took > 10*time.Second {
		t.Errorf("SIGTERM: exit %d after %v, want 0 within the 10s shutdown timeout", code, took)
	}
	c := e.counts(t)
	if c["running"] != 0 {
		t.Errorf("%d requests left running after SIGTERM", c["running"])
	}
	st := fakeStats(t, e.fakeURL)
	if st.BusiestSecond > rps+burst {
		t.Errorf("busiest second at Knot held %d calls; the limit is %d plus a burst of %d", st.BusiestSecond, rps, burst)
	}
	done := c["succeeded/deleted"] + c["succeeded/not_found"]
	if done != st.Deleted+st.NotFound || c["pending"] != n-done {
		t.Errorf("after SIGTERM: table %v; fake deleted %d, not found %d", c, st.Deleted, st.NotFound)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}
