//go:build chaos

package main

// Issue 11's second promise: reports survive their receivers' faults. "Reports survive the
// receiver answering 5xx for 20 s, a 429 storm, kill -9 of a replica mid-delivery and a
// PostgreSQL restart: all delivered, none lost." Each scenario runs erasure-worker, knotfake and
// the three door fakes (webhookfake, ketchfake, transcendfake) as processes against a real
// PostgreSQL, brings a few hundred requests in through the doors, breaks one thing, and then
// holds the outbox (erasure_reports, erasure_report_attempts), each fake's counts and what an
// operator sees (logs, /metrics) against each other.
//
// The scenarios are built around the reporter's default timings (REPORT_TIMEOUT 10s,
// REPORT_LEASE 3 × 10s, backoff from 1s doubling to 5m with jitter, REPORT_POLL_INTERVAL 1s),
// which they leave as they are.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// The reporter's fixed timings (worker.DefaultReport*), which the scenarios' waits and bounds
// are derived from.
const (
	reportsLease      = 30 * time.Second // 3 × DefaultReportTimeout
	reportsMinBackoff = time.Second      // DefaultReportMinBackoff
	reportsCallbacks  = 2                // ketchfake's callbacks per pushed request
)

// reportsRig is a rig with the doors on.
type reportsRig struct{ *rig }

func newReportsRig(t *testing.T, transcendItems int, opts ...rigOption) *reportsRig {
	t.Helper()
	return &reportsRig{newRig(t, append([]rigOption{withFake("-missing", "0.1"), withDoors(transcendItems, nil)}, opts...)...)}
}

// start runs a replica (every door on, as in every worker of the rig). Knot is fast and
// lenient, so that what the scenarios wait for is the reports.
func (r *reportsRig) start(t *testing.T, name string, extra ...string) *workerProc {
	t.Helper()
	env := []string{"RATE_LIMIT_RPS=2000", "RATE_LIMIT_BURST=50", "CONCURRENCY=16", "RETRY_MIN_BACKOFF=100ms",
		"RETRY_MAX_BACKOFF=1s", "POLL_INTERVAL=200ms", "STATS_INTERVAL=1s"}
	return r.startWorker(t, name, append(env, extra...)...)
}

// reportsWant is how many requests came in by each door.
type reportsWant struct{ api, ketch, transcend int64 }

func (w reportsWant) requests() int64 { return w.api + w.ketch + w.transcend }
func (w reportsWant) reports() int64  { return w.api + reportsCallbacks*w.ketch + w.transcend }

// delivered counts the delivered reports.
func (r *reportsRig) delivered(t *testing.T) int64 {
	t.Helper()
	c := r.reportCounts(t)
	return c["webhook/delivered"] + c["ketch/delivered"] + c["transcend/delivered"]
}

