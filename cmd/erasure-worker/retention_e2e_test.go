package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// Issue 12's first promise, as an auditor would check it: requests through every door (the
// table's contract, the HTTP API, Ketch and Transcend) are carried out and reported, and once
// IDENTIFIER_RETENTION has passed a pg_dump of the whole database holds none of their raw ids,
// while every request is still there, under its pseudonym.
func TestEndToEndADumpHoldsNoRawIDOnceItsRetentionPassed(t *testing.T) {
	t.Parallel()
	pgDump := requireTool(t, "pg_dump", "it comes with the PostgreSQL client: apt-get install postgresql-client")
	const n = 20
	rig := newRig(t, withFake("-missing", "0.2"), withRequests(n), withDoors(n, nil)) // person-0.. through the table's contract
	w := rig.startWorker(t, "worker", "RATE_LIMIT_RPS=500", "CONCURRENCY=8", "POLL_INTERVAL=200ms",
		"IDENTIFIER_RETENTION=5s", "RETENTION_INTERVAL=1s", "STATS_INTERVAL=1s") // REPORT_MAX_AGE follows: 5s, time for every report
	rig.waitAPI(t, 30*time.Second)
	rig.submitAPI(t, n)    // api-person-..
	rig.pushKetch(t, n)    // ketch-person-..
	const requests = 4 * n // and transcend-user-.. pulled

	conn := rig.db(t)
	queuetest.WaitFor(t, 2*time.Minute, "every request finished, reported and pseudonymised", func() bool {
		c := rig.counts(t)
		if c["succeeded/deleted"]+c["succeeded/not_found"] != requests {
			return false
		}
		// Requests are pseudonymised whatever their reports do (issue 23): wait for both.
		var left int
		if err := conn.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM erasure_requests WHERE pseudonymised_at IS NULL)
     + (SELECT count(*) FROM erasure_reports WHERE status <> 'delivered')`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		return left == 0
	})
	if r := rig.reportCounts(t); r["webhook/delivered"] != n || r["transcend/delivered"] != n || r["ketch/delivered"] == 0 {
		t.Errorf("reports %v: want every one delivered", r)
	}

	out, err := exec.Command(pgDump, "--data-only", "--dbname", rig.dbURL).Output()
	if err != nil {
		t.Fatalf("pg_dump: %v", err)
	}
	dump := string(out)
	if got := strings.Count(dump, "hmac-sha256:"); got < requests {
		t.Fatalf("the dump holds %d pseudonyms, want at least %d: it is not the whole database", got, requests)
	}
	for _, raw := range regexp.MustCompile(`(?:person|transcend-user)-\d+`).FindAllString(dump, -1) {
		t.Errorf("the dump still holds the raw id %s", raw)
	}
	if v := scrapeGauge(t, "http://"+w.addr+"/metrics", "erasure_retention_pseudonymised_total"); v != requests {
		t.Errorf("erasure_retention_pseudonymised_total = %v, want %d (one replica)", v, requests)
	}
	// The pseudonymised ids never reach the log either.
	if strings.Contains(w.out.String(), "person-") {
		t.Error("the worker's log holds a raw id")
	}
}
