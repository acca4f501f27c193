package queue_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue"
)

// enqueueLane adds n finished requests (prefix-0..) each with one report in lane.
func (b *testBundle) enqueueLane(t *testing.T, q *queue.Queue, prefix string, lane queue.ReportLane, n int) {
	t.Helper()
	reqs := make([]queue.NewRequest, n)
	for i := range reqs {
		reqs[i] = queue.NewRequest{RequestRef: fmt.Sprintf("%s-%d", prefix, i), ExternalUserID: fmt.Sprintf("%s-user-%d", prefix, i),
			Reports: []queue.NewReport{{Connector: lane.Connector, Lane: lane.Name, Credentials: []byte(`{}`)}}}
	}
	if _, err := q.Enqueue(b.ctx, reqs); err != nil {
		t.Fatal(err)
	}
}

// Reporters claiming lanes at once, each as much as it can: every claim holds only its own
// lane's reports, and between them they claim every report once.
func TestAClaimOfOneLaneNeverReturnsAnotherLanesReports(t *testing.T) {
	q, b := setup(t)
	lanes := []queue.ReportLane{{Connector: "ketch", Name: "a.example"}, {Connector: "ketch", Name: "b.example"},
		{Connector: "ketch"}, {Connector: "webhook"}, {Connector: "webhook", Name: "a.example"}}
	const perLane = 60
	for i, l := range lanes {
		b.enqueueLane(t, q, fmt.Sprintf("lane%d", i), l, perLane)
	}
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)

	var mu sync.Mutex
	claimed := map[int64]queue.ReportLane{}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				l := lanes[(w+i)%len(lanes)]
				got, err := q.ClaimReports(b.ctx, fmt.Sprintf("r%d", w), l, 7, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, r := range got {
					if (queue.ReportLane{Connector: r.Connector, Name: r.Lane}) != l {
						t.Errorf("a claim of lane %+v returned report %d of connector %q, lane %q", l, r.ID, r.Connector, r.Lane)
					}
					if _, twice := claimed[r.ID]; twice {
						t.Errorf("report %d claimed twice", r.ID)
					}
					claimed[r.ID] = l
				}
				done := len(claimed) == perLane*len(lanes)
				mu.Unlock()
				if done || t.Failed() {
					return
				}
			}
		})
	}
	wg.Wait()
	per := map[queue.ReportLane]int{}
	for _, l := range claimed {
		per[l]++
	}
	for _, l := range lanes {
		if per[l] != perLane {
			t.Errorf("lane %+v: %d claimed, want %d", l, per[l], perLane)
		}
	}
}