// waitDelivered waits until every request has finished and every one of its reports is
// delivered, and returns how long that took.
func (r *reportsRig) waitDelivered(t *testing.T, want reportsWant, within time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	var c, rc map[string]int64
	for {
		c, rc = r.counts(t), r.reportCounts(t)
		if c["succeeded/deleted"]+c["succeeded/not_found"] == want.requests() && rc["webhook/delivered"] == want.api &&
			rc["ketch/delivered"] == reportsCallbacks*want.ketch && rc["transcend/delivered"] == want.transcend {
			return time.Since(began)
		}
		if time.Since(began) > within {
			t.Fatalf("after %v: requests %v, reports %v; want %d requests succeeded and every report delivered (%d webhook, %d ketch, %d transcend)",
				within, c, rc, want.requests(), want.api, reportsCallbacks*want.ketch, want.transcend)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// reportsAllow is what a scenario allows beyond "each report received exactly once": the
// reports a killed replica had in flight, which it may have delivered without recording it.
type reportsAllow struct{ ketchRepeats, transcendRepeats int64 }

// checkDelivered holds the table and each fake's counts against the requests of want: every
// request succeeded, every report is delivered once and only once (beyond allow), with its
// credentials deleted, and each fake was told exactly the outcomes the table holds, validly.
func (r *reportsRig) checkDelivered(t *testing.T, want reportsWant, allow reportsAllow) {
	t.Helper()
	chaosAllSucceeded(t, r.counts(t), want.requests())
	conn := r.db(t)
	byDoor := func(prefix, outcome string) int64 {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests WHERE request_ref LIKE $1 AND outcome = $2`, prefix+"%", outcome)
	}
	if n := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_reports WHERE status <> 'delivered' OR credentials IS NOT NULL`); n != 0 {
		t.Errorf("%d reports are not delivered, or keep their credentials", n)
	}
	// The evidence: one attempt that ended the report per report, never written twice.
	if n := chaosQueryInt(t, conn, `
SELECT count(*) FROM erasure_reports r
WHERE (SELECT count(*) FROM erasure_report_attempts a WHERE a.report_id = r.id AND a.result IN ('delivered', 'closed')) <> 1`); n != 0 {
		t.Errorf("%d reports do not have exactly one attempt that delivered them in erasure_report_attempts", n)
	}
	if n := chaosQueryInt(t, conn, `
SELECT count(*) FROM (SELECT 1 FROM erasure_report_attempts GROUP BY report_id, attempted_at, worker HAVING count(*) > 1) AS d`); n != 0 {
		t.Errorf("%d report attempts are in erasure_report_attempts twice", n)
	}

	// Webhook: each API request's outcome under one webhook-id, validly signed; a repeat only
	// under the same id, saying the same thing.
	wh := r.doors.webhookStats(t)
	if wh.RequestRefs != want.api || wh.RequestRefsSeveralIDs != 0 || wh.ConflictingOutcomes != 0 || wh.ConflictingWebhookIDs != 0 ||
		wh.BadSignatures+wh.StaleTimestamps+wh.Malformed+wh.Violations != 0 || wh.ByType["erasure.succeeded"] != want.api {
		t.Errorf("webhook receiver: %+v; want %d request_refs, each under one webhook-id, succeeded, validly signed", wh, want.api)
	}
	if want.api > 0 && (wh.ByOutcome["deleted"] != byDoor("api-", "deleted") || wh.ByOutcome["not_found"] != byDoor("api-", "not_found")) {
		t.Errorf("webhook outcomes %v; the table has deleted %d, not_found %d", wh.ByOutcome, byDoor("api-", "deleted"), byDoor("api-", "not_found"))
	}

	// Ketch: every callback of every request one final event, none after it; a killed
	// replica's in-flight events may come twice.
	k := r.doors.ketchStats(t)
	if k.UIDsOneFinal+k.UIDsMultipleFinals != want.ketch || k.UIDsAwaitingFinal != 0 || k.BadCredentials != 0 || k.MalformedEvents != 0 ||
		k.FinalEvents != reportsCallbacks*want.ketch+k.DuplicateFinals || k.EventsAfterFinal != k.DuplicateFinals ||
		k.DuplicateFinals > allow.ketchRepeats || k.UIDsMultipleFinals > allow.ketchRepeats {
		t.Errorf("ketch: %+v; want each of %d requests' %d callbacks told one final event with their own headers (repeats allowed: %d)",
			k, want.ketch, reportsCallbacks, allow.ketchRepeats)
	}
	if want.ketch > 0 {
		// Every request succeeded, so every event is one of these two (repeats included).
		executed, noMatch := k.EventsByPair["completed/executed"], k.EventsByPair["completed/no_match"]
		if d, nm := byDoor("ketch:", "deleted"), byDoor("ketch:", "not_found"); executed+noMatch != k.Events ||
			executed < reportsCallbacks*d || noMatch < reportsCallbacks*nm || executed+noMatch != reportsCallbacks*(d+nm)+k.DuplicateFinals {
			t.Errorf("ketch events %v; the table has deleted %d, not_found %d", k.EventsByPair, d, nm)
		}
	}

	// Transcend: every item reported with its own nonce; a repeat (a killed replica's) is
	// answered 409, which counts as delivered.
	tr := r.doors.transcendStats(t)
	if tr.ItemsReported != want.transcend || tr.ItemsPending != 0 || tr.ItemsRevoked != 0 || tr.BadNonces != 0 ||
		tr.MismatchedProfileIDs != 0 || tr.MalformedReports != 0 || tr.BadCredentials != 0 || tr.DuplicateReports > allow.transcendRepeats {
		t.Errorf("transcend: %+v; want all %d items reported with their own nonce (repeats allowed: %d)", tr, want.transcend, allow.transcendRepeats)
	}
	if want.transcend > 0 && tr.ReportsByProfileStatus["SKIPPED"] != byDoor("transcend:", "not_found") {
		t.Errorf("transcend reports %v; the table has not_found %d", tr.ReportsByProfileStatus, byDoor("transcend:", "not_found"))
	}
}

// noLeaks fails if the worker's output holds a credential or a person's id: the fault paths
// log the receivers' errors. The credentials are the rig's, every Ketch callback's header value
// and every Transcend nonce, as the fakes handed them out. (Not the bare "cb-" prefix of Ketch
// credentials: a logged request_ref is a UUID, and one in a hundred holds "cb-".)
func (r *reportsRig) noLeaks(t *testing.T, w *workerProc) {
	t.Helper()
	w.noPanic(t)
	secrets := []string{rigAPIToken, rigKetchValue, rigTranscendKey, strings.TrimPrefix(rigWebhookSecret, "whsec_"),
		"api-person-", "ketch-person-", rigTranscendItems + "-"}
	for _, uid := range r.ketchUIDs(t) {
		var rec ketchfake.RequestRecord
		getJSON(t, r.doors.ketchURL+"/_fake/requests/"+uid, &rec)
		for _, cb := range rec.Callbacks {
			secrets = append(secrets, cb.Credential)
		}
	}
	var items []struct {
		Nonce string `json:"nonce"`
	}
	getJSON(t, r.doors.transcendURL+"/_fake/items", &items)
	for _, it := range items {
		secrets = append(secrets, it.Nonce)
	}
	out := w.out.String()
	for _, secret := range secrets {
		if secret == "" {
			t.Fatal("a fake handed out an empty credential")
		}
		if strings.Contains(out, secret) {
			t.Errorf("the output of %s holds a credential or a person's id (%.12s…)", w.id, secret)
		}
	}
}

// ketchUIDs returns the metadata.uid of every request that came in through the Ketch door.
func (r *reportsRig) ketchUIDs(t *testing.T) []string {
	t.Helper()
	rows, err := r.db(t).Query(context.Background(), `SELECT substr(request_ref, 7) FROM erasure_requests WHERE request_ref LIKE 'ketch:%'`)
	if err != nil {
		t.Fatal(err)
	}
	uids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return uids
}

// putFaults replaces a fake's faults and decodes what it answers into out (unless nil).
func putFaults(t *testing.T, fakeURL, body string, out any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, fakeURL+"/_fake/faults", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s/_fake/faults %s: %d %s", fakeURL, body, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("PUT %s/_fake/faults: %v", fakeURL, err)
		}
	}
}

// retryLines returns the worker's "report not delivered; retrying" lines for connector.
func retryLines(w *workerProc, connector string) []map[string]any {
	var out []map[string]any
	for _, l := range w.logLines("report not delivered; retrying") {
		if l["connector"] == connector {
			out = append(out, l)
		}
	}
	return out
}

// logDuration reads a duration slog wrote (JSON: nanoseconds; text: a Go duration).
func logDuration(v any) time.Duration {
	switch v := v.(type) {
	case float64:
		return time.Duration(v)
	case string:
		d, _ := time.ParseDuration(v)
		return d
	}
	return -1
}

func deliveredMetric(connector, result string) string {
	return fmt.Sprintf(`erasure_reports_delivered_total{connector="%s",result="%s"}`, connector, result)
}

// attemptsBy counts the recorded attempts of connector's reports with result.
func attemptsBy(t *testing.T, conn *pgx.Conn, connector, result string) int64 {
	t.Helper()
	return chaosQueryInt(t, conn, `
SELECT count(*) FROM erasure_report_attempts a JOIN erasure_reports r ON r.id = a.report_id
WHERE r.connector = $1 AND a.result = $2`, connector, result)
}

// The receivers answer 500 for 20 s from before the first report: every report meets the
// outage, is retried with a doubling backoff (a few attempts each, not a storm of them), and is
// delivered once the receiver is back. The operator sees the retries in the log and on
// /metrics, the reports pending on the gauges, and a pod that stays healthy and ready.
func TestChaosReportsReceiverOutage(t *testing.T) {
	t.Parallel()
	const outage = 20 * time.Second
	want := reportsWant{api: 150, transcend: 150}
	r := newReportsRig(t, int(want.transcend))
	var wf webhookfake.Faults
	putFaults(t, r.doors.webhookURL, `{"outage_for":"20s"}`, &wf)
	var tf transcendfake.Faults
	putFaults(t, r.doors.transcendURL, `{"report":{"outage_for":"20s"}}`, &tf)
	outageEnd := wf.OutageUntil
	if tf.Report.OutageUntil.After(outageEnd) {
		outageEnd = tf.Report.OutageUntil
	}

	w := r.start(t, "worker")
	r.doors.waitAPI(t, 30*time.Second)
	r.doors.submitAPI(t, int(want.api))
	queuetest.WaitFor(t, outage, "every request finished", func() bool {
		c := r.counts(t)
		return c["succeeded/deleted"]+c["succeeded/not_found"] == want.requests()
	})
	// Every report's first attempt must meet the outage, or the test proves less than it says.
	conn := r.db(t)
	queuetest.WaitFor(t, time.Until(outageEnd)-time.Second, "every report tried once in the outage", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_reports WHERE attempts > 0`) == want.reports()
	})
	// While the receivers are down: the gauges show every report pending, the pod stays
	// healthy and ready (a receiver's outage is no reason to restart or unroute it).
	queuetest.WaitFor(t, 5*time.Second, "the pending gauges to show every report", func() bool {
		return w.metric(t, `erasure_reports_pending{connector="webhook"}`) == float64(want.api) &&
			w.metric(t, `erasure_reports_pending{connector="transcend"}`) == float64(want.transcend) &&
			w.metric(t, "erasure_report_oldest_pending_age_seconds") > 0
	})
	if h, rd := w.probe("/healthz"), w.probe("/readyz"); h != http.StatusOK || rd != http.StatusOK {
		t.Errorf("/healthz %d, /readyz %d while only the receivers are down; want 200, 200", h, rd)
	}
	if n := r.delivered(t); n != 0 && time.Now().Before(outageEnd) {
		t.Fatalf("%d reports delivered while every receiver answers 500", n)
	}

	// After the outage, the longest a report waits is its next backoff: the 6th attempt comes
	// at most 1+2+4+8+16 = 31s after the first, the 7th at most 63s.
	r.waitDelivered(t, want, time.Until(outageEnd)+45*time.Second)
	t.Logf("all %d reports delivered %v after the outage ended", want.reports(), time.Since(outageEnd).Round(100*time.Millisecond))
	r.checkDelivered(t, want, reportsAllow{})

	wh, tr := r.doors.webhookStats(t), r.doors.transcendStats(t)
	for _, c := range []struct {
		connector string
		n         int64
		faulted   int64 // the 500s the fake says it answered
	}{{"webhook", want.api, wh.Faulted["outage"]}, {"transcend", want.transcend, tr.Faulted["report_outage"]}} {
		retries := attemptsBy(t, conn, c.connector, "retry")
		// One replica: its counter, its evidence and the receiver agree on every attempt.
		if got := w.metric(t, deliveredMetric(c.connector, "retry")); retries == 0 || got != float64(retries) || c.faulted != retries {
			t.Errorf("%s: %s = %v, %d retry attempts in erasure_report_attempts, the fake answered %d 500s; want them equal and > 0",
				c.connector, deliveredMetric(c.connector, "retry"), got, retries, c.faulted)
		}
		if got := w.metric(t, deliveredMetric(c.connector, "delivered")); got != float64(c.n) {
			t.Errorf("%s = %v, want %d", deliveredMetric(c.connector, "delivered"), got, c.n)
		}
		lines := retryLines(w, c.connector)
		if int64(len(lines)) != retries {
			t.Errorf("%d %q log lines for %s; want one per retry attempt (%d)", len(lines), "report not delivered; retrying", c.connector, retries)
		}
		for _, l := range lines {
			if l["http_status"] != float64(500) || l["result"] != "retry" || logDuration(l["retry_in"]) < reportsMinBackoff/2 {
				t.Errorf("%s retry line %v; want http_status 500, result retry, retry_in >= %v", c.connector, l, reportsMinBackoff/2)
				break
			}
		}
		// The backoff doubles: the k-th retry of a report (from 0) waits at least half of
		// 2^k × 1s after the attempt before it ended, so 20s of outage fit at most 6 attempts
		// (0.5+1+2+4+8 = 15.5s before the 6th, 31.5s before the 7th).
		var most, least, early int64
		if err := conn.QueryRow(context.Background(), `
WITH a AS (
    SELECT a.report_id, a.attempted_at, a.duration_ms, a.result,
           row_number() OVER w - 1 AS k, lead(a.attempted_at) OVER w AS next_at
    FROM erasure_report_attempts a JOIN erasure_reports r ON r.id = a.report_id
    WHERE r.connector = $1
    WINDOW w AS (PARTITION BY a.report_id ORDER BY a.attempted_at)
), per AS (SELECT report_id, count(*) FILTER (WHERE result = 'retry') AS retries FROM a GROUP BY report_id)
SELECT (SELECT max(retries) FROM per), (SELECT min(retries) FROM per),
       (SELECT count(*) FROM a WHERE result = 'retry' AND next_at < attempted_at + duration_ms * interval '1 ms'
                                   + least(500 * power(2, k), 150000) * interval '1 ms' - interval '2 ms')`,
			c.connector).Scan(&most, &least, &early); err != nil {
			t.Fatal(err)
		}
		if most > 6 || least < 1 || early != 0 {
			t.Errorf("%s: between %d and %d retries per report, %d retries sooner than the backoff allows; want 1 to 6, none early",
				c.connector, least, most, early)
		}
		t.Logf("%s: %d reports, %d retries (%d to %d each)", c.connector, c.n, retries, least, most)
	}
	queuetest.WaitFor(t, 5*time.Second, "the pending gauges back to 0", func() bool {
		return w.metric(t, `erasure_reports_pending{connector="webhook"}`) == 0 &&
			w.metric(t, `erasure_reports_pending{connector="transcend"}`) == 0 &&
			w.metric(t, "erasure_report_oldest_pending_age_seconds") == 0
	})
	r.noLeaks(t, w)
}

// A 429 storm: the receivers answer every report 429 with Retry-After: 5 for a while. No report
// is sent again before its Retry-After (ketchfake counts early retries; for the webhook the
// evidence's timestamps tell), none gives up, and all are delivered once the storm passes.
func TestChaosReportsRateLimitStorm(t *testing.T) {
	t.Parallel()
	const (
		retryAfter = 5 * time.Second // above the first three backoffs (≤ 1s, 2s, 4s): Retry-After decides
		storm      = 12 * time.Second
	)
	want := reportsWant{api: 100, ketch: 100}
	r := newReportsRig(t, 0)
	putFaults(t, r.doors.ketchURL, `{"rate_limit_rate":1,"retry_after":"5s"}`, nil)
	putFaults(t, r.doors.webhookURL, `{"rate_limit_rate":1,"retry_after":"5s"}`, nil)

	w := r.start(t, "worker")
	r.doors.waitAPI(t, 30*time.Second)
	r.doors.pushKetch(t, int(want.ketch))
	r.doors.submitAPI(t, int(want.api))
	queuetest.WaitFor(t, 30*time.Second, "every request finished", func() bool {
		c := r.counts(t)
		return c["succeeded/deleted"]+c["succeeded/not_found"] == want.requests()
	})
	// The storm goes on for a while after the last report became due: each is told to wait at
	// least twice.
	time.Sleep(storm)
	if n := r.delivered(t); n != 0 {
		t.Fatalf("%d reports delivered while every receiver answers 429", n)
	}
	putFaults(t, r.doors.ketchURL, `{}`, nil)
	putFaults(t, r.doors.webhookURL, `{}`, nil)
	took := r.waitDelivered(t, want, 30*time.Second)
	t.Logf("all %d reports delivered %v after the storm", want.reports(), took.Round(100*time.Millisecond))
	r.checkDelivered(t, want, reportsAllow{})

	k := r.doors.ketchStats(t)
	if k.EarlyRetries != 0 {
		t.Errorf("ketchfake saw %d callbacks come back before the Retry-After they were given", k.EarlyRetries)
	}
	conn := r.db(t)
	wh := r.doors.webhookStats(t)
	for _, c := range []struct {
		connector string
		faulted   int64
	}{{"ketch", k.Faulted["rate_limit"]}, {"webhook", wh.Faulted["rate_limit"]}} {
		limited := attemptsBy(t, conn, c.connector, "rate_limited")
		if got := w.metric(t, deliveredMetric(c.connector, "rate_limited")); got != float64(limited) || c.faulted != limited {
			t.Errorf("%s: %s = %v, %d rate_limited attempts in the evidence, the fake answered %d 429s; want them equal",
				c.connector, deliveredMetric(c.connector, "rate_limited"), got, limited, c.faulted)
		}
		// From the evidence: the attempt after a 429 starts no sooner than Retry-After after
		// the 429 came (the attempt's start plus its duration). Every report met the storm at
		// least twice.
		var after, early, least int64
		if err := conn.QueryRow(context.Background(), `
WITH a AS (
    SELECT a.report_id, a.attempted_at, a.duration_ms, a.http_status,
           lead(a.attempted_at) OVER (PARTITION BY a.report_id ORDER BY a.attempted_at) AS next_at
    FROM erasure_report_attempts a JOIN erasure_reports r ON r.id = a.report_id
    WHERE r.connector = $1
)
SELECT count(next_at) FILTER (WHERE http_status = 429),
       count(*) FILTER (WHERE http_status = 429 AND next_at < attempted_at + (duration_ms + $2::bigint - 2) * interval '1 ms'),
       coalesce((SELECT min(n) FROM (SELECT count(*) FILTER (WHERE http_status = 429) AS n FROM a GROUP BY report_id) p), 0)
FROM a`, c.connector, retryAfter.Milliseconds()).Scan(&after, &early, &least); err != nil {
			t.Fatal(err)
		}
		if early != 0 || after != limited || least < 2 {
			t.Errorf("%s: of %d attempts after a 429, %d came before its Retry-After; fewest 429s per report %d (want >= 2); %d rate_limited in all",
				c.connector, after, early, least, limited)
		}
		lines := retryLines(w, c.connector)
		if int64(len(lines)) != limited {
			t.Errorf("%d retry log lines for %s; want one per 429 (%d)", len(lines), c.connector, limited)
		}
		for _, l := range lines {
			if l["http_status"] != float64(429) || l["result"] != "rate_limited" || logDuration(l["retry_in"]) < retryAfter {
				t.Errorf("%s retry line %v; want http_status 429, result rate_limited, retry_in >= %v", c.connector, l, retryAfter)
				break
			}
		}
		t.Logf("%s: %d 429s, %d retries before their Retry-After, at least %d 429s per report", c.connector, limited, early, least)
	}
	r.noLeaks(t, w)
}

// reportsHeld is what a killed replica held under lease.
type reportsHeld struct {
	ids       []int64
	leaseEnds []time.Time
	byRef     map[string]int64 // request_ref → reports held
	connector map[string]int64
}

func heldBy(t *testing.T, conn *pgx.Conn, owner string) reportsHeld {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
SELECT rep.id, rep.run_after, rep.connector, r.request_ref
FROM erasure_reports rep JOIN erasure_requests r ON r.id = rep.request_id
WHERE rep.status = 'delivering' AND rep.lease_owner = $1`, owner)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	h := reportsHeld{byRef: map[string]int64{}, connector: map[string]int64{}}
	for rows.Next() {
		var id int64
		var end time.Time
		var c, ref string
		if err := rows.Scan(&id, &end, &c, &ref); err != nil {
			t.Fatal(err)
		}
		h.ids, h.leaseEnds = append(h.ids, id), append(h.leaseEnds, end)
		h.byRef[ref]++
		h.connector[c]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return h
}

// kill -9 of a replica while it delivers: the receivers are slow (500ms), so its reports are
// in flight under their lease when it is stopped and killed. A new replica delivers the rest at
// once and the dead one's reports once their lease (30s) lapses, not before. A report the dead
// replica had delivered without recording it comes again: Ketch then sees a second final event
// at that callback, Transcend answers 409 (already closed). The test allows exactly that: at
// most one repeat per report the dead replica held, at Ketch per callback it held, and none
// elsewhere.
func TestChaosReportsKill9MidDelivery(t *testing.T) {
	t.Parallel()
	want := reportsWant{ketch: 75, transcend: 150}
	r := newReportsRig(t, int(want.transcend))
	putFaults(t, r.doors.ketchURL, `{"latency":"500ms"}`, nil)
	putFaults(t, r.doors.transcendURL, `{"report":{"latency":"500ms"}}`, nil)

	victim := r.start(t, "victim")
	r.doors.waitAPI(t, 30*time.Second)
	r.doors.pushKetch(t, int(want.ketch))
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "every request in, 40 reports delivered and the victim delivering", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests`) == want.requests() && r.delivered(t) >= 40 &&
			chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_reports WHERE status = 'delivering' AND lease_owner = $1`, victim.id) > 0
	})
	victim.freeze(t) // its deliveries stay open: the fakes may take some of them, unrecorded
	held := heldBy(t, conn, victim.id)
	if len(held.ids) == 0 {
		t.Fatal("the victim held no report when it was stopped: the test proves nothing")
	}
	deliveredBefore := r.delivered(t)
	victim.kill9(t)
	killedAt := time.Now()
	putFaults(t, r.doors.ketchURL, `{}`, nil)
	putFaults(t, r.doors.transcendURL, `{}`, nil)

	replacement := r.start(t, "replacement") // on the dead replica's API_LISTEN_ADDR, as a restarted pod
	r.waitDelivered(t, want, reportsLease+30*time.Second)
	t.Logf("kill -9 of %s holding %d reports (%v) with %d of %d delivered: all delivered %v after the kill",
		victim.id, len(held.ids), held.connector, deliveredBefore, want.reports(), time.Since(killedAt).Round(100*time.Millisecond))

	// No one took the dead replica's reports before their lease ended; the replacement
	// delivered every one of them.
	var early, byReplacement int64
	if err := conn.QueryRow(context.Background(), `
SELECT count(*) FILTER (WHERE a.attempted_at < h.lease_end),
       count(*) FILTER (WHERE a.worker = $3 AND a.result IN ('delivered', 'closed'))
FROM unnest($1::bigint[], $2::timestamptz[]) AS h(id, lease_end)
JOIN erasure_report_attempts a ON a.report_id = h.id`, held.ids, held.leaseEnds, replacement.id).Scan(&early, &byReplacement); err != nil {
		t.Fatal(err)
	}
	if early != 0 || byReplacement != int64(len(held.ids)) {
		t.Errorf("of the %d reports the victim held, %d were tried before their lease ended, %d delivered by the replacement; want 0 and all",
			len(held.ids), early, byReplacement)
	}

	allow := reportsAllow{ketchRepeats: held.connector["ketch"], transcendRepeats: held.connector["transcend"]}
	r.checkDelivered(t, want, allow)
	// A repeat only where the victim held a report: per Ketch request, at most as many extra
	// finals as callbacks of it the victim held.
	var bad chaosRowErrors
	for _, uid := range r.ketchUIDs(t) {
		var rec ketchfake.RequestRecord
		getJSON(t, r.doors.ketchURL+"/_fake/requests/"+uid, &rec)
		var extra int64
		for _, cb := range rec.Callbacks {
			if cb.Finals < 1 || cb.Finals > 2 {
				bad.add("ketch request %s: callback %s got %d final events", uid, cb.Name, cb.Finals)
			}
			extra += max(cb.Finals-1, 0)
		}
		if extra > held.byRef["ketch:"+uid] {
			bad.add("ketch request %s: %d repeated final events, but the victim held %d of its reports", uid, extra, held.byRef["ketch:"+uid])
		}
	}
	bad.report(t)
	k, tr := r.doors.ketchStats(t), r.doors.transcendStats(t)
	t.Logf("repeats of what the victim had in flight: ketch %d of %d held, transcend %d of %d held",
		k.DuplicateFinals, held.connector["ketch"], tr.DuplicateReports, held.connector["transcend"])
	r.noLeaks(t, replacement)
	if code, took := replacement.stop(t, 30*time.Second); code != 0 {
		t.Errorf("replacement: exit %d after SIGTERM (took %v)", code, took)
	}
}

