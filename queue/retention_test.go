package queue_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/worker"
)

const (
	week      = 7 * 24 * time.Hour
	twoYears  = 730 * 24 * time.Hour
	aMinute   = time.Minute
	retainIDs = week
)

var testKeys = worker.NewIdentifierKeys([]byte("retention-test-key-0123456789abcdef"))

// finishedRequests enqueues one request per ref (external_user_id "person-"+ref), claims them
// all and finishes each with tr, and returns their ids by ref.
func (b *testBundle) finishedRequests(t *testing.T, q *queue.Queue, tr queue.Transition, outcome string, refs ...string) map[string]int64 {
	t.Helper()
	reqs := make([]queue.NewRequest, len(refs))
	for i, ref := range refs {
		reqs[i] = queue.NewRequest{RequestRef: ref, ExternalUserID: "person-" + ref}
	}
	if _, err := q.Enqueue(b.ctx, reqs); err != nil {
		t.Fatal(err)
	}
	finishAll(t, q, b, tr, outcome)
	return b.ids(t, refs...)
}

func (b *testBundle) ids(t *testing.T, refs ...string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, ref := range refs {
		var id int64
		if err := b.pool.QueryRow(b.ctx, `SELECT id FROM erasure_requests WHERE request_ref = $1`, ref).Scan(&id); err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		out[ref] = id
	}
	return out
}

// finishedAgo back-dates a finished request's completion.
func (b *testBundle) finishedAgo(t *testing.T, id int64, ago time.Duration) {
	t.Helper()
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET completed_at = now() - $2 * interval '1 millisecond' WHERE id = $1`,
		id, ago.Milliseconds()); err != nil {
		t.Fatal(err)
	}
}

func (b *testBundle) userID(t *testing.T, id int64) (string, bool) {
	t.Helper()
	var uid string
	var pseudonymised bool
	if err := b.pool.QueryRow(b.ctx, `SELECT external_user_id, pseudonymised_at IS NOT NULL FROM erasure_requests WHERE id = $1`, id).
		Scan(&uid, &pseudonymised); err != nil {
		t.Fatal(err)
	}
	return uid, pseudonymised
}

// pseudonymiseDue does what the worker's purge does: read the due ids, compute their
// pseudonyms, write them.
func pseudonymiseDue(t *testing.T, q *queue.Queue, b *testBundle, after time.Duration, keys worker.IdentifierKeys) int64 {
	t.Helper()
	due, err := q.ToPseudonymise(b.ctx, after, queue.RetentionCursor{}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var batch []queue.Pseudonym
	for _, d := range due {
		if !d.Held {
			batch = append(batch, queue.Pseudonym{ID: d.ID, Raw: d.ExternalUserID, Pseudonym: keys.Pseudonym(d.ExternalUserID)})
		}
	}
	n, err := q.Pseudonymise(b.ctx, after, batch)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(batch)) {
		t.Fatalf("pseudonymised %d of the %d due", n, len(batch))
	}
	return n
}

func TestIDsArePseudonymisedRightAfterTheirRetentionAndNeverBefore(t *testing.T) {
	q, b := setup(t)
	done := b.finishedRequests(t, q, queue.Succeed, queue.OutcomeDeleted, "due", "almost", "fresh")
	failed := b.finishedRequests(t, q, queue.Fail, queue.OutcomeRejected, "failed-due")
	b.finishedAgo(t, done["due"], retainIDs+aMinute)
	b.finishedAgo(t, done["almost"], retainIDs-aMinute)
	b.finishedAgo(t, failed["failed-due"], retainIDs+aMinute)
	// Open requests, received long ago: they keep their ids whatever their age.
	b.insert(t, 2)
	if _, err := q.Claim(b.ctx, "w1", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET received_at = now() - interval '3 years' WHERE status IN ('pending', 'running')`); err != nil {
		t.Fatal(err)
	}

	if n := pseudonymiseDue(t, q, b, retainIDs, testKeys); n != 2 {
		t.Fatalf("pseudonymised %d, want the 2 finished more than a week ago", n)
	}
	for ref, id := range map[string]int64{"due": done["due"], "failed-due": failed["failed-due"]} {
		uid, ok := b.userID(t, id)
		if !ok || uid != testKeys.Pseudonym("person-"+ref) {
			t.Errorf("%s: external_user_id %q (pseudonymised %v), want its HMAC %q", ref, uid, ok, testKeys.Pseudonym("person-"+ref))
		}
	}
	for _, ref := range []string{"almost", "fresh"} {
		if uid, ok := b.userID(t, done[ref]); ok || uid != "person-"+ref {
			t.Errorf("%s, finished less than a week ago: external_user_id %q (pseudonymised %v), want it raw", ref, uid, ok)
		}
	}
	if n := b.count(t, `status IN ('pending', 'running') AND (pseudonymised_at IS NOT NULL OR external_user_id NOT LIKE 'user-%')`); n != 0 {
		t.Errorf("%d open requests lost their id", n)
	}

	// A look-up by id still finds the request, through the pseudonyms under every key.
	var ref string
	err := b.pool.QueryRow(b.ctx, `SELECT request_ref FROM erasure_requests WHERE external_user_id = ANY($1)`,
		append([]string{"person-due"}, testKeys.Pseudonyms("person-due")...)).Scan(&ref)
	if err != nil || ref != "due" {
		t.Errorf("look-up of person-due: %q, %v; want request due", ref, err)
	}

	// A minute later "almost" is due too; a second run changes nothing else.
	b.finishedAgo(t, done["almost"], retainIDs+aMinute)
	if n := pseudonymiseDue(t, q, b, retainIDs, testKeys); n != 1 {
		t.Errorf("second run pseudonymised %d, want 1 (almost)", n)
	}
}

