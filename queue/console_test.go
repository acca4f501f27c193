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
			rows, err := q.ListRequests(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
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
