//go:build bench

package main

import (
	"context"
	"fmt"
	"html"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// 13. The console's pages at ten million finished requests, through the real binary.
//
// The dataset: benchConsoleRows finished requests received evenly over two years (ids in order
// of receipt, as the intake writes them), 3 % failed, 12 % not found, the rest deleted; refs by
// door: 30 % ketch:, 20 % transcend:, 15 % fides:, 0.1 % onetrust: (the rare door), the rest
// unprefixed (the API); the raw id of every request finished more than 7 days ago pseudonymised
// (IDENTIFIER_RETENTION's default); one call to Knot per request; a report for 30 % of them (99 %
// delivered, 1 % failed), each with one delivery attempt; then 1,000 pending requests, 200 of
// them overdue, each with a waiting report.
const (
	benchConsoleRows    = 10_000_000
	benchConsoleChunk   = 1_000_000
	benchConsolePending = 1000
	benchConsoleSamples = 200
	benchConsoleWarmup  = 10
	benchConsoleGoal    = 200 * time.Millisecond
)

// benchConsoleRequestsSQL inserts the finished requests $1..$2, received from $3 on, one every
// $4 microseconds.
const benchConsoleRequestsSQL = `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, run_after,
                              received_at, due_at, completed_at, last_error_code, last_error, pseudonymised_at)
SELECT ref, CASE WHEN done < now() - interval '7 days' THEN 'hmac-sha256:' || md5(i::text) || md5(ref) ELSE 'person-' || i END,
       CASE WHEN f THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN f THEN (ARRAY['rejected', 'invalid', 'exhausted'])[1 + i % 3]
            WHEN (i * 31) % 100 < 12 THEN 'not_found' ELSE 'deleted' END,
       1, rcv, rcv, rcv + interval '30 days', done,
       CASE WHEN f THEN 'INVALID_FIELD' END, CASE WHEN f THEN 'Knot refused the request' END,
       CASE WHEN done < now() - interval '7 days' THEN done + interval '7 days' END
FROM generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT $3::timestamptz + (i - 1) * $4::bigint * interval '1 microsecond' AS rcv,
                     (i * 7919) % 100 < 3 AS f,
                     CASE WHEN (i * 104729) % 1000 < 300 THEN 'ketch:'
                          WHEN (i * 104729) % 1000 < 500 THEN 'transcend:'
                          WHEN (i * 104729) % 1000 < 650 THEN 'fides:'
                          WHEN (i * 104729) % 1000 = 650 THEN 'onetrust:'
                          ELSE 'api-' END || lpad(i::text, 9, '0') AS ref) AS a,
     LATERAL (SELECT least(rcv + ((i * 48271) % 172800) * interval '1 second', now()) AS done) AS b`

// benchConsoleCallsSQL gives each request of ids $1..$2 its call to Knot.
const benchConsoleCallsSQL = `
INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, error_code, result)
SELECT id, 1, 'worker-' || (id % 4), completed_at - interval '200 milliseconds', 150 + id % 300,
       CASE outcome WHEN 'deleted' THEN 200 WHEN 'not_found' THEN 404 WHEN 'rejected' THEN 422 WHEN 'exhausted' THEN 503 END,
       CASE WHEN status = 'failed' THEN last_error_code END,
       CASE outcome WHEN 'deleted' THEN 'deleted' WHEN 'not_found' THEN 'not_found' WHEN 'rejected' THEN 'permanent'
                    WHEN 'invalid' THEN 'invalid' ELSE 'retryable' END
FROM erasure_requests WHERE id BETWEEN $1 AND $2`

// benchConsoleReportsSQL gives 30 % of the requests of ids $1..$2 a report to their door's
// connector (the API's to webhook), then each report its delivery attempt.
const benchConsoleReportsSQL = `
WITH reps AS (
    INSERT INTO erasure_reports (request_id, connector, status, attempts, ready_at, delivered_at, last_result, last_http_status, last_error)
    SELECT id, CASE WHEN strpos(request_ref, ':') > 0 THEN split_part(request_ref, ':', 1) ELSE 'webhook' END,
           CASE WHEN id % 300 = 2 THEN 'failed' ELSE 'delivered' END, 1, completed_at,
           CASE WHEN id % 300 = 2 THEN NULL ELSE completed_at + interval '1 second' END,
           CASE WHEN id % 300 = 2 THEN 'rejected' ELSE 'delivered' END,
           CASE WHEN id % 300 = 2 THEN 400 ELSE 204 END,
           CASE WHEN id % 300 = 2 THEN 'the receiver answered 400' END
    FROM erasure_requests WHERE id BETWEEN $1 AND $2 AND id % 10 < 3
    RETURNING id, ready_at, status
)
INSERT INTO erasure_report_attempts (report_id, attempted_at, worker, duration_ms, http_status, result, error)
SELECT id, ready_at + interval '1 second', 'worker-1', 40, CASE status WHEN 'failed' THEN 400 ELSE 204 END,
       CASE status WHEN 'failed' THEN 'rejected' ELSE 'delivered' END,
       CASE status WHEN 'failed' THEN 'the receiver answered 400' END
FROM reps`

// benchConsolePendingSQL adds the open requests, the first $1 of them overdue, each with a
// waiting report.
const benchConsolePendingSQL = `
WITH reqs AS (
    INSERT INTO erasure_requests (request_ref, external_user_id, received_at, due_at)
    SELECT 'ketch:open-' || lpad(i::text, 6, '0'), 'person-open-' || i,
           now() - interval '1 hour' * (1000 - i) / 100, CASE WHEN i <= $1 THEN now() - interval '1 day' ELSE now() + interval '20 days' END
    FROM generate_series(1, $2::int) AS i
    RETURNING id
)
INSERT INTO erasure_reports (request_id, connector) SELECT id, 'ketch' FROM reqs`

func benchConsole(t *testing.T, r *benchReport) {
	ctx := context.Background()
	dbURL := queuetest.URL(t)
	conn := connect(t, dbURL)
	tables := []string{"erasure_requests", "erasure_attempts", "erasure_reports", "erasure_report_attempts"}
	for _, tbl := range tables {
		benchExec(t, conn, `ALTER TABLE `+tbl+` SET (autovacuum_enabled = false)`)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, dbURL)
		if err == nil {
			_, _ = c.Exec(ctx, `TRUNCATE erasure_requests CASCADE`)
			c.Close(ctx)
		}
	})

	// The dataset, built once.
	buildStart := time.Now()
	var now time.Time
	if err := conn.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	span := 730 * 24 * time.Hour
	first := now.Add(-span)
	step := (span - time.Hour).Microseconds() / benchConsoleRows
	for from := int64(1); from <= benchConsoleRows; from += benchConsoleChunk {
		to := min(from+benchConsoleChunk-1, benchConsoleRows)
		benchExec(t, conn, benchConsoleRequestsSQL, from, to, first, step)
		benchExec(t, conn, benchConsoleCallsSQL, from, to)
		benchExec(t, conn, benchConsoleReportsSQL, from, to)
	}
	benchExec(t, conn, benchConsolePendingSQL, 200, benchConsolePending)
	inserted := time.Since(buildStart)
	for _, tbl := range tables {
		benchExec(t, conn, `VACUUM (ANALYZE) `+tbl)
	}
	built := time.Since(buildStart)
	var sizes string
	if err := conn.QueryRow(ctx, `
SELECT format('requests %s (with indexes %s), calls %s, reports %s, report attempts %s',
    pg_size_pretty(pg_relation_size('erasure_requests')), pg_size_pretty(pg_total_relation_size('erasure_requests')),
    pg_size_pretty(pg_total_relation_size('erasure_attempts')), pg_size_pretty(pg_total_relation_size('erasure_reports')),
    pg_size_pretty(pg_total_relation_size('erasure_report_attempts')))`).Scan(&sizes); err != nil {
		t.Fatal(err)
	}
	var counts [4]int64
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM erasure_requests WHERE status = 'failed'),
	    (SELECT count(*) FROM erasure_requests WHERE request_ref LIKE 'onetrust:%'),
	    (SELECT count(*) FROM erasure_reports), (SELECT count(*) FROM erasure_attempts)`).Scan(&counts[0], &counts[1], &counts[2], &counts[3]); err != nil {
		t.Fatal(err)
	}
	t.Logf("dataset built in %v (inserts %v): %s; failed %d, onetrust %d, reports %d, calls %d",
		built.Round(time.Second), inserted.Round(time.Second), sizes, counts[0], counts[1], counts[2], counts[3])
	r.note("**13.** Dataset: %s finished requests received evenly over 730 days (ids in order of receipt), %d failed, "+
		"12 %% of the rest not found; refs 30 %% `ketch:`, 20 %% `transcend:`, 15 %% `fides:`, 0.1 %% `onetrust:` (%d, the rare door), "+
		"the rest unprefixed; the raw id of each request finished over 7 days ago pseudonymised (IDENTIFIER_RETENTION's default); "+
		"one call per request (%d rows); %d reports (30 %% of the requests, 1 %% of them failed, the rest delivered), each with one "+
		"delivery attempt; then %d pending requests (200 overdue), each with a waiting report. Built by INSERT … SELECT "+
		"generate_series in chunks of %s, then VACUUM (ANALYZE), autovacuum off: %v (inserts %v); %s.",
		benchCount(benchConsoleRows), counts[0], counts[1], counts[3], counts[2], benchConsolePending, benchCount(benchConsoleChunk),
		built.Round(time.Second), inserted.Round(time.Second), sizes)

	// The console, as a process, behind bcrypt basic auth, reading through a SELECT-only role.
	dir := t.TempDir()
	const user, password = "dpo", "correct horse battery staple"
	hash, err := bcrypt.GenerateFromPassword([]byte(password), 10) // htpasswd -nbBC 10, as the README says
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	writeFile(t, webConfig, fmt.Sprintf("basic_auth_users:\n  %s: %s\n", user, hash))
	addr := freeAddr(t)
	base := "http://" + addr
	env := append(os.Environ(), "DATABASE_URL="+readOnlyRole(t, conn, dbURL), "CONSOLE_LISTEN_ADDR="+addr,
		"CONSOLE_WEB_CONFIG_FILE="+webConfig, "IDENTIFIER_KEY_FILE="+identifierKeyFile(t), "LOG_FORMAT=json")
	started := time.Now()
	proc := start(t, "console", env, binary(t, "erasure-worker"), "console")
	queuetest.WaitFor(t, 30*time.Second, "the console to serve", func() bool {
		return strings.Contains(proc.out.String(), "serving the console")
	})

	client := &http.Client{Timeout: 5 * time.Minute}
	get := func(method, path string, body url.Values) (int, string, time.Duration) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			rd = strings.NewReader(body.Encode())
		}
		req, err := http.NewRequest(method, base+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth(user, password)
		if body != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", base)
		}
		began := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(began)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d\n%.2000s", method, path, resp.StatusCode, b)
		}
		return resp.StatusCode, string(b), took
	}
	// measure times n requests of next() after warm unmeasured ones.
	measure := func(warm, n int, next func(i int) (string, string, url.Values), check func(body string) error) []time.Duration {
		t.Helper()
		for i := range warm {
			m, p, b := next(-1 - i)
			get(m, p, b)
		}
		lat := make([]time.Duration, 0, n)
		for i := range n {
			m, p, b := next(i)
			_, body, took := get(m, p, b)
			if check != nil {
				if err := check(body); err != nil {
					t.Fatalf("%s %s: %v", m, p, err)
				}
			}
			lat = append(lat, took)
		}
		slices.Sort(lat)
		return lat
	}
	page := func(path string) func(int) (string, string, url.Values) {
		return func(int) (string, string, url.Values) { return http.MethodGet, path, nil }
	}
	pq := func(lat []time.Duration) string {
		return fmt.Sprintf("%s / %s", benchMs(benchPercentile(lat, 0.50)), benchMs(benchPercentile(lat, 0.99)))
	}
	meets := func(lat []time.Duration) bool { return benchPercentile(lat, 0.99) <= benchConsoleGoal }
	goal := fmt.Sprintf("p99 ≤ %v", benchConsoleGoal)

	// The overview first, as it comes after a start: its first load is among those timed, and
	// they run while the chart's figures are computed, whatever that costs the database.
	var chartAfter time.Duration
	overviewCheck := func(body string) error {
		if !strings.Contains(body, "Open (pending)") {
			return fmt.Errorf("not the overview")
		}
		if chartAfter == 0 && strings.Contains(body, `<svg role="img"`) {
			chartAfter = time.Since(started)
		}
		return nil
	}
	_, body, firstLoad := get(http.MethodGet, "/", nil)
	if err := overviewCheck(body); err != nil {
		t.Fatal(err)
	}
	overview := measure(0, benchConsoleSamples-1, page("/"), overviewCheck)
	overview = append(overview, firstLoad)
	slices.Sort(overview)

	// The floors: a bare round trip to the stylesheet (HTTP, basic auth, the console's handler),
	// and each page's main statement sent by the queue package in this process.
	css := measure(benchConsoleWarmup, benchConsoleSamples, page("/style.css"), nil)
	pool := benchPool(t, dbURL, nil)
	q := queue.New(pool)
	bare := func(warm, n int, f func(i int) error) []time.Duration {
		t.Helper()
		for i := range warm {
			if err := f(-1 - i); err != nil {
				t.Fatal(err)
			}
		}
		lat := make([]time.Duration, 0, n)
		for i := range n {
			began := time.Now()
			if err := f(i); err != nil {
				t.Fatal(err)
			}
			lat = append(lat, time.Since(began))
		}
		slices.Sort(lat)
		return lat
	}
	floor := func(lat []time.Duration) string { return "bare statement " + pq(lat) + "; style.css " + pq(css) }

	overviewBare := bare(benchConsoleWarmup, benchConsoleSamples, func(int) error { _, err := q.Stats(ctx); return err })
	r.info("13", "console floor: GET /style.css through basic auth, p50 / p99", pq(css))
	if !r.judge("13", "console `/` (overview), 10M finished: p50 / p99", pq(overview), goal, meets(overview)) {
		r.missed("13. The overview", fmt.Sprintf("p50 / p99 %s; floor %s", pq(overview), floor(overviewBare)))
	}
	r.info("13", "console `/`: its first load, right after the start", benchMs(firstLoad))
	r.info("13", "console `/`: the queue's gauges alone (`queue.Stats`), p50 / p99", pq(overviewBare))
	if chartAfter > 0 {
		r.info("13", "console `/`: the chart first shown, after the console started", benchMs(chartAfter))
	} else {
		r.info("13", "console `/`: the chart first shown, after the console started", fmt.Sprintf("not within the %d loads timed", benchConsoleSamples))
	}

	// The list pages.
	rows := regexp.MustCompile(`href="/requests/[^"]+"`)
	nextRE := regexp.MustCompile(`<a href="([^"]+)" rel="next">`)
	listCheck := func(want int) func(string) error {
		return func(body string) error {
			if n := len(rows.FindAllString(body, -1)); n < want {
				return fmt.Errorf("%d requests listed, want %d or more", n, want)
			}
			return nil
		}
	}
	list := func(name, path string, f queue.RequestFilter, want int) {
		t.Helper()
		lat := measure(benchConsoleWarmup, benchConsoleSamples, page(path), listCheck(want))
		f.Limit = 51
		b := bare(benchConsoleWarmup, benchConsoleSamples, func(int) error { _, err := q.ListRequests(ctx, f); return err })
		r.judge("13", fmt.Sprintf("console `%s` (%s): p50 / p99", path, name), pq(lat), goal, meets(lat))
		r.info("13", fmt.Sprintf("console `%s`: floor", path), floor(b))
	}
	list("page 1", "/requests", queue.RequestFilter{}, 50)
	list("failed, page 1", "/requests?status=failed", queue.RequestFilter{Status: queue.StatusFailed}, 50)
	// The 5th page of the failed requests, reached by following "Older requests".
	path := "/requests?status=failed"
	for range 4 {
		_, body, _ := get(http.MethodGet, path, nil)
		m := nextRE.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("%s has no link to older requests", path)
		}
		path = html.UnescapeString(m[1])
	}
	after, err := url.ParseQuery(strings.TrimPrefix(path, "/requests?"))
	if err != nil {
		t.Fatal(err)
	}
	var before int64
	fmt.Sscan(after.Get("after"), &before)
	list("failed, page 5", path, queue.RequestFilter{Status: queue.StatusFailed, Before: before}, 50)
	list("the rare door, 0.1 %", "/requests?source=onetrust", queue.RequestFilter{Prefix: "onetrust:"}, 1)

	// A request's page: random refs, each asked once.
	rnd := rand.New(rand.NewPCG(13, 13))
	ids := make([]int64, benchConsoleSamples+benchConsoleWarmup)
	for i := range ids {
		ids[i] = 1 + rnd.Int64N(benchConsoleRows)
	}
	refRows, err := conn.Query(ctx, `SELECT request_ref FROM erasure_requests WHERE id = ANY($1) ORDER BY random()`, ids)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := pgx.CollectRows(refRows, pgx.RowTo[string])
	if err != nil || len(refs) < benchConsoleSamples+benchConsoleWarmup {
		t.Fatalf("%d refs: %v", len(refs), err)
	}
	story := measure(benchConsoleWarmup, benchConsoleSamples, func(i int) (string, string, url.Values) {
		if i < 0 {
			return http.MethodGet, "/requests/" + url.PathEscape(refs[benchConsoleSamples-1-i]), nil
		}
		return http.MethodGet, "/requests/" + url.PathEscape(refs[i]), nil
	}, func(body string) error {
		if !strings.Contains(body, "Each claim and call to Knot") {
			return fmt.Errorf("the page shows no call")
		}
		return nil
	})
	rnd.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
	storyBare := bare(benchConsoleWarmup, benchConsoleSamples, func(i int) error {
		_, err := q.LookupStory(ctx, refs[(i+len(refs))%len(refs)])
		return err
	})
	r.judge("13", "console `/requests/{ref}` (random refs, each once): p50 / p99", pq(story), goal, meets(story))
	r.info("13", "console `/requests/{ref}`: floor", floor(storyBare))

	// The goal-less pages: a person's requests (a scan of the table) and a day's evidence.
	const fewer = 10
	people := measure(1, fewer, func(i int) (string, string, url.Values) {
		return http.MethodPost, "/people", url.Values{"external_user_id": {fmt.Sprintf("person-%d", benchConsoleRows-int64(i+2))}}
	}, nil)
	peopleBare := bare(1, fewer, func(i int) error {
		_, err := q.LookupByExternalUserID(ctx, []string{fmt.Sprintf("person-%d", benchConsoleRows-int64(i+2))})
		return err
	})
	r.info("13", fmt.Sprintf("console `POST /people` (%d look-ups): p50 / max", fewer),
		fmt.Sprintf("%s / %s", benchMs(benchPercentile(people, 0.5)), benchMs(people[len(people)-1])))
	r.info("13", "console `POST /people`: floor, p50 / max",
		fmt.Sprintf("bare statement %s / %s", benchMs(benchPercentile(peopleBare, 0.5)), benchMs(peopleBare[len(peopleBare)-1])))
	day := now.AddDate(0, 0, -100).UTC().Format(time.DateOnly)
	var dayRows int
	evidence := measure(1, 5, page("/evidence.csv?from="+day+"&to="+day), func(body string) error {
		dayRows = strings.Count(body, "\n") - 1
		if dayRows < 1000 {
			return fmt.Errorf("%d rows", dayRows)
		}
		return nil
	})
	r.info("13", fmt.Sprintf("console `/evidence.csv` of one day (%d rows, 5 exports): p50 / max", dayRows),
		fmt.Sprintf("%s / %s", benchMs(benchPercentile(evidence, 0.5)), benchMs(evidence[len(evidence)-1])))

	r.note("**13.** `erasure-worker console` as a process (built without the race detector), behind a web configuration "+
		"with a bcrypt hash of cost 10, reading through a SELECT-only role; each page asked over HTTP with basic auth by one "+
		"client with keep-alive, timed from the request to the last byte of the body. The overview is asked %d times from "+
		"the console's start, its first load included, while the chart's figures are computed; every other page %d times "+
		"after %d unmeasured loads (a request's page: %d random refs, each once; `POST /people` %d times, `/evidence.csv` 5). "+
		"Floors, in the same run: a bare GET /style.css through the same auth, and each page's main statement sent by the "+
		"queue package from the test process (the overview's: `queue.Stats`).",
		benchConsoleSamples, benchConsoleSamples, benchConsoleWarmup, benchConsoleSamples, fewer)
	if code, _ := proc.stop(t, 15*time.Second); code != 0 {
		t.Errorf("console exited %d", code)
	}
}