func TestTheSchemaKeepsOpenRequestsIdentified(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 2)
	if _, err := q.Claim(b.ctx, "w1", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	pseudonym := testKeys.Pseudonym("user-0")
	for _, status := range []string{queue.StatusPending, queue.StatusRunning} {
		_, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET external_user_id = $1, pseudonymised_at = now() WHERE status = $2`, pseudonym, status)
		if constraint(err) != "pseudonymised_only_when_finished" {
			t.Errorf("pseudonymising a %s request: %v, want the constraint pseudonymised_only_when_finished to refuse it", status, err)
		}
	}

	done := b.finishedRequests(t, q, queue.Fail, queue.OutcomeRejected, "f")
	_, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET pseudonymised_at = now() WHERE id = $1`, done["f"])
	if constraint(err) != "pseudonymised_holds_a_pseudonym" {
		t.Errorf("marking a raw id pseudonymised: %v, want pseudonymised_holds_a_pseudonym to refuse it", err)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET external_user_id = $2, pseudonymised_at = now() WHERE id = $1`,
		done["f"], testKeys.Pseudonym("person-f")); err != nil {
		t.Fatal(err)
	}
	// Whatever writes it, a pseudonymised request never becomes pending again.
	_, err = b.pool.Exec(b.ctx, `UPDATE erasure_requests SET status = 'pending', outcome = NULL, completed_at = NULL WHERE id = $1`, done["f"])
	if constraint(err) != "pseudonymised_only_when_finished" {
		t.Errorf("putting a pseudonymised request back to pending: %v, want pseudonymised_only_when_finished to refuse it", err)
	}
}

func constraint(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.ConstraintName
	}
	return ""
}

func TestPseudonymiseSkipsRowsThatChangedSinceTheyWereRead(t *testing.T) {
	q, b := setup(t)
	done := b.finishedRequests(t, q, queue.Fail, queue.OutcomeRejected, "requeued", "renamed", "kept")
	for _, id := range done {
		b.finishedAgo(t, id, retainIDs+aMinute)
	}
	due, err := q.ToPseudonymise(b.ctx, retainIDs, queue.RetentionCursor{}, 10)
	if err != nil || len(due) != 3 {
		t.Fatalf("due %v, %v; want the three", due, err)
	}
	// Meanwhile a person requeues one (now pending), and the batch's guess of another's id is
	// stale: both are skipped, and nothing refuses the batch.
	if n, err := q.Requeue(b.ctx, queue.RequeueFilter{Refs: []string{"requeued"}}); err != nil || n != 1 {
		t.Fatalf("requeue: %d, %v", n, err)
	}
	batch := make([]queue.Pseudonym, len(due))
	for i, d := range due {
		raw := d.ExternalUserID
		if d.ID == done["renamed"] {
			raw = "someone-else"
		}
		batch[i] = queue.Pseudonym{ID: d.ID, Raw: raw, Pseudonym: testKeys.Pseudonym(d.ExternalUserID)}
	}
	n, err := q.Pseudonymise(b.ctx, retainIDs, batch)
	if err != nil || n != 1 {
		t.Fatalf("pseudonymised %d (%v), want only kept", n, err)
	}
	for ref, want := range map[string]bool{"requeued": false, "renamed": false, "kept": true} {
		if _, got := b.userID(t, done[ref]); got != want {
			t.Errorf("%s pseudonymised %v, want %v", ref, got, want)
		}
	}
	// Sent again, the batch changes nothing.
	if n, err := q.Pseudonymise(b.ctx, retainIDs, batch); err != nil || n != 0 {
		t.Errorf("sent again: %d, %v; want 0", n, err)
	}
}

func TestAnUndeliveredReportKeepsItsRequestsID(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "transcend", 1)
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	b.finishedAgo(t, ids[0], retainIDs+aMinute)

	// Transcend's report names the person by the raw id: it stays until the report is out.
	due, err := q.ToPseudonymise(b.ctx, retainIDs, queue.RetentionCursor{}, 10)
	if err != nil || len(due) != 1 || !due[0].Held || due[0].ExternalUserID != "" {
		t.Fatalf("due %+v, %v; want it held while the report is pending, its id not read", due, err)
	}
	n, err := q.Pseudonymise(b.ctx, retainIDs, []queue.Pseudonym{{ID: ids[0], Raw: "user-0", Pseudonym: testKeys.Pseudonym("user-0")}})
	if err != nil || n != 0 {
		t.Fatalf("pseudonymised %d (%v) with the report pending, want 0", n, err)
	}
	// It counts as due, and as late: purging is behind while a report holds an id.
	s, err := q.RetentionStats(b.ctx, retainIDs, twoYears)
	if err != nil || s.ToPseudonymise != 1 || s.PseudonymiseLag(retainIDs) < aMinute-time.Second {
		t.Fatalf("stats %+v (%v): want 1 due, a minute late", s, err)
	}

	reps, err := q.ClaimReports(b.ctx, "r1", transcendLane, 10, time.Minute)
	if err != nil || len(reps) != 1 {
		t.Fatalf("claim reports: %v, %v", reps, err)
	}
	if _, err := q.FinishReports(b.ctx, "r1", []queue.ReportResult{{ID: reps[0].ID, Token: reps[0].Token, Result: "delivered",
		AttemptedAt: time.Now(), HTTPStatus: 200}}); err != nil {
		t.Fatal(err)
	}
	if n := pseudonymiseDue(t, q, b, retainIDs, testKeys); n != 1 {
		t.Errorf("pseudonymised %d once the report was delivered, want 1", n)
	}
}

func TestNoCopyOfAPseudonymisedIDSurvivesInAnyTable(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "ketch", 3)
	jobs, err := q.Claim(b.ctx, "w1", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Every column the service writes for a request, filled as a real run fills it: calls with
	// Knot's codes, errors, a report delivered after a failed attempt.
	results := make([]queue.Result, len(jobs))
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition, results[i].Outcome = queue.Fail, queue.OutcomeRejected
		results[i].ErrorCode, results[i].Error = "NO_ACCESS", "knot: 403 NO_ACCESS: the user [redacted] may not be deleted"
		results[i].Calls = []queue.Call{{StartedAt: time.Now(), Duration: time.Millisecond, HTTPStatus: 403, ErrorCode: "NO_ACCESS", Result: "permanent"}}
	}
	if _, err := q.Finish(b.ctx, "w1", results); err != nil {
		t.Fatal(err)
	}
	reps, err := q.ClaimReports(b.ctx, "r1", ketchLane, 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range []string{"retry", "delivered"} {
		var rr []queue.ReportResult
		for _, r := range reps {
			rr = append(rr, queue.ReportResult{ID: r.ID, Token: r.Token, Result: res, AttemptedAt: time.Now(), HTTPStatus: 503, Error: "ketch: 503"})
		}
		if _, err := q.FinishReports(b.ctx, "r1", rr); err != nil {
			t.Fatal(err)
		}
		if reps, err = q.ClaimReports(b.ctx, "r1", ketchLane, 10, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		b.finishedAgo(t, id, retainIDs+aMinute)
	}
	if n := pseudonymiseDue(t, q, b, retainIDs, testKeys); n != 3 {
		t.Fatalf("pseudonymised %d, want 3", n)
	}

	tables, err := b.pool.Query(b.ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for tables.Next() {
		var n string
		if err := tables.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if len(names) < 7 {
		t.Fatalf("found the tables %v: not the whole schema", names)
	}
	for _, table := range names {
		for i := range ids {
			raw := fmt.Sprintf("user-%d", i)
			var n int
			// Every column, as text: the row's whole record.
			if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM `+table+` t WHERE strpos(t::text, $1) > 0`, raw).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("%d rows of %s still hold %s", n, table, raw)
			}
		}
	}
}

