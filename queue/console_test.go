package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

func TestListRequestsPagesByKeysetWithFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	// 7 pending ketch requests, 5 failed ones by the API, 3 succeeded by the API, one overdue.
	for i := range 7 {
		mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, 'u')`, fmt.Sprintf("ketch:%d", i))
	}
	for i := range 5 {
		mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, completed_at) VALUES ($1, 'u', 'failed', 'rejected', now())`, fmt.Sprintf("f-%d", i))
	}
	for i := range 3 {
		mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, completed_at) VALUES ($1, 'u', 'succeeded', 'deleted', now())`, fmt.Sprintf("s-%d", i))
	}
	mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id, due_at) VALUES ('late', 'u', now() - interval '1 hour')`)

	refs := func(f queue.RequestFilter) []string {
		t.Helper()
		var all []string
		for page := 0; page < 20; page++ {
			page, err := q.ListRequests(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			rows := page.Rows
			for i, r := range rows {
				if i > 0 && r.ID >= rows[i-1].ID {
					t.Fatalf("not newest first: %v", rows)
				}
				all = append(all, r.RequestRef)
			}
			if len(rows) < f.Limit {
				return all
			}
			f.Before = rows[len(rows)-1].ID
		}
		t.Fatal("pagination never ended")
		return nil
	}
	for _, tc := range []struct {
		name string
		f    queue.RequestFilter
		want int
	}{
		{"all", queue.RequestFilter{}, 16},
		{"pending", queue.RequestFilter{Status: queue.StatusPending}, 8},
		{"failed", queue.RequestFilter{Status: queue.StatusFailed}, 5},
		{"rejected", queue.RequestFilter{Outcome: queue.OutcomeRejected}, 5},
		{"rejected but succeeded", queue.RequestFilter{Status: queue.StatusSucceeded, Outcome: queue.OutcomeRejected}, 0},
		{"ketch", queue.RequestFilter{Prefix: "ketch:"}, 7},
		{"no prefix", queue.RequestFilter{NoPrefix: []string{"ketch:", "tr:"}}, 9},
		{"overdue", queue.RequestFilter{Due: queue.DueOverdue}, 1},
		{"due soon", queue.RequestFilter{Due: queue.DueSoon}, 1},
		{"ketch pending", queue.RequestFilter{Prefix: "ketch:", Status: queue.StatusPending}, 7},
	} {
		tc.f.Limit = 3
		if got := refs(tc.f); len(got) != tc.want {
			t.Errorf("%s: %d requests %v, want %d", tc.name, len(got), got, tc.want)
		}
	}
	for _, f := range []queue.RequestFilter{{Status: "gone"}, {Outcome: "maybe"}, {Due: "later"}} {
		if _, err := q.ListRequests(ctx, f); err == nil {
			t.Errorf("%+v: no error", f)
		}
	}
}

func TestIntakeAndDailyFigures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	// Received in order of id, as the intake inserts them: two days ago, then today.
	mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id, received_at, due_at) VALUES ('old', 'u', now() - interval '2 days', now() - interval '1 day')`)
	mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('ketch:a', 'u'), ('ketch:b', 'u'), ('api-1', 'u')`)
	mustExec(t, pool, `UPDATE erasure_requests SET status = 'succeeded', outcome = 'deleted', completed_at = now() WHERE request_ref = 'old'`)

	var now time.Time
	if err := pool.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	in, err := q.IntakeSince(ctx, now.Add(-24*time.Hour), []string{"ketch:", "tr:"})
	if err != nil {
		t.Fatal(err)
	}
	want := []queue.IntakeCount{{"ketch:", 2}, {"tr:", 0}, {"", 1}}
	if fmt.Sprint(in) != fmt.Sprint(want) {
		t.Errorf("intake %v, want %v", in, want)
	}

	days, err := q.Daily(ctx, 60, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(days) != 60 || !days[59].Date.Equal(now.UTC().Truncate(24*time.Hour)) {
		t.Fatalf("%d days ending %v", len(days), days[len(days)-1].Date)
	}
	var received, finished, due int64
	for _, d := range days {
		received, finished, due = received+d.Received, finished+d.Finished, due+d.Due
	}
	if received != 4 || finished != 1 || due != 1 || days[59].Received < 3 || days[59].Finished != 1 {
		t.Errorf("received %d finished %d due %d (today %+v), want 4, 1, 1", received, finished, due, days[59])
	}
}