// PostgreSQL restarts while reports are being delivered: deliveries in flight finish and are
// recorded once the database is back (the reporter retries the write; the lease, 30s, outlasts
// the outage, so none is sent twice), claims resume by themselves, and every report is
// delivered exactly once.
func TestChaosReportsPostgresRestart(t *testing.T) {
	t.Parallel()
	want := reportsWant{api: 100, ketch: 50, transcend: 100}
	pg := startChaosCluster(t)
	r := newReportsRig(t, int(want.transcend), withDB(pg.url))
	// Slow receivers keep deliveries in flight when the database goes.
	putFaults(t, r.doors.ketchURL, `{"latency":"200ms"}`, nil)
	putFaults(t, r.doors.transcendURL, `{"report":{"latency":"200ms"}}`, nil)
	w := r.start(t, "worker", "LEASE_DURATION=30s", "KNOT_TIMEOUT=2s")
	r.doors.waitAPI(t, 30*time.Second)
	r.doors.pushKetch(t, int(want.ketch))
	r.doors.submitAPI(t, int(want.api))
	conn := r.db(t)
	queuetest.WaitFor(t, time.Minute, "every request in and 40 reports delivered", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests`) == want.requests() && r.delivered(t) >= 40
	})
	before := r.delivered(t)
	if before == want.reports() {
		t.Fatal("every report was delivered before the restart: the test proves nothing")
	}
	conn.Close(t.Context())

	pg.ctl(t, "stop", "-m", "fast")
	stoppedAt := time.Now()
	queuetest.WaitFor(t, 30*time.Second, "/readyz to fail while the database is down", func() bool {
		return w.probe("/readyz") == http.StatusServiceUnavailable
	})
	time.Sleep(3 * time.Second)
	pg.ctl(t, "start")
	t.Logf("database down for %v with %d of %d reports delivered", time.Since(stoppedAt).Round(time.Millisecond), before, want.reports())
	queuetest.WaitFor(t, time.Minute, "/readyz to pass again", func() bool { return w.probe("/readyz") == http.StatusOK })

	took := r.waitDelivered(t, want, time.Minute)
	t.Logf("all %d reports delivered %v after the restart", want.reports(), took.Round(100*time.Millisecond))
	r.checkDelivered(t, want, reportsAllow{})
	k, tr, wh := r.doors.ketchStats(t), r.doors.transcendStats(t), r.doors.webhookStats(t)
	if k.DuplicateFinals != 0 || tr.DuplicateReports != 0 || wh.DuplicateWebhookIDs != 0 {
		t.Errorf("repeated deliveries: ketch %d, transcend %d, webhook %d; want none (the lease outlasts the restart)",
			k.DuplicateFinals, tr.DuplicateReports, wh.DuplicateWebhookIDs)
	}
	// What the operator sees: the reporter says the database went and came back.
	claims, records := len(w.logLines("cannot claim reports; retrying")), len(w.logLines("recording report deliveries failed; retrying"))
	if claims+records == 0 {
		t.Error("the reporter never logged that the database was unreachable while it was down")
	}
	if claims > 0 && len(w.logLines("claiming reports again")) == 0 {
		t.Error("the reporter logged failed claims, but never that it claims again")
	}
	t.Logf("reporter log: %d failed claims, %d failed records", claims, records)
	r.noLeaks(t, w)
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
}
