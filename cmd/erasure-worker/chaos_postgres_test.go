//go:build chaos

package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// PostgreSQL restarts mid-run: the worker logs, backs off and reconnects by itself; /readyz
// fails while the database is gone and passes again after; no request is lost and none is
// carried out twice.
func TestChaosPostgresRestart(t *testing.T) {
	t.Parallel()
	const n = 1500
	pg := startChaosCluster(t)
	r := newRig(t, withDB(pg.url), withFake("-latency", "20ms", "-missing", "0.1"))
	r.enqueue(t, "pg", n)
	// The lease is long enough that a result written after the restart still holds it: a
	// recovered lease would make a second call legitimately, and hide a double completion.
	// The poll is slow: after the restart, new work must be found through a LISTEN connection
	// that reconnected by itself.
	w := r.startWorker(t, "worker", "LEASE_DURATION=30s", "KNOT_TIMEOUT=2s", "RATE_LIMIT_RPS=150",
		"RATE_LIMIT_BURST=10", "CONCURRENCY=8", "POLL_INTERVAL=30s", "STATS_INTERVAL=1s")
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "a fifth of the requests to be done", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`) >= n/5
	})
	conn.Close(t.Context())
	if w.probe("/readyz") != http.StatusOK {
		t.Fatal("/readyz fails before the restart")
	}

	pg.ctl(t, "stop", "-m", "fast")
	stoppedAt := time.Now()
	queuetest.WaitFor(t, 30*time.Second, "/readyz to fail while the database is down", func() bool {
		return w.probe("/readyz") == http.StatusServiceUnavailable
	})
	if code := w.probe("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz answers %d while only the database is down: the pod would be restarted for nothing", code)
	}
	time.Sleep(3 * time.Second) // long enough for several failed claims and their backoff
	pg.ctl(t, "start")
	t.Logf("database was down for %v", time.Since(stoppedAt).Round(time.Millisecond))
	queuetest.WaitFor(t, time.Minute, "/readyz to pass again", func() bool { return w.probe("/readyz") == http.StatusOK })

	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	time.Sleep(time.Second) // idle, waiting for a notification
	r.enqueue(t, "pg-after", 10)
	queuetest.WaitFor(t, 10*time.Second, "requests enqueued after the restart to be done (found by LISTEN, which must have reconnected; the poll is 30s)", func() bool {
		c = r.counts(t)
		return c["pending"]+c["running"] == 0
	})
	chaosAllSucceeded(t, c, n+10)
	st := fakeStats(t, r.fakeURL)
	if st.DuplicateDeletes != 0 {
		t.Errorf("%d duplicate deletes at Knot", st.DuplicateDeletes)
	}
	var ids []string
	var calls int64
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		ids = append(ids, row.ExternalUserID)
		calls += int64(row.Calls)
		// A second attempt is allowed only after a claim whose answer the shutdown cut off: its
		// rows waited out their lease and then ran once.
		if row.Successes != 1 || row.Calls != 1 || (row.Attempts != 1 && row.LastErrorCode != "lease_expired" && row.LastErrorCode != "worker_gone") {
			bad.add("request %s: %d calls recorded, %d successful, over %d attempts; want one call over one attempt",
				row.RequestRef, row.Calls, row.Successes, row.Attempts)
		}
	}
	bad.report(t)
	// Every call Knot answered is in erasure_attempts once: none lost while the database was
	// away, none written twice by a retried write.
	if calls != st.Calls {
		t.Errorf("erasure_attempts holds %d calls; the fake answered %d", calls, st.Calls)
	}
	if want := chaosExistingUsers(ids, 0.1); st.Deleted != want || c["succeeded/deleted"] != want {
		t.Errorf("fake deleted %d users, table says %d deleted; %d of the %d exist", st.Deleted, c["succeeded/deleted"], want, len(ids))
	}
	// Whichever met the outage first says so: the claim loop, or calls taking their sends from
	// the shared rate limit (when every slot waits on it, nothing is claimed meanwhile).
	if len(w.logLines("claim failed; retrying"))+len(w.logLines("cannot take sends from the shared rate limit")) == 0 {
		t.Error("the worker never logged that the database was unreachable while it was down")
	}
	if len(w.logLines("database answering again"))+len(w.logLines("shared rate limit answering")) == 0 {
		t.Error("the worker never logged that the database answers again")
	}
	w.noPanic(t)
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
}

// PostgreSQL crashes (immediate shutdown, then crash recovery) again and again mid-run. A
// crash can lose the answer to a statement that committed: a claim (its rows wait out their
// lease, then run) or a batch of results (the worker writes it again). Neither may lose a
// request, call Knot twice, write a call into the evidence twice, or report a written result
// as lost.
func TestChaosPostgresCrashes(t *testing.T) {
	t.Parallel()
	const (
		n       = 3000
		crashes = 12
	)
	pg := startChaosCluster(t)
	r := newRig(t, withDB(pg.url), withFake("-latency", "5ms", "-missing", "0.1"))
	r.enqueue(t, "crash", n)
	// The lease outlasts the crashes, so that every result is written before its lease ends.
	w := r.startWorker(t, "worker", "LEASE_DURATION=30s", "KNOT_TIMEOUT=2s", "RATE_LIMIT_RPS=300",
		"RATE_LIMIT_BURST=30", "CONCURRENCY=16", "POLL_INTERVAL=500ms")
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "work to start", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`) > 0
	})
	conn.Close(t.Context())
	for range crashes {
		pg.ctl(t, "stop", "-m", "immediate")
		time.Sleep(200 * time.Millisecond)
		pg.ctl(t, "start")
		queuetest.WaitFor(t, time.Minute, "/readyz to pass after a crash", func() bool { return w.probe("/readyz") == http.StatusOK })
		time.Sleep(400 * time.Millisecond)
	}

	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	st := fakeStats(t, r.fakeURL)
	conn = r.db(t)
	if twice := chaosQueryInt(t, conn, `
SELECT count(*) FROM (SELECT 1 FROM erasure_attempts
                      GROUP BY request_id, attempt, worker, started_at HAVING count(*) > 1) AS d`); twice != 0 {
		t.Errorf("%d calls are in erasure_attempts twice", twice)
	}
	calls := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_attempts`)
	recovered := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE last_error_code IN ('lease_expired', 'worker_gone')`)
	if calls != st.Calls || st.DuplicateDeletes > recovered {
		t.Errorf("erasure_attempts holds %d calls; the fake answered %d, %d of them repeated deletes (%d requests ran again after a lost lease)",
			calls, st.Calls, st.DuplicateDeletes, recovered)
	}
	// A result is reported lost only when its lease really was: the request ran again.
	attempts := map[int64]int{}
	for _, row := range r.rows(t) {
		attempts[row.ID] = row.Attempts
	}
	var bad chaosRowErrors
	for _, l := range w.logLines("result not recorded") {
		id, _ := l["request_id"].(float64)
		attempt, _ := l["attempt"].(float64)
		if attempts[int64(id)] <= int(attempt) {
			bad.add("request %v: its attempt %v was reported lost, but no later attempt ran", id, attempt)
		}
	}
	bad.report(t)
	t.Logf("%d crashes: %d calls, %d requests ran again after a lost lease, %d results reported lost",
		crashes, st.Calls, recovered, len(w.logLines("result not recorded")))
	w.noPanic(t)
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
}

