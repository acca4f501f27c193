//go:build chaos

package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// Issue 19: PostgreSQL stops answering without closing anything (SIGSTOP on every one of its
// processes: its connections stay open, the kernel still accepts new ones, nothing is said).
// The worker's statements end at their deadline, so it says so within seconds, and /healthz
// does not ask for a restart that would not help; /readyz fails while the freeze lasts; once PostgreSQL runs again the same process carries on
// by itself, loses nothing, and every claim it held when the freeze began is settled (finished
// or taken back) within the lease.
func TestChaosPostgresFreeze(t *testing.T) {
	t.Parallel()
	const (
		n = 1500
		// Longer than the statement deadline, by enough for a statement sent just before the
		// freeze to end at it while the freeze lasts.
		freeze = queue.DefaultStatementTimeout + 10*time.Second
		lease  = 30 * time.Second
	)
	pg := startChaosCluster(t)
	r := newRig(t, withDB(pg.url), withFake("-latency", "20ms", "-missing", "0.1"))
	r.enqueue(t, "freeze", n)
	// The pool keeps connections open (pool_min_conns), so that statements sent into the freeze
	// go on connections already open, which only the statement deadline can end.
	w := r.startWorker(t, "worker", "DATABASE_URL="+pg.url+"&pool_min_conns=4", "LEASE_DURATION="+lease.String(), "KNOT_TIMEOUT=2s", "RATE_LIMIT_RPS=100",
		"RATE_LIMIT_BURST=10", "CONCURRENCY=8", "POLL_INTERVAL=200ms", "STATS_INTERVAL=1s")
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "a fifth of the requests to be done", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`) >= n/5
	})
	if w.probe("/readyz") != http.StatusOK {
		t.Fatal("/readyz fails before the freeze")
	}
	// The claims held when the freeze begins, by their token: each must be settled within the
	// lease once the database runs again.
	held := map[int64]int64{}
	rows, err := conn.Query(t.Context(), `SELECT id, claim_token FROM erasure_requests WHERE status = 'running'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, token int64
		if err := rows.Scan(&id, &token); err != nil {
			t.Fatal(err)
		}
		held[id] = token
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(held) == 0 {
		t.Fatal("no claim was held when the freeze began: the test would prove nothing of them")
	}
	conn.Close(t.Context())

	logFrom := len(w.out.String())
	pg.signal(t, syscall.SIGSTOP)
	frozenAt := time.Now()
	thawed := false
	thaw := func() {
		if !thawed {
			pg.signal(t, syscall.SIGCONT)
			thawed = true
		}
	}
	t.Cleanup(thaw) // a failing test must not leave PostgreSQL stopped for pg_ctl stop

	// /readyz and /healthz, asked every half second while the database is frozen: both must
	// answer within their own time (the probe gives up after 5s), /readyz not ready (it pings
	// with 2s), /healthz healthy (only the database is wrong).
	var mu sync.Mutex
	answers := map[int]int{}
	health := map[int]int{}
	stopProbing := make(chan struct{})
	var probing sync.WaitGroup
	probing.Go(func() {
		for {
			code, healthy := w.probe("/readyz"), w.probe("/healthz")
			mu.Lock()
			answers[code]++
			health[healthy]++
			mu.Unlock()
			select {
			case <-stopProbing:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	})
	time.Sleep(freeze)
	close(stopProbing)
	probing.Wait()
	duringFreeze := w.out.String()[logFrom:]
	thaw()
	thawedAt := time.Now()
	t.Logf("PostgreSQL was frozen for %v; meanwhile /readyz answered %v, /healthz %v", thawedAt.Sub(frozenAt).Round(time.Millisecond), answers, health)

	if answers[http.StatusServiceUnavailable] == 0 {
		t.Errorf("/readyz never answered 503 while the database was frozen (answers by status: %v)", answers)
	}
	if len(health) != 1 || health[http.StatusOK] == 0 {
		t.Errorf("/healthz answered %v (by status, 0: no answer within 5s) while only the database was frozen: "+
			"a claim waited on it for longer than the statement deadline, and the pod would be restarted for nothing", health)
	}
	// The statements whose callers set no deadline of their own (finishes, the queue's gauges,
	// taking back claims; a claim has its own 10s) ended at the queue's while the database was
	// still frozen, and the worker said so. Without it they would wait for as long as the freeze: for ever, had
	// the connections been cut without a word (a half-open TCP connection).
	// A connection opened during the freeze fails at the connect timeout instead: that is not
	// the statement deadline, which must end statements on connections already open.
	var failed []string
	for _, msg := range []string{"recording results failed; retrying", "reading queue stats failed",
		"taking back claims of gone replicas failed"} {
		for _, l := range logMsgs(duringFreeze, msg) {
			if !strings.Contains(l, "failed to connect") {
				failed = append(failed, l)
			}
		}
	}
	if len(failed) == 0 {
		t.Errorf("in the %v the database was frozen, no finish, stats read or recovery on an open connection failed: they wait without a deadline", freeze)
	} else {
		t.Logf("%d statements ended at their deadline during the freeze; the first: %s", len(failed), failed[0])
	}

	queuetest.WaitFor(t, 30*time.Second, "/readyz to pass again after the freeze", func() bool { return w.probe("/readyz") == http.StatusOK })
	// Every claim held when the freeze began is finished or taken back within the lease.
	conn = r.db(t)
	queuetest.WaitFor(t, lease, "the claims held when the freeze began to be settled", func() bool {
		ids := make([]int64, 0, len(held))
		for id := range held {
			ids = append(ids, id)
		}
		var still int64
		for _, id := range ids {
			var status string
			var token *int64
			if err := conn.QueryRow(t.Context(), `SELECT status, claim_token FROM erasure_requests WHERE id = $1`, id).Scan(&status, &token); err != nil {
				t.Fatal(err)
			}
			if status == queue.StatusRunning && token != nil && *token == held[id] {
				still++
			}
		}
		return still == 0
	})
	t.Logf("the %d claims held at the freeze were settled %v after it ended", len(held), time.Since(thawedAt).Round(time.Millisecond))

	c := r.drained(t, 2*time.Minute)
	chaosAllSucceeded(t, c, n)
	st := fakeStats(t, r.fakeURL)
	var ids []string
	var calls int64
	for _, row := range r.rows(t) {
		ids = append(ids, row.ExternalUserID)
		calls += int64(row.Calls)
	}
	if calls != st.Calls {
		t.Errorf("erasure_attempts holds %d calls; the fake answered %d", calls, st.Calls)
	}
	// A result the freeze kept from being recorded for longer than the replica's heartbeat may
	// run again (at least once): its second call answers not_found. Every such repeat is a
	// request taken back.
	recovered := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE last_error_code IN ('lease_expired', 'worker_gone')`)
	if want := chaosExistingUsers(ids, 0.1); st.Deleted != want || st.DuplicateDeletes > recovered ||
		c["succeeded/deleted"]+st.DuplicateDeletes < want {
		t.Errorf("fake deleted %d users (%d deleted again), table says %d deleted, %d requests were taken back; %d of the %d exist",
			st.Deleted, st.DuplicateDeletes, c["succeeded/deleted"], recovered, want, len(ids))
	}
	w.noPanic(t)
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
}

// signal sends sig to every process of the cluster: the postmaster first, so that it forks
// nothing new, then its children.
func (pc *chaosCluster) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pc.data, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	postmaster, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	pids := []int{postmaster}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(postmaster) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && pid == postmaster {
			t.Fatalf("kill -%d %d: %v", sig, pid, err)
		}
	}
}