func TestRequeueLeavesPseudonymisedRequestsFailed(t *testing.T) {
	q, b := setup(t)
	done := b.finishedRequests(t, q, queue.Fail, queue.OutcomeRejected, "old", "new")
	b.finishedAgo(t, done["old"], retainIDs+aMinute)
	pseudonymiseDue(t, q, b, retainIDs, testKeys)

	f := queue.RequeueFilter{All: true}
	skipped, err := q.RequeueSkipped(b.ctx, f)
	if err != nil || skipped != 1 {
		t.Errorf("RequeueSkipped %d, %v; want 1", skipped, err)
	}
	if n, err := q.Requeue(b.ctx, f); err != nil || n != 1 {
		t.Fatalf("requeued %d, %v; want only new", n, err)
	}
	if r := b.row(t, done["old"]); r.Status != queue.StatusFailed {
		t.Errorf("old is %s, want still failed: its id is gone", r.Status)
	}
	if r := b.row(t, done["new"]); r.Status != queue.StatusPending {
		t.Errorf("new is %s, want pending", r.Status)
	}
}

func TestEvidenceIsDeletedAfterItsRetentionWithItsCallsAndReports(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "webhook", 4)
	jobs, err := q.Claim(b.ctx, "w1", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	results := make([]queue.Result, len(jobs))
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition, results[i].Outcome = queue.Succeed, queue.OutcomeDeleted
		results[i].Calls = []queue.Call{{StartedAt: time.Now(), Duration: time.Millisecond, HTTPStatus: 200, Result: "deleted"}}
	}
	if _, err := q.Finish(b.ctx, "w1", results); err != nil {
		t.Fatal(err)
	}
	reps, err := q.ClaimReports(b.ctx, "r1", webhookLane, 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var rr []queue.ReportResult
	for _, r := range reps {
		rr = append(rr, queue.ReportResult{ID: r.ID, Token: r.Token, Result: "delivered", AttemptedAt: time.Now(), HTTPStatus: 200})
	}
	if _, err := q.FinishReports(b.ctx, "r1", rr); err != nil {
		t.Fatal(err)
	}
	// 0 and 1 are past two years, 0 pseudonymised and 1 not (IDENTIFIER_RETENTION off); 2 is
	// a minute short of it; 3 is recent. A pending request received long ago stays.
	b.finishedAgo(t, ids[0], twoYears+2*aMinute)
	pseudonymiseDue(t, q, b, twoYears, testKeys)
	b.finishedAgo(t, ids[1], twoYears+aMinute)
	b.finishedAgo(t, ids[2], twoYears-aMinute)
	b.insert(t, 1)
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET received_at = now() - interval '3 years' WHERE status = 'pending'`); err != nil {
		t.Fatal(err)
	}

	s, err := q.RetentionStats(b.ctx, 0, twoYears)
	if err != nil || s.ToDelete != 2 || s.ToPseudonymise != 0 || s.DeleteLag(twoYears) < 2*aMinute-time.Second {
		t.Errorf("stats before: %+v (%v); want 2 to delete, two minutes late, none to pseudonymise (off)", s, err)
	}
	// Oldest first, in batches.
	if n, err := q.DeleteEvidence(b.ctx, twoYears, 1); err != nil || n != 1 {
		t.Fatalf("first batch deleted %d, %v; want 1", n, err)
	}
	if n := b.count(t, `id = $1`, ids[0]); n != 0 {
		t.Errorf("the first batch kept the oldest request")
	}
	if n, err := q.DeleteEvidence(b.ctx, twoYears, 10); err != nil || n != 1 {
		t.Fatalf("second batch deleted %d, %v; want 1", n, err)
	}
	for i, want := range []int{0, 0, 1, 1} {
		var requests, calls, reports, reportAttempts int
		err := b.pool.QueryRow(b.ctx, `
SELECT (SELECT count(*) FROM erasure_requests WHERE id = $1),
       (SELECT count(*) FROM erasure_attempts WHERE request_id = $1),
       (SELECT count(*) FROM erasure_reports WHERE request_id = $1),
       (SELECT count(*) FROM erasure_report_attempts a JOIN erasure_reports p ON p.id = a.report_id WHERE p.request_id = $1)`,
			ids[i]).Scan(&requests, &calls, &reports, &reportAttempts)
		if err != nil {
			t.Fatal(err)
		}
		if requests != want || calls != want || reports != want || reportAttempts != want {
			t.Errorf("request %d: %d request, %d calls, %d reports, %d report attempts; want %d of each", i, requests, calls, reports, reportAttempts, want)
		}
	}
	if orphans := b.count(t, `status = 'pending'`); orphans != 1 {
		t.Errorf("%d pending requests left, want the old pending one", orphans)
	}
	var orphanAttempts int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_report_attempts a WHERE NOT EXISTS (SELECT 1 FROM erasure_reports p WHERE p.id = a.report_id)`).Scan(&orphanAttempts); err != nil || orphanAttempts != 0 {
		t.Errorf("%d report attempts outlived their report (%v)", orphanAttempts, err)
	}
	s, err = q.RetentionStats(b.ctx, 0, twoYears)
	if err != nil || s.ToDelete != 0 || s.DeleteLag(twoYears) != 0 {
		t.Errorf("stats after: %+v (%v); want nothing due", s, err)
	}
}