// chaosCluster is a PostgreSQL server of the test's own, which it may stop and start.
type chaosCluster struct {
	bindir, dir, data, log string
	asUser                 string // run pg_ctl as this user ("" for ourselves)
	url                    string
}

// startChaosCluster initdbs a throwaway cluster in a temporary directory (as the postgres
// user when we are root: PostgreSQL refuses to run as root), starts it on a free port on
// 127.0.0.1 and removes it when the test ends. It never touches the shared test server.
func startChaosCluster(t *testing.T) *chaosCluster {
	t.Helper()
	bindir := os.Getenv("PGTEST_BINDIR")
	if bindir == "" {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		for _, d := range dirs {
			if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
				bindir = d // the last in the glob's order
			}
		}
	}
	if bindir == "" {
		t.Fatal("no PostgreSQL server binaries: set PGTEST_BINDIR or install postgresql")
	}
	dir, err := os.MkdirTemp("", "erasure-chaos-pg-")
	if err != nil {
		t.Fatal(err)
	}
	pc := &chaosCluster{bindir: bindir, dir: dir, data: filepath.Join(dir, "data"), log: filepath.Join(dir, "postgres.log")}
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join(pc.data, "postmaster.pid")); err == nil {
			_ = pc.run("stop", "-m", "immediate", "-w", "-t", "30")
		}
		if t.Failed() {
			if b, err := os.ReadFile(pc.log); err == nil {
				t.Logf("--- private postgres log ---\n%s", b)
			}
		}
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		pc.asUser = "postgres"
		u, err := user.Lookup(pc.asUser)
		if err != nil {
			t.Fatalf("running as root and there is no postgres user to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := pc.command(filepath.Join(bindir, "initdb"), "-D", pc.data, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 100\n", port, dir)
	f, err := os.OpenFile(filepath.Join(pc.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pc.ctl(t, "start")
	pc.url = "postgres://postgres@127.0.0.1:" + port + "/postgres?sslmode=disable"
	return pc
}

// ctl runs pg_ctl ACTION (start, stop) on the cluster and waits for it to complete.
func (pc *chaosCluster) ctl(t *testing.T, action string, args ...string) {
	t.Helper()
	if err := pc.run(action, args...); err != nil {
		t.Fatalf("pg_ctl %s: %v", action, err)
	}
}

func (pc *chaosCluster) run(action string, args ...string) error {
	all := append([]string{action, "-D", pc.data, "-l", pc.log, "-w", "-t", "60"}, args...)
	out, err := pc.command(filepath.Join(pc.bindir, "pg_ctl"), all...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	return nil
}

// command runs name as the cluster's owner, from a directory that user can read.
func (pc *chaosCluster) command(name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if pc.asUser != "" {
		cmd = exec.Command("runuser", append([]string{"-u", pc.asUser, "--", name}, args...)...)
	} else {
		cmd = exec.Command(name, args...)
	}
	cmd.Dir = pc.dir
	return cmd
}