func TestLookupStoryTellsPseudonymisationAndReportAttempts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, completed_at, pseudonymised_at)
	    VALUES ('r', 'hmac-sha256:'||repeat('a', 64), 'succeeded', 'deleted', now(), now())`)
	mustExec(t, pool, `INSERT INTO erasure_reports (request_id, connector, status, attempts, ready_at, delivered_at) SELECT id, 'ketch', 'delivered', 2, now(), now() FROM erasure_requests`)
	mustExec(t, pool, `INSERT INTO erasure_report_attempts (report_id, attempted_at, worker, duration_ms, http_status, result) SELECT id, now() - interval '1 second', 'w', 5, 503, 'retry' FROM erasure_reports`)
	mustExec(t, pool, `INSERT INTO erasure_report_attempts (report_id, attempted_at, worker, duration_ms, http_status, result) SELECT id, now(), 'w', 5, 204, 'delivered' FROM erasure_reports`)
	s, err := q.LookupStory(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if s.PseudonymisedAt.IsZero() || len(s.ReportAttempts) != 2 || s.ReportAttempts[0].Result != "retry" || s.ReportAttempts[1].HTTPStatus != 204 {
		t.Errorf("story %+v", s)
	}
	if _, err := q.LookupStory(ctx, "nothing"); err != queue.ErrNotFound {
		t.Errorf("unknown ref: %v", err)
	}
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// A page filtered by source looks at a bounded window of ids and says where it stopped, so that
// a rare door's page never walks the whole table; the pages that follow reach every match.
func TestListRequestsBySourceSearchesAWindowOfIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	mustExec(t, pool, `INSERT INTO erasure_requests (id, request_ref, external_user_id) OVERRIDING SYSTEM VALUE
	    VALUES (1, 'onetrust:old', 'u'), (2, 'api-2', 'u'), (500000, 'onetrust:new', 'u'), (500001, 'api-500001', 'u')`)
	f := queue.RequestFilter{Prefix: "onetrust:", Limit: 3}
	var got []string
	var windows []int64
	for range 10 {
		page, err := q.ListRequests(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Rows {
			got = append(got, r.RequestRef)
		}
		windows = append(windows, page.SearchedTo)
		if page.SearchedTo == 0 {
			break
		}
		f.Before = page.SearchedTo
	}
	if fmt.Sprint(got) != "[onetrust:new onetrust:old]" || fmt.Sprint(windows) != "[300002 100002 0]" {
		t.Errorf("refs %v, windows ending at %v; want [onetrust:new onetrust:old] and [300002 100002 0]", got, windows)
	}
	// Open requests are read through their indexes, without a window.
	page, err := q.ListRequests(ctx, queue.RequestFilter{Prefix: "onetrust:", Status: queue.StatusPending, Limit: 3})
	if err != nil || len(page.Rows) != 2 || page.SearchedTo != 0 {
		t.Errorf("pending onetrust requests: %+v, %v", page, err)
	}
}

func TestReportBacklogsCountTheUndeliveredReports(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id) SELECT 'r-' || i, 'u' FROM generate_series(1, 6) AS i`)
	mustExec(t, pool, `INSERT INTO erasure_reports (request_id, connector, status, ready_at, delivered_at, run_after, attempts, last_error, last_result, lease_owner, lease_token)
	    SELECT r.id, v.connector, v.status, CASE WHEN v.status <> 'waiting' THEN now() - v.age END,
	           CASE WHEN v.status = 'delivered' THEN now() END,
	           CASE WHEN v.status IN ('pending', 'delivering') THEN now() END, v.attempts, v.err, v.result,
	           CASE WHEN v.status = 'delivering' THEN 'w' END, CASE WHEN v.status = 'delivering' THEN 1 END
	    FROM (VALUES ('r-1', 'ketch', 'waiting', interval '0', 0, NULL, NULL),
	                 ('r-2', 'ketch', 'pending', interval '1 hour', 2, 'the receiver answered 503', 'retry'),
	                 ('r-3', 'ketch', 'delivered', interval '1 day', 1, NULL, 'delivered'),
	                 ('r-4', 'fides', 'failed', interval '1 day', 5, 'the receiver answered 400', 'rejected'),
	                 ('r-5', 'fides', 'delivering', interval '2 hours', 0, NULL, NULL),
	                 ('r-6', 'webhook', 'delivered', interval '1 day', 1, NULL, 'delivered'))
	         AS v(ref, connector, status, age, attempts, err, result)
	    JOIN erasure_requests r ON r.request_ref = v.ref`)
	got, err := q.ReportBacklogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Connector != "fides" || got[1].Connector != "ketch" {
		t.Fatalf("backlogs %+v, want fides and ketch only", got)
	}
	fides, ketch := got[0], got[1]
	if fides.Failed != 1 || fides.Delivering != 1 || fides.LastError != "the receiver answered 400" || fides.OldestPending.IsZero() {
		t.Errorf("fides %+v", fides)
	}
	if ketch.Waiting != 1 || ketch.Pending != 1 || ketch.RetriesPending != 1 || ketch.Failed != 0 || ketch.LastError != "the receiver answered 503" {
		t.Errorf("ketch %+v", ketch)
	}
}

// The rate used counts the calls started in the last window, not a refusal to call, and says
// when the rows it may read ran out before the window did.
func TestRecentCallsCountTheLastWindowsCalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	mustExec(t, pool, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('r', 'u')`)
	mustExec(t, pool, `
INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, result)
SELECT (SELECT id FROM erasure_requests), n, 'w', started, 100, status, result
FROM (VALUES (1, now() - interval '2 minutes', 200, 'deleted'),
             (2, now() - interval '50 seconds', 500, 'retryable'),
             (3, now() - interval '40 seconds', 429, 'rate_limited'),
             (4, now() - interval '30 seconds', NULL, 'invalid'),
             (5, now() - interval '10 seconds', 200, 'deleted')) AS a(n, started, status, result)`)
	for _, tc := range []struct {
		limit   int
		want    int64
		atLeast bool
	}{{100, 3, false}, {5, 3, false}, {2, 1, true}} {
		rc, err := q.ReadRecentCalls(ctx, time.Minute, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if rc.Calls != tc.want || rc.AtLeast != tc.atLeast || rc.Window != time.Minute {
			t.Errorf("reading at most %d rows: %+v; want %d calls, at least %t", tc.limit, rc, tc.want, tc.atLeast)
		}
	}
}
