package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// Issue 23's promise, as an auditor would check it: "A pg_dump taken IDENTIFIER_RETENTION plus
// one purge round after the last erasure holds no raw id of a finished request whose report
// failed or hangs (Transcend's aside, until its own report ends)." The API's webhook receiver
// refuses every report for good (409), every Ketch callback and every Transcend report hangs;
// IDENTIFIER_RETENTION=1s, and so REPORT_MAX_AGE=1s.
func TestEndToEndADumpHoldsNoRawIDOfARequestWhoseReportFailsOrHangs(t *testing.T) {
	t.Parallel()
	pgDump := requireTool(t, "pg_dump", "it comes with the PostgreSQL client: apt-get install postgresql-client")
	const (
		n         = 20
		retention = time.Second
		round     = 500 * time.Millisecond // RETENTION_INTERVAL
	)
	rig := newRig(t, withFake("-missing", "0.2"), withDoors(n, map[string][]string{
		"webhookfake":   {"-conflict-rate", "1"},
		"ketchfake":     {"-hang-rate", "1"},
		"transcendfake": {"-report-hang-rate", "1"},
	}))
	w := rig.startWorker(t, "worker", "RATE_LIMIT_RPS=500", "CONCURRENCY=8", "POLL_INTERVAL=200ms",
		"IDENTIFIER_RETENTION=1s", "RETENTION_INTERVAL=500ms", "STATS_INTERVAL=1s", "REPORT_TIMEOUT=10s")
	rig.waitAPI(t, 30*time.Second)
	rig.submitAPI(t, n)    // api-person-..
	rig.pushKetch(t, n)    // ketch-person-..
	const requests = 3 * n // and transcend-user-.. pulled

	conn := rig.db(t)
	queuetest.WaitFor(t, time.Minute, "every request finished", func() bool {
		c := rig.counts(t)
		return c["succeeded/deleted"]+c["succeeded/not_found"] == requests
	})
	// IDENTIFIER_RETENTION and one purge round (and the round's own few milliseconds) after the
	// last erasure, by the database's clock.
	queuetest.WaitFor(t, 30*time.Second, "IDENTIFIER_RETENTION and a purge round after the last erasure", func() bool {
		var past bool
		if err := conn.QueryRow(t.Context(), `SELECT now() > max(completed_at) + $1 * interval '1 millisecond' FROM erasure_requests`,
			(retention + round + 500*time.Millisecond).Milliseconds()).Scan(&past); err != nil {
			t.Fatal(err)
		}
		return past
	})
	dump := dumpTables(t, pgDump, rig.dbURL)
	reports := rig.reportCounts(t)

	// The scenario did what it says: webhooks refused for good, Ketch callbacks and Transcend
	// reports hanging (or given up already, those that waited behind the hung ones).
	if reports["webhook/failed"] != n || reports["ketch/delivered"]+reports["transcend/delivered"] != 0 {
		t.Fatalf("reports %v: want every webhook refused for good, no Ketch or Transcend report delivered", reports)
	}
	if reports["transcend/delivering"] == 0 || reports["ketch/delivering"] == 0 {
		t.Fatalf("reports %v: want Ketch and Transcend reports hanging when the dump is taken", reports)
	}
	if got := strings.Count(dump["public.erasure_requests"], "hmac-sha256:"); got != requests {
		t.Errorf("erasure_requests in the dump holds %d pseudonyms, want %d: every finished request's", got, requests)
	}
	rawID := regexp.MustCompile(`(?:person|transcend-user)-\d+`)
	aside := 0
	for table, rows := range dump {
		for _, raw := range rawID.FindAllString(rows, -1) {
			switch {
			case table == "public.erasure_reports" && strings.HasPrefix(raw, rigTranscendItems+"-"):
				aside++ // a hung Transcend report's own copy, until it ends
			default:
				t.Errorf("%s in the dump still holds the raw id %s", table, raw)
			}
		}
	}
	if aside == 0 || aside > int(reports["transcend/delivering"]+reports["transcend/pending"]) {
		t.Errorf("the dump holds %d Transcend identifiers in reports, want one per hung Transcend report (%d)",
			aside, reports["transcend/delivering"]+reports["transcend/pending"])
	}

	// Once the hung reports time out (REPORT_TIMEOUT), they are past REPORT_MAX_AGE and given up:
	// nothing is left of any raw id.
	queuetest.WaitFor(t, time.Minute, "every report to end", func() bool {
		r := rig.reportCounts(t)
		return r["webhook/failed"] == n && r["ketch/failed"] == 2*n && r["transcend/failed"] == n
	})
	dump = dumpTables(t, pgDump, rig.dbURL)
	for table, rows := range dump {
		for _, raw := range rawID.FindAllString(rows, -1) {
			t.Errorf("once every report ended, %s in the dump still holds the raw id %s", table, raw)
		}
	}
	var gaveUp int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM erasure_reports WHERE last_error LIKE 'gave up after REPORT_MAX_AGE (1s): %'`).Scan(&gaveUp); err != nil {
		t.Fatal(err)
	}
	if gaveUp != 3*n {
		t.Errorf("%d reports failed with 'gave up after REPORT_MAX_AGE (1s): …', want the %d Ketch and Transcend ones", gaveUp, 3*n)
	}
	queuetest.WaitFor(t, 10*time.Second, "erasure_reports_given_up_total", func() bool {
		return w.metric(t, `erasure_reports_given_up_total{connector="ketch"}`) == 2*n &&
			w.metric(t, `erasure_reports_given_up_total{connector="transcend"}`) == n
	})
	if strings.Contains(w.out.String(), "person-") || strings.Contains(w.out.String(), rigTranscendItems+"-") {
		t.Error("the worker's log holds a raw id")
	}
}

// dumpTables takes a data-only pg_dump of the database at url and returns each table's rows, by
// the table's qualified name.
func dumpTables(t *testing.T, pgDump, url string) map[string]string {
	t.Helper()
	out, err := exec.Command(pgDump, "--data-only", "--dbname", url).Output()
	if err != nil {
		t.Fatalf("pg_dump: %v", err)
	}
	tables := map[string]string{}
	for _, m := range regexp.MustCompile(`(?ms)^COPY (\S+) [^\n]*\n(.*?)^\\\.$`).FindAllStringSubmatch(string(out), -1) {
		tables[m[1]] = m[2]
	}
	if tables["public.erasure_requests"] == "" || tables["public.erasure_reports"] == "" {
		t.Fatalf("the dump has no rows of erasure_requests or erasure_reports: not the whole database")
	}
	return tables
}
