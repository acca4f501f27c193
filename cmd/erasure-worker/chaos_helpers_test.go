//go:build chaos || bench

package main

// The fault suite (`make chaos`): real erasure-worker and knotfake processes against a real
// PostgreSQL, each scenario breaking one thing and then asserting on every row's final state and
// on what the fake saw. It reuses the process harness of e2e_test.go. Run one scenario with
//
//	deploy/local/with-postgres go test -tags chaos -run TestChaosKill9 -v ./cmd/erasure-worker
//
// `make bench` (tag bench) uses the same rig for the figures the fault suite must not judge.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// chaosSecret is what the fake accepts; the worker is given it unless a test says otherwise.
const chaosSecret = "e2e-secret"

// chaosRig is one scenario's world: a database, a fake Knot and the worker binary.
type chaosRig struct {
	workerBin string
	fakeURL   string
	dbURL     string
	env       []string // what every worker process gets
}

// newChaosRig migrates dbURL (a fresh database of the shared test server when empty) with the
// binary and points the workers at fakeURL (a knotfake process started with fakeArgs when
// empty).
func newChaosRig(t *testing.T, dbURL, fakeURL string, fakeArgs ...string) *chaosRig {
	t.Helper()
	workerBin, fakeBin := binaries(t)
	if fakeURL == "" {
		_, fakeURL = startFake(t, fakeBin, fakeArgs...)
	}
	if dbURL == "" {
		dbURL = queuetest.EmptyURL(t)
	}
	r := &chaosRig{workerBin: workerBin, fakeURL: fakeURL, dbURL: dbURL}
	r.env = []string{"DATABASE_URL=" + dbURL, "KNOT_BASE_URL=" + fakeURL, "KNOT_CLIENT_ID=e2e-client",
		"IDENTIFIER_KEY_FILE=" + identifierKeyFile(t), "LOG_FORMAT=json", "PATH=" + os.Getenv("PATH")}
	out, errOut, code := cli(t, workerBin, r.env, "", "migrate")
	if code != 0 {
		t.Fatalf("migrate: exit %d: %s %s", code, out, errOut)
	}
	return r
}

// enqueue adds n requests through the binary: request_ref prefix-i, external_user_id
// prefix-person-i.
func (r *chaosRig) enqueue(t *testing.T, prefix string, n int) {
	t.Helper()
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"request_ref":"%s-%d","external_user_id":"%s-person-%d"}`+"\n", prefix, i, prefix, i)
	}
	out, errOut, code := cli(t, r.workerBin, r.env, in.String(), "enqueue")
	if code != 0 || out != fmt.Sprintf("inserted %d, duplicate 0, rejected 0\n", n) {
		t.Fatalf("enqueue: exit %d: %s %s", code, out, errOut)
	}
}

// chaosWorker is a running `erasure-worker run`.
type chaosWorker struct {
	*process
	addr string // LISTEN_ADDR
	id   string // its lease owner name, from its first log line
}

// startWorker starts `erasure-worker run` with the rig's environment, the secret (unless extra
// sets KNOT_SECRET_FILE) and extra, and waits for its first log line to learn its id.
func (r *chaosRig) startWorker(t *testing.T, name string, extra ...string) *chaosWorker {
	t.Helper()
	addr := freeAddr(t)
	env := append(append([]string{}, r.env...), "LISTEN_ADDR="+addr)
	if !chaosHasSetting(extra, "KNOT_SECRET_FILE") {
		env = append(env, "KNOT_SECRET="+chaosSecret)
	}
	w := &chaosWorker{process: start(t, name, append(env, extra...), r.workerBin, "run"), addr: addr}
	w.id = w.waitLog(t, "worker starting", 30*time.Second)["worker"].(string)
	return w
}

func chaosHasSetting(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// logLines returns the worker's JSON log lines whose msg contains substr.
func (w *chaosWorker) logLines(substr string) []map[string]any {
	var out []map[string]any
	for _, l := range chaosLogMsgs(w.out.String(), substr) {
		var m map[string]any
		_ = json.Unmarshal([]byte(l), &m) // chaosLogMsgs kept only lines that parse
		out = append(out, m)
	}
	return out
}

// chaosLogMsgs returns the JSON log lines of out whose msg contains substr.
func chaosLogMsgs(out, substr string) []string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		if msg, _ := m["msg"].(string); strings.Contains(msg, substr) {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

// waitLog waits for a log line whose msg contains substr and returns it.
func (w *chaosWorker) waitLog(t *testing.T, substr string, within time.Duration) map[string]any {
	t.Helper()
	var line map[string]any
	queuetest.WaitFor(t, within, "log line "+strconv.Quote(substr), func() bool {
		if l := w.logLines(substr); len(l) > 0 {
			line = l[0]
			return true
		}
		select {
		case <-w.done:
			t.Fatalf("worker exited (%v) before logging %q", w.cmd.ProcessState, substr)
		default:
		}
		return false
	})
	return line
}

// metric scrapes /metrics and returns the value of the sample named exactly so (with its
// labels, e.g. `erasure_knot_requests_total{code="429"}`), or 0 when absent.
func (w *chaosWorker) metric(t *testing.T, sample string) float64 {
	t.Helper()
	for _, line := range strings.Split(httpGet(t, "http://"+w.addr+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// probe returns the HTTP status of GET path on the worker's LISTEN_ADDR (0 when it does not
// answer).
func (w *chaosWorker) probe(path string) int {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + w.addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// noPanic fails the test if the worker's output shows a panic or a data race.
func (w *chaosWorker) noPanic(t *testing.T) {
	t.Helper()
	out := w.out.String()
	for _, bad := range []string{"panic", "DATA RACE", "fatal error"} {
		if strings.Contains(out, bad) {
			t.Errorf("worker %s output holds %q", w.id, bad)
		}
	}
}

// db opens a connection to the rig's database for the test's own queries.
func (r *chaosRig) db(t *testing.T) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// counts returns the number of rows by "status" or "status/outcome".
func (r *chaosRig) counts(t *testing.T) map[string]int64 {
	t.Helper()
	return (&e2e{dbURL: r.dbURL}).counts(t)
}

// drained waits until nothing is pending or running and returns the final counts.
func (r *chaosRig) drained(t *testing.T, within time.Duration) map[string]int64 {
	t.Helper()
	return (&e2e{dbURL: r.dbURL}).waitDrained(t, within)
}

// chaosRow is one erasure_requests row as the assertions read it.
type chaosRow struct {
	ID             int64
	RequestRef     string
	ExternalUserID string
	Status         string
	Outcome        string
	Attempts       int
	LastErrorCode  string
	LastError      string
	Calls          int // rows in erasure_attempts
	Successes      int // of them, deleted or not_found
}

func (r *chaosRig) rows(t *testing.T) []chaosRow {
	t.Helper()
	conn := r.db(t)
	rows, err := conn.Query(context.Background(), `