// DueReportLanes lists the lanes of the connectors asked for that have a report deliverable
// now; a lane whose reports all wait for a retry, a delivered one, or a request still running
// is no lane to start.
func TestDueReportLanesListsTheLanesWithReportsDeliverableNow(t *testing.T) {
	q, b := setup(t)
	due1, due2 := queue.ReportLane{Connector: "ketch", Name: "due.example"}, queue.ReportLane{Connector: "webhook"}
	later := queue.ReportLane{Connector: "ketch", Name: "later.example"}
	done := queue.ReportLane{Connector: "ketch", Name: "done.example"}
	other := queue.ReportLane{Connector: "transcend"}
	for i, l := range []queue.ReportLane{due1, due2, later, done, other} {
		b.enqueueLane(t, q, fmt.Sprintf("lane%d", i), l, 3)
	}
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	b.enqueueLane(t, q, "running", queue.ReportLane{Connector: "ketch", Name: "running.example"}, 2) // not finished: waiting

	for _, c := range []struct {
		lane   queue.ReportLane
		result string
	}{{later, "retry"}, {done, "delivered"}} {
		got, err := q.ClaimReports(b.ctx, "r1", c.lane, 10, time.Minute)
		if err != nil || len(got) != 3 {
			t.Fatalf("claim of %+v: %d (%v)", c.lane, len(got), err)
		}
		results := make([]queue.ReportResult, len(got))
		for i, r := range got {
			results[i] = queue.ReportResult{ID: r.ID, Token: r.Token, Result: c.result, Delay: time.Hour, AttemptedAt: time.Now()}
		}
		if _, err := q.FinishReports(b.ctx, "r1", results); err != nil {
			t.Fatal(err)
		}
	}
	got, err := q.DueReportLanes(b.ctx, []string{"webhook", "ketch"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []queue.ReportLane{due1, due2}; !slices.Equal(got, want) {
		t.Errorf("due lanes %+v; want %+v", got, want)
	}
	// A lane held by a claim is not due until its lease ends.
	if _, err := q.ClaimReports(b.ctx, "r1", due1, 10, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, err := q.DueReportLanes(b.ctx, []string{"webhook", "ketch"}); err != nil || !slices.Equal(got, []queue.ReportLane{due2}) {
		t.Errorf("due lanes after a claim of %+v: %+v (%v); want only %+v", due1, got, err, due2)
	}
	if got, err := q.DueReportLanes(b.ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("due lanes of no connector: %+v (%v); want none", got, err)
	}
}

// The claim reads one lane's due rows through the lane index, and the search for due lanes
// jumps through that index, lane by lane: neither scans the table nor every due row, however
// many there are.
func TestTheClaimAndTheLaneSearchReadTheLaneIndex(t *testing.T) {
	_, b := setup(t)
	// 40 lanes of 500 due reports each, and as many delivered reports.
	if _, err := b.pool.Exec(b.ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at)
SELECT 'req-' || i, 'user-' || i, 'succeeded', 'deleted', 1, now() FROM generate_series(1, 40000) AS i;
INSERT INTO erasure_reports (request_id, connector, lane, status, run_after, ready_at, delivered_at, credentials)
SELECT r.id, CASE WHEN r.id % 40 = 0 THEN 'webhook' ELSE 'ketch' END,
       CASE WHEN r.id % 40 = 0 THEN '' ELSE 'host-' || (r.id % 40) || '.example' END,
       CASE WHEN r.id % 2 = 0 THEN 'pending' ELSE 'delivered' END,
       CASE WHEN r.id % 2 = 0 THEN now() - r.id * interval '1 second' END,
       now(), CASE WHEN r.id % 2 = 1 THEN now() END,
       CASE WHEN r.id % 2 = 0 THEN '{}'::jsonb END
FROM erasure_requests r;
ANALYZE erasure_reports`); err != nil {
		t.Fatal(err)
	}
	for _, st := range []struct {
		name, sql string
		args      []any
	}{
		{"claim", queue.ClaimReportsSQL, []any{"r1", 8, int64(30000), "ketch", "host-3.example"}},
		{"due lanes", queue.DueReportLanesSQL, []any{[]string{"webhook", "ketch", "transcend"}}},
	} {
		plan := b.explain(t, st.sql, st.args...)
		if !strings.Contains(plan, "erasure_reports_lane_due") {
			t.Errorf("%s: the plan does not use erasure_reports_lane_due:\n%s", st.name, plan)
		}
		// Every read of erasure_reports goes through the lane index, or by id to the rows
		// picked, or to the undelivered reports at intake (none here): no other index, no
		// bitmap, no scan of the table.
		for _, line := range strings.Split(plan, "\n") {
			if strings.Contains(line, " on erasure_reports ") && !strings.Contains(line, "using erasure_reports_lane_due ") &&
				!strings.Contains(line, "using erasure_reports_pkey ") && !strings.Contains(line, "Update on") &&
				!strings.Contains(line, "using erasure_reports_intake_undelivered ") {
				t.Errorf("%s reads erasure_reports otherwise than through the lane index: %s\n%s", st.name, strings.TrimSpace(line), plan)
			}
		}
	}
	q := queue.New(b.pool)
	lanes, err := q.DueReportLanes(b.ctx, []string{"ketch", "webhook"})
	if err != nil || len(lanes) != 20 { // the even ids: 20 of the 40 residues
		t.Fatalf("%d due lanes (%v); want 20", len(lanes), err)
	}
}

// oldReleaseClaimSQL is how the release before migration 007 claims reports: every connector
// at once, by erasure_reports_due.
const oldReleaseClaimSQL = `
WITH picked AS (
    SELECT id FROM erasure_reports
    WHERE status IN ('pending', 'delivering') AND run_after <= now()
      AND NOT (connector = ANY($4::text[]))
    ORDER BY run_after, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE erasure_reports rep
SET status = 'delivering',
    lease_owner = $1,
    lease_token = nextval('erasure_claim_token_seq'),
    run_after = now() + $3 * interval '1 millisecond'
FROM picked, erasure_requests r
WHERE rep.id = picked.id AND r.id = rep.request_id
RETURNING rep.id`

// oldReleaseInsertSQL is how it writes a report: without a lane.
const oldReleaseInsertSQL = `
WITH inserted AS (
    INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, 'user') RETURNING id
)
INSERT INTO erasure_reports (request_id, connector, target, credentials)
SELECT id, $2, 0, '{}'::jsonb FROM inserted`

// A database of the release before 007 (with 005's list of connectors, as it was then)
// migrates to 007 during a rolling update: the old release's replicas keep inserting and
// claiming reports, the reports they wrote are in their connector's one lane, and the list of
// connectors is gone, as from a database created since.
func TestMigration007KeepsThePreviousReleaseWorking(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, m, _ := schemaAt(t, 6)
	if !strings.HasPrefix(m.Migrations[6].Name, "007_") {
		t.Fatalf("migration 7 is %v", m.Migrations[6].Name)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`ALTER TABLE erasure_reports ADD CONSTRAINT report_connector_known CHECK (connector IN ('webhook', 'ketch', 'transcend'))`)
	exec(oldReleaseInsertSQL, "before", "ketch")

	if from, to, err := queue.Migrate(ctx, conn); err != nil || from != 6 || int(to) != len(m.Migrations) {
		t.Fatalf("migrate: %d -> %d (%v); want 6 -> %d", from, to, err, len(m.Migrations))
	}
	exec(oldReleaseInsertSQL, "during", "webhook")
	exec(oldReleaseInsertSQL, "new-connector", "onetrust") // no list of connectors any more
	var constraints int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_constraint WHERE conname = 'report_connector_known'`).Scan(&constraints); err != nil || constraints != 0 {
		t.Fatalf("report_connector_known: %d (%v); want it dropped", constraints, err)
	}
	exec(`UPDATE erasure_reports SET status = 'pending', run_after = now(), ready_at = now()`)

	// The old release claims what the old and the new write.
	rows, err := conn.Query(ctx, oldReleaseClaimSQL, "old-replica", 10, 60000, []string{})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(ids) != 3 {
		t.Fatalf("the old release's claim: %v (%v); want 3 reports", ids, err)
	}
	// And the new release finds them in each connector's one lane.
	exec(`UPDATE erasure_reports SET status = 'pending', run_after = now(), lease_owner = NULL, lease_token = NULL`)
	rows, err = conn.Query(ctx, queue.DueReportLanesSQL, []string{"ketch", "webhook", "onetrust"})
	if err != nil {
		t.Fatal(err)
	}
	lanes, err := pgx.CollectRows(rows, pgx.RowToStructByPos[queue.ReportLane])
	want := []queue.ReportLane{{Connector: "ketch"}, {Connector: "onetrust"}, {Connector: "webhook"}}
	if err != nil || !slices.Equal(lanes, want) {
		t.Fatalf("due lanes %+v (%v); want %+v", lanes, err, want)
	}
}
