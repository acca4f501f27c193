package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// Requests through every door, against a Knot failing 5% of calls and receivers answering 5% of
// reports 429, with OneTrust's access tokens expiring every three seconds and refused two
// seconds after each is issued: all succeed and each is reported exactly as its system's contract says, once.
func TestEndToEndEveryDoorReportsEveryOutcome(t *testing.T) {
	t.Parallel()
	const n = 300
	limited := []string{"-rate-limit-rate", "0.05", "-retry-after", "1s"}
	rig := newRig(t, withFake("-error-rate", "0.05", "-missing", "0.1"), withDoors(n, map[string][]string{
		"webhookfake":   limited,
		"ketchfake":     limited,
		"transcendfake": {"-report-rate-limit-rate", "0.05", "-retry-after", "1s"},
		// Tokens live 3s (the worker renews each shortly before), and are refused 2s after issue.
		"onetrustfake": append([]string{"-token-lifetime", "3s", "-revoke-after", "2s"}, limited...),
		"fidesfake":    limited,
	}))
	w := rig.startWorker(t, "worker", "RATE_LIMIT_RPS=2000", "RATE_LIMIT_BURST=50", "CONCURRENCY=16",
		"RETRY_MIN_BACKOFF=100ms", "RETRY_MAX_BACKOFF=1s", "POLL_INTERVAL=200ms")
	rig.waitAPI(t, 30*time.Second)
	rig.submitAPI(t, n)
	rig.pushKetch(t, n)
	rig.pushOneTrust(t, n)
	rig.pushFides(t, n)

	const callbacks = 2 // ketchfake's default per request
	queuetest.WaitFor(t, 3*time.Minute, "every request finished and every report delivered", func() bool {
		c, r := rig.counts(t), rig.reportCounts(t)
		return c["succeeded/deleted"]+c["succeeded/not_found"] == 5*n && r["fides/delivered"] == n &&
			r["webhook/delivered"] == n && r["ketch/delivered"] == callbacks*n && r["transcend/delivered"] == n &&
			r["onetrust/delivered"] == 2*n // IN_PROGRESS, then the outcome
	})
	c := rig.counts(t)
	if c["failed"] != 0 || c["pending"]+c["running"] != 0 {
		t.Fatalf("counts %v, want all %d succeeded", c, 5*n)
	}

	// Outcomes by door, from the table, to hold each fake's counts against.
	conn := rig.db(t)
	byDoor := func(prefix, outcome string) int64 {
		var k int64
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM erasure_requests WHERE request_ref LIKE $1 AND outcome = $2`,
			prefix+"%", outcome).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}

	wh := rig.webhookStats(t)
	if wh.RequestRefs != n || wh.BadSignatures+wh.StaleTimestamps+wh.Malformed+wh.Violations != 0 ||
		wh.RequestRefsSeveralIDs != 0 || wh.ConflictingOutcomes != 0 || wh.ByType["erasure.succeeded"] != n {
		t.Errorf("webhook receiver: %+v; want %d requests, each succeeded once, validly signed", wh, n)
	}
	if wh.ByOutcome["deleted"] != byDoor("api-", "deleted") || wh.ByOutcome["not_found"] != byDoor("api-", "not_found") {
		t.Errorf("webhook outcomes %v, table has deleted %d, not_found %d", wh.ByOutcome, byDoor("api-", "deleted"), byDoor("api-", "not_found"))
	}

	k := rig.ketchStats(t)
	if k.UIDsOneFinal != n || k.UIDsMultipleFinals != 0 || k.EventsAfterFinal != 0 || k.BadCredentials != 0 || k.MalformedEvents != 0 ||
		k.FinalEvents != callbacks*n || k.DuplicateFinals != 0 {
		t.Errorf("ketch: %+v; want every request's callbacks told one final event with their own headers", k)
	}
	if k.EventsByPair["completed/executed"] != callbacks*byDoor("ketch:", "deleted") || k.EventsByPair["completed/no_match"] != callbacks*byDoor("ketch:", "not_found") {
		t.Errorf("ketch events %v, table has deleted %d, not_found %d", k.EventsByPair, byDoor("ketch:", "deleted"), byDoor("ketch:", "not_found"))
	}

	tr := rig.transcendStats(t)
	if tr.ItemsReported != n || tr.ItemsPending != 0 || tr.BadNonces != 0 || tr.MismatchedProfileIDs != 0 || tr.DuplicateReports != 0 || tr.BadCredentials != 0 {
		t.Errorf("transcend: %+v; want every item reported once with its own nonce", tr)
	}
	if tr.ReportsByProfileStatus["SKIPPED"] != byDoor("transcend:", "not_found") {
		t.Errorf("transcend reports %v, table has not_found %d", tr.ReportsByProfileStatus, byDoor("transcend:", "not_found"))
	}

	ot := rig.onetrustStats(t)
	if ot.SubtasksOneFinal != n || ot.SubtasksMultipleFinals+ot.SubtasksAwaitingFinal+ot.SubtasksFinalBeforeInProgress+ot.SubtasksCommentNamingUser != 0 ||
		ot.EarlyRetries != 0 || ot.Updates["IN_PROGRESS"] < n || ot.Updates["FAILED"] != 0 {
		t.Errorf("onetrust: %+v; want every subtask told IN_PROGRESS, then one final status, never naming the person", ot)
	}
	if ot.Updates["COMPLETED"] < byDoor("onetrust:", "deleted")+byDoor("onetrust:", "not_found") || ot.Unauthorized == 0 || ot.TokenFetches < 2 {
		t.Errorf("onetrust: %+v; want every subtask COMPLETED, through tokens refused mid-run and fetched again", ot)
	}
	if ot.Faulted["rate_limit"] == 0 {
		t.Errorf("onetrust answered no 429 (%v): the test did not test what it says", ot.Faulted)
	}

	fi := rig.fidesStats(t)
	if fi.TasksCompleted != n || fi.Completions != n || fi.PrematureCallbacks+fi.EarlyRetries+fi.Unauthenticated+fi.Forbidden+fi.Expired+fi.MalformedBodies != 0 {
		t.Errorf("fides: %+v; want every task completed once, no callback before it awaited one", fi)
	}
	if fi.RowsMasked["1"] != byDoor("fides:", "deleted") || fi.RowsMasked["0"] != byDoor("fides:", "not_found") {
		t.Errorf("fides rows_masked %v, table has deleted %d, not_found %d", fi.RowsMasked, byDoor("fides:", "deleted"), byDoor("fides:", "not_found"))
	}

	t.Logf("webhook: %d requests, %d messages, %d faulted; ketch: %d finals over %d uids; transcend: %d reported (%v); knot: %v",
		wh.RequestRefs, wh.Messages, wh.DuplicateWebhookIDs, k.FinalEvents, k.UIDsOneFinal, tr.ItemsReported, tr.ReportsByProfileStatus, c)
	t.Logf("onetrust: %d subtasks one final, updates %v, %d token fetches, %d refused tokens, faults %v",
		ot.SubtasksOneFinal, ot.Updates, ot.TokenFetches, ot.Unauthorized, ot.Faulted)
	t.Logf("fides: %d tasks completed, rows_masked %v, %d repeats, faults %v", fi.TasksCompleted, fi.RowsMasked, fi.RepeatCallbacks, fi.Faulted)

	// What an operator sees.
	out, errOut, code := rig.cli(t, "", "status")
	if code != 0 || !strings.Contains(out, "REPORTS") {
		t.Fatalf("status: exit %d: %s %s", code, out, errOut)
	}
	for _, row := range []string{"webhook", "ketch", "transcend", "onetrust", "fides"} {
		want := n
		switch row {
		case "ketch":
			want = callbacks * n
		case "onetrust":
			want = 2 * n
		}
		if !strings.Contains(out, fmt.Sprintf("%s  ", row)) || !regexp.MustCompile(row+`\s+0\s+0\s+0\s+`+fmt.Sprint(want)+`\s+0\s`).MatchString(out) {
			t.Errorf("status does not show %d %s reports delivered and none waiting, pending or failed:\n%s", want, row, out)
		}
	}

	// Delivered reports keep no credentials; no log line holds one, or an id.
	var kept int64
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM erasure_reports WHERE credentials IS NOT NULL`).Scan(&kept); err != nil || kept != 0 {
		t.Errorf("%d delivered reports keep their credentials (%v)", kept, err)
	}
	logs := w.out.String()
	for _, secret := range []string{rigAPIToken, rigKetchValue, rigTranscendKey, strings.TrimPrefix(rigWebhookSecret, "whsec_"), "api-person-", "ketch-person-", rigTranscendItems + "-",
		rigOneTrustToken, rigOneTrustSecret, "onetrust-person-", rigFidesToken, "fides-person-"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the worker's log holds %q", secret)
		}
	}
	// The fake Ketch's callback credentials are cb- and 32 hex digits (a uid never is).
	if cb := regexp.MustCompile(`cb-[0-9a-f]{32}`).FindString(logs); cb != "" {
		t.Errorf("the worker's log holds a Ketch callback credential")
	}
}