SELECT r.id, r.request_ref, r.external_user_id, r.status, coalesce(r.outcome, ''), r.attempts,
       coalesce(r.last_error_code, ''), coalesce(r.last_error, ''),
       (SELECT count(*) FROM erasure_attempts a WHERE a.request_id = r.id),
       (SELECT count(*) FROM erasure_attempts a WHERE a.request_id = r.id AND a.result IN ('deleted', 'not_found'))
FROM erasure_requests r ORDER BY r.id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (chaosRow, error) {
		var x chaosRow
		err := row.Scan(&x.ID, &x.RequestRef, &x.ExternalUserID, &x.Status, &x.Outcome, &x.Attempts,
			&x.LastErrorCode, &x.LastError, &x.Calls, &x.Successes)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// chaosQueryInt runs a query returning one integer.
func chaosQueryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// chaosAllSucceeded checks that every one of n rows succeeded.
func chaosAllSucceeded(t *testing.T, c map[string]int64, n int64) {
	t.Helper()
	if done := c["succeeded/deleted"] + c["succeeded/not_found"]; done != n || chaosFailed(c) != 0 {
		t.Errorf("final states %v: want all %d succeeded", c, n)
	}
}

// chaosFailed counts the failed rows in counts, whatever their outcome.
func chaosFailed(c map[string]int64) int64 {
	var n int64
	for k, v := range c {
		if strings.HasPrefix(k, "failed") {
			n += v
		}
	}
	return n
}

// chaosExistingUsers counts, of ids, those the fake started with -missing share treats as existing.
func chaosExistingUsers(ids []string, share float64) int64 {
	exists := knotfake.MissingShare(share)
	var n int64
	for _, id := range ids {
		if exists(id) {
			n++
		}
	}
	return n
}

// chaosRowErrors collects what is wrong with single rows and reports how many and the first
// few, so that a break that touches every row does not print thousands of lines.
type chaosRowErrors struct {
	n     int
	first []string
}

func (e *chaosRowErrors) add(format string, args ...any) {
	e.n++
	if len(e.first) < 5 {
		e.first = append(e.first, fmt.Sprintf(format, args...))
	}
}

func (e *chaosRowErrors) report(t *testing.T) {
	t.Helper()
	if e.n > 0 {
		t.Errorf("%d rows are wrong; the first:\n\t%s", e.n, strings.Join(e.first, "\n\t"))
	}
}

// chaosOutage makes every call to the fake answer 500 for d, and returns when that ends.
func chaosOutage(t *testing.T, fakeURL string, d time.Duration) time.Time {
	t.Helper()
	return setFaults(t, fakeURL, `{"outage_for":"`+d.String()+`"}`).OutageUntil
}

// The Knot outage of TestChaosKnotOutage and of section 8 of `make bench`: 300 requests, 10s
// of 500s, backoffs from 1s doubling to 8s. Retry horizon: waits of 1s, 2s, 4s, then 8s, each
// jittered to at least half, over 11 retries: at least 35s, well beyond the outage.
const (
	chaosOutageRequests   = 300
	chaosOutageFor        = 10 * time.Second
	chaosOutageMinBackoff = time.Second
	chaosOutageMaxBackoff = 8 * time.Second
)

// startChaosOutage enqueues the requests (a tenth of them for users Knot does not have), starts
// the outage and then one worker, and returns when the outage ends. The worker has the rate
// limit and the concurrency far above what the requests need, so that only the backoff's
// jitter can spread the retries, and twelve attempts, so that none fails in the outage.
func startChaosOutage(t *testing.T) (*chaosRig, *chaosWorker, time.Time) {
	t.Helper()
	r := newChaosRig(t, "", "", "-missing", "0.1")
	r.enqueue(t, "out", chaosOutageRequests)
	until := chaosOutage(t, r.fakeURL, chaosOutageFor)
	w := r.startWorker(t, "worker", "RATE_LIMIT_RPS=2000", "RATE_LIMIT_BURST=500", "CONCURRENCY=300",
		"QUICK_RETRIES=1", "KNOT_TIMEOUT=1s", "LEASE_DURATION=10s", "RETRY_MIN_BACKOFF="+chaosOutageMinBackoff.String(),
		"RETRY_MAX_BACKOFF="+chaosOutageMaxBackoff.String(), "MAX_ATTEMPTS=12", "POLL_INTERVAL=200ms")
	return r, w, until
}

func chaosPost(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
}

// freeze stops the worker with SIGSTOP, so that what it holds stops changing before kill9; the
// statements it already sent still land.
func (w *chaosWorker) freeze(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
}

// kill9 kills the worker with SIGKILL, as the kernel's OOM killer or a node failure would: no
// shutdown, no release of its claims, no goodbye to the rate limit. It returns once the process
// is gone.
func (w *chaosWorker) kill9(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w.done
}

// holding counts the requests the worker holds claimed (running under its lease).
func (w *chaosWorker) holding(t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'running' AND lease_owner = $1`, w.id)
}

// chaosTakeover is a kill -9 of one of two replicas with the default LEASE_DURATION (2m):
// 3000 requests at RATE_LIMIT_RPS=400, one replica killed a few seconds in while it holds
// claims. The survivor must take the dead replica's claims back once its heartbeat has expired,
// not a whole lease later.
type chaosTakeover struct {
	n        int
	victimID string
	held     int64         // running under the dead replica's lease when it was killed
	took     time.Duration // from the kill until nothing was pending or running
	done     bool          // everything finished within the wait
	counts   map[string]int64
	survivor *chaosWorker
}

// runTakeover runs chaosTakeover on a fresh rig, waiting at most within after the kill.
func runTakeover(t *testing.T, within time.Duration) (*chaosRig, chaosTakeover) {
	t.Helper()
	const n = 3000
	r := newChaosRig(t, "", "", "-latency", "30ms", "-latency-jitter", "30ms", "-missing", "0.1")
	r.enqueue(t, "tk", n)
	settings := []string{"RATE_LIMIT_RPS=400", "RATE_LIMIT_BURST=40", "CONCURRENCY=16"}
	victim := r.startWorker(t, "victim", settings...)
	survivor := r.startWorker(t, "survivor", settings...)
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "a tenth of the requests done and the victim holding claims", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`) >= n/10 &&
			victim.holding(t, conn) > 0
	})
	victim.freeze(t)
	k := chaosTakeover{n: n, victimID: victim.id, held: victim.holding(t, conn), survivor: survivor}
	if k.held == 0 {
		t.Fatal("the victim held no claim when it was stopped: the test proves nothing")
	}
	victim.kill9(t)
	killedAt := time.Now()
	deadline := killedAt.Add(within)
	for {
		k.counts = r.counts(t)
		if k.counts["pending"]+k.counts["running"] == 0 {
			k.took, k.done = time.Since(killedAt), true
			break
		}
		if time.Now().After(deadline) {
			k.took = time.Since(killedAt)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("kill -9 of %s holding %d claims: finished %v after the kill: %v (final %v)", k.victimID, k.held, k.done,
		k.took.Round(100*time.Millisecond), k.counts)
	return r, k
}

// chaosWindows is what the fake saw of the calls since its counts were last reset (resetWindows):
// the busiest sliding one-second window of their arrivals, and the calls in each whole second.
type chaosWindows struct {
	Calls     int64
	Busiest   int64
	PerSecond []int64
}

// resetWindows starts counting one-second windows afresh: it resets the fake's counts (and its
// memory of deleted users, so Deleted and DuplicateDeletes then count from here too).
func (r *chaosRig) resetWindows(t *testing.T) {
	t.Helper()
	chaosPost(t, r.fakeURL+"/_fake/reset")
}

// windows returns the one-second windows since resetWindows.
func (r *chaosRig) windows(t *testing.T) chaosWindows {
	t.Helper()
	st := fakeStats(t, r.fakeURL)
	return chaosWindows{Calls: st.Calls, Busiest: st.BusiestSecond, PerSecond: st.PerSecond}
}

// atMost fails the test if any one-second window held more than limit calls.
func (w chaosWindows) atMost(t *testing.T, limit int64, what string) {
	t.Helper()
	if w.Busiest > limit {
		t.Errorf("the busiest one-second window at Knot held %d calls; %s allows %d (per whole second: %v)",
			w.Busiest, what, limit, w.PerSecond)
	}
}
