//go:build chaos

package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// The database was never migrated (the init container was left out, or a new database was
// pointed at): the worker says so once, in words, is healthy but not ready, and starts by itself
// once migrate has run; the other commands refuse with the same words; SIGTERM while waiting
// exits 0 at once.
func TestChaosUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	const n = 50
	r := newRig(t, withoutMigrate(), withoutRetention())
	want := noSchema(t)
	w := r.spawnWorker(t, "worker", "POLL_INTERVAL=200ms")
	idle := r.spawnWorker(t, "worker stopped while waiting")

	queuetest.WaitFor(t, 30*time.Second, "/readyz to give the reason", func() bool {
		code, body := probeGet("http://" + w.addr + "/readyz")
		return code == http.StatusServiceUnavailable && body == want+"\n"
	})
	out, errOut, code := r.cli(t, "", "status")
	if code != exitFailure || errOut != "erasure-worker: status: "+want+"\n" || out != "" {
		t.Errorf("status on the unmigrated database: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// Over two schema checks (every 5s) and more, the reason is logged once.
	time.Sleep(11 * time.Second)
	for _, p := range []*workerProc{w, idle} {
		log := p.out.String()
		if got := countMessage(log, want); got != 1 {
			t.Errorf("the log holds %q %d times; want once:\n%s", want, got, log)
		}
		if strings.Contains(log, "does not exist") || strings.Contains(log, "SQLSTATE") {
			t.Errorf("the log holds a raw SQL error:\n%s", log)
		}
	}
	if code := w.probe("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz answers %d while waiting for the schema: the pod would be restarted for nothing", code)
	}
	if code := w.probe("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz answers %d on an unmigrated database", code)
	}
	if code, took := idle.stop(t, 10*time.Second); code != 0 || took > 2*time.Second {
		t.Errorf("SIGTERM while waiting for the schema: exit %d after %v; want 0 at once", code, took)
	}

	out, errOut, code = r.cli(t, "", "migrate")
	if code != 0 {
		t.Fatalf("migrate: exit %d: %s %s", code, out, errOut)
	}
	r.enqueue(t, "schema", n)
	w.waitLog(t, "schema is ready; starting", 15*time.Second)
	w.id = w.waitLog(t, "worker starting", 5*time.Second)["worker"].(string)
	queuetest.WaitFor(t, 10*time.Second, "/readyz to pass", func() bool { return w.probe("/readyz") == http.StatusOK })
	chaosAllSucceeded(t, r.drained(t, time.Minute), n)

	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
	if got := countMessage(w.out.String(), want); got != 1 {
		t.Errorf("the log holds %q %d times in all; want once", want, got)
	}
	w.noPanic(t)
	idle.noPanic(t)
}