func TestRetentionStatsReadTheIndexesNotTheTable(t *testing.T) {
	q, b := setup(t)
	if _, err := b.pool.Exec(b.ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at, pseudonymised_at)
SELECT 'old-' || i,
       CASE WHEN i > 1000 THEN 'hmac-sha256:' || encode(sha256(('u' || i)::bytea), 'hex') ELSE 'user-' || i END,
       'succeeded', 'deleted', 1, now() - i * interval '10 minutes',
       CASE WHEN i > 1000 THEN now() END
FROM generate_series(1, 20000) AS i;
ANALYZE erasure_requests`); err != nil {
		t.Fatal(err)
	}
	// The gauges and the purge's statements, as the planner runs them: through the partial
	// indexes, never a scan of the finished rows.
	for _, st := range []struct {
		name, sql string
		args      []any
		indexes   []string
	}{
		{"stats", queue.RetentionStatsSQL, []any{retainIDs.Milliseconds(), twoYears.Milliseconds(), queue.RetentionCountCap},
			[]string{"erasure_requests_identified", "erasure_requests_pseudonymised"}},
		{"to pseudonymise", queue.ToPseudonymiseSQL, []any{retainIDs.Milliseconds(), 1000, time.Time{}, 0}, []string{"erasure_requests_identified"}},
		{"delete", queue.DeleteEvidenceSQL, []any{twoYears.Milliseconds(), 1000},
			[]string{"erasure_requests_identified", "erasure_requests_pseudonymised"}},
	} {
		plan := b.explain(t, st.sql, st.args...)
		for _, index := range st.indexes {
			if !strings.Contains(plan, index) {
				t.Errorf("%s: the plan does not use %s:\n%s", st.name, index, plan)
			}
		}
		if strings.Contains(plan, "Seq Scan on erasure_requests") {
			t.Errorf("%s scans the table:\n%s", st.name, plan)
		}
	}
	s, err := q.RetentionStats(b.ctx, retainIDs, twoYears)
	if err != nil {
		t.Fatal(err)
	}
	// Rows 1..1000 finished every ten minutes: those older than a week (i > 1008) are all
	// pseudonymised, so none is due, and the oldest identified finished 1000 × 10 minutes ago.
	if s.ToPseudonymise != 0 || s.PseudonymiseLag(retainIDs) != 0 {
		t.Errorf("%+v: want nothing due to pseudonymise", s)
	}
	if got := s.Now.Sub(s.OldestIdentified).Round(time.Minute); got != 10000*time.Minute {
		t.Errorf("oldest identified finished %v ago, want 10000m", got)
	}
	if got := s.Now.Sub(s.OldestFinished).Round(time.Minute); got != 200000*time.Minute {
		t.Errorf("oldest finished %v ago, want 200000m", got)
	}
}

// explain returns the plan of sql with args, as Postgres runs it for them.
func (b *testBundle) explain(t *testing.T, sql string, args ...any) string {
	t.Helper()
	return b.explainUnder(t, "", sql, args...)
}

// explainUnder is explain under a setting (SET LOCAL ...).
func (b *testBundle) explainUnder(t *testing.T, setting, sql string, args ...any) string {
	t.Helper()
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(b.ctx)
	if setting != "" {
		if _, err := tx.Exec(b.ctx, setting); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := tx.Query(b.ctx, "EXPLAIN "+sql, args...) // plans only: nothing runs
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(line + "\n")
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan.String()
}

// A backlog that autoanalyze has not seen yet (an upgrade onto years of finished requests, a
// shortened IDENTIFIER_RETENTION) must not make each batch's update read every due row.
func TestPseudonymiseFindsEachRowByItsIDWhateverTheStatistics(t *testing.T) {
	q, b := setup(t)
	if _, err := b.pool.Exec(b.ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at)
SELECT 'recent-' || i, 'user-' || i, 'succeeded', 'deleted', 1, now() - i * interval '1 second' FROM generate_series(1, 1000) AS i;
ANALYZE erasure_requests;
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at)
SELECT 'old-' || i, 'old-user-' || i, 'succeeded', 'deleted', 1, now() - interval '30 days' - i * interval '1 second'
FROM generate_series(1, 100000) AS i`); err != nil {
		t.Fatal(err)
	}
	// The batch is read in the index's order, a thousand entries and no more.
	plan := b.explain(t, queue.ToPseudonymiseSQL, retainIDs.Milliseconds(), 1000, time.Time{}, 0)
	if !strings.Contains(plan, "Index Scan using erasure_requests_identified") || strings.Contains(plan, "Bitmap") || strings.Contains(plan, "Hash") {
		t.Errorf("the batch is not read in the index's order:\n%s", plan)
	}
	due, err := q.ToPseudonymise(b.ctx, retainIDs, queue.RetentionCursor{}, 1000)
	if err != nil || len(due) != 1000 {
		t.Fatalf("%d due (%v), want a full batch", len(due), err)
	}
	ids, raws, pseudonyms := make([]int64, len(due)), make([]string, len(due)), make([]string, len(due))
	for i, d := range due {
		ids[i], raws[i], pseudonyms[i] = d.ID, d.ExternalUserID, testKeys.Pseudonym(d.ExternalUserID)
	}
	// On a table this small a scan of all of it costs less than a thousand look-ups by id; on
	// the tables this is for (a million rows: 29ms by id, 750ms through the index of every due
	// row, measured) it does not. Take the scan away, as the size would.
	plan = b.explainUnder(t, "SET LOCAL enable_seqscan = off", queue.PseudonymiseSQL, retainIDs.Milliseconds(), ids, raws, pseudonyms)
	if !strings.Contains(plan, "erasure_requests_pkey") || strings.Contains(plan, "erasure_requests_identified") {
		t.Errorf("the update does not find its rows by id:\n%s", plan)
	}
}
