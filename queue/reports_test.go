package queue_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The lanes of the connectors' one receiver each.
var (
	webhookLane   = queue.ReportLane{Connector: "webhook"}
	ketchLane     = queue.ReportLane{Connector: "ketch"}
	transcendLane = queue.ReportLane{Connector: "transcend"}
)

// enqueueReported adds n requests (rep-0..) each with one report of connector, whose
// credentials name the request.
func (b *testBundle) enqueueReported(t *testing.T, q *queue.Queue, connector string, n int) []int64 {
	t.Helper()
	reqs := make([]queue.NewRequest, n)
	for i := range reqs {
		reqs[i] = queue.NewRequest{
			RequestRef:     fmt.Sprintf("rep-%d", i),
			ExternalUserID: fmt.Sprintf("user-%d", i),
			Reports:        []queue.NewReport{{Connector: connector, Credentials: fmt.Appendf(nil, `{"nonce":"nonce-%d"}`, i)}},
		}
	}
	res, err := q.Enqueue(b.ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, n)
	for i, r := range res {
		if r.Admission != queue.Inserted || r.ID == 0 {
			t.Fatalf("request %d: %+v, want inserted with an id", i, r)
		}
		ids[i] = r.ID
	}
	return ids
}

func (b *testBundle) reportStatus(t *testing.T, requestID int64) (status string, hasCredentials bool) {
	t.Helper()
	err := b.pool.QueryRow(b.ctx, `SELECT status, credentials IS NOT NULL FROM erasure_reports WHERE request_id = $1`, requestID).
		Scan(&status, &hasCredentials)
	if err != nil {
		t.Fatal(err)
	}
	return status, hasCredentials
}

// finishAll claims every pending request and finishes it with the given transition.
func finishAll(t *testing.T, q *queue.Queue, b *testBundle, tr queue.Transition, outcome string) []int64 {
	t.Helper()
	jobs, err := q.Claim(b.ctx, "w1", 1000, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	results := make([]queue.Result, len(jobs))
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition, results[i].Outcome = tr, outcome
	}
	applied, err := q.Finish(b.ctx, "w1", results)
	if err != nil || len(applied) != len(jobs) {
		t.Fatalf("finish: %v, %d of %d applied", err, len(applied), len(jobs))
	}
	return applied
}

func TestAReportBecomesDeliverableInTheStatementThatFinishesItsRequest(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "transcend", 3)
	b.insert(t, 2) // through the SQL contract: no report

	if got, err := q.ClaimReports(b.ctx, "r1", transcendLane, 10, time.Minute); err != nil || len(got) != 0 {
		t.Fatalf("claimed %d reports of unfinished requests (%v), want none", len(got), err)
	}
	// A retry is not a finish: the report waits.
	jobs, err := q.Claim(b.ctx, "w1", 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	results := make([]queue.Result, len(jobs))
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition = queue.Retry
	}
	if _, err := q.Finish(b.ctx, "w1", results); err != nil {
		t.Fatal(err)
	}
	if st, _ := b.reportStatus(t, ids[0]); st != queue.ReportWaiting {
		t.Fatalf("after a retry the report is %s, want waiting", st)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET run_after = now()`); err != nil {
		t.Fatal(err)
	}

	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	var reports int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_reports`).Scan(&reports); err != nil || reports != 3 {
		t.Fatalf("%d reports (%v), want one per reported request and none for the SQL contract's", reports, err)
	}
	got, err := q.ClaimReports(b.ctx, "r1", transcendLane, 10, time.Minute)
	if err != nil || len(got) != 3 {
		t.Fatalf("claimed %d reports (%v), want 3", len(got), err)
	}
	for _, r := range got {
		if r.Status != queue.StatusSucceeded || r.Outcome != queue.OutcomeDeleted || r.ExternalUserID == "" ||
			r.CompletedAt.IsZero() || len(r.Credentials) == 0 || r.Connector != "transcend" {
			t.Errorf("claimed report %+v lacks what its delivery needs", r)
		}
	}
}

func TestARequestExhaustedByRecoveryIsReported(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "webhook", 1)
	if _, err := q.Claim(b.ctx, "w1", 10, time.Minute); err != nil {
		t.Fatal(err)
	}
	b.expireLeases(t)
	if rec, err := q.RecoverExpired(b.ctx, "w2", 1); err != nil || rec.Exhausted != 1 {
		t.Fatalf("recover: %+v, %v; want one exhausted", rec, err)
	}
	if st, _ := b.reportStatus(t, ids[0]); st != queue.ReportPending {
		t.Fatalf("the report of a request that recovery failed is %s, want pending", st)
	}
}

func TestARepeatedRequestKeepsTheReportsItCameWith(t *testing.T) {
	q, b := setup(t)
	b.enqueueReported(t, q, "ketch", 1)
	res, err := q.Enqueue(b.ctx, []queue.NewRequest{{
		RequestRef: "rep-0", ExternalUserID: "user-0",
		Reports: []queue.NewReport{{Connector: "ketch", Target: 1, Credentials: []byte(`{}`)}},
	}})
	if err != nil || res[0].Admission != queue.Duplicate {
		t.Fatalf("repeat: %+v, %v; want a duplicate", res, err)
	}
	var n int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_reports`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d reports after a repeat (%v), want the first one only", n, err)
	}
}

func TestDeliveryOutcomesMoveReportsAndKeepEvidence(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "transcend", 6)
	finishAll(t, q, b, queue.Succeed, queue.OutcomeNotFound)
	claimed, err := q.ClaimReports(b.ctx, "r1", transcendLane, 10, time.Minute)
	if err != nil || len(claimed) != 6 {
		t.Fatalf("claimed %d (%v), want 6", len(claimed), err)
	}
	byRequest := map[int64]queue.Report{}
	for _, r := range claimed {
		byRequest[r.RequestID] = r
	}
	outcomes := []string{"delivered", "closed", "retry", "rate_limited", "unauthorized", "rejected"}
	results := make([]queue.ReportResult, len(ids))
	for i, id := range ids {
		r := byRequest[id]
		results[i] = queue.ReportResult{ID: r.ID, Token: r.Token, Result: outcomes[i], Delay: time.Hour,
			AttemptedAt: time.Now(), Duration: 5 * time.Millisecond, HTTPStatus: 200 + i, Error: "why " + outcomes[i]}
	}
	moved, err := q.FinishReports(b.ctx, "r1", results)
	if err != nil || len(moved) != 6 {
		t.Fatalf("finish reports: %d moved, %v", len(moved), err)
	}
	want := []struct {
		status      string
		credentials bool
		attempts    int
	}{
		{queue.ReportDelivered, false, 1},
		{queue.ReportDelivered, false, 1}, // the receiver says the request is closed
		{queue.ReportPending, true, 1},
		{queue.ReportPending, true, 1},
		{queue.ReportPending, true, 0}, // a refused credential is not the report's attempt
		{queue.ReportFailed, true, 1},  // kept for `reports requeue`
	}
	for i, w := range want {
		var status string
		var creds bool
		var attempts int
		if err := b.pool.QueryRow(b.ctx, `SELECT status, credentials IS NOT NULL, attempts FROM erasure_reports WHERE request_id = $1`, ids[i]).
			Scan(&status, &creds, &attempts); err != nil {
			t.Fatal(err)
		}
		if status != w.status || creds != w.credentials || attempts != w.attempts {
			t.Errorf("after %s: status %s, credentials kept %v, attempts %d; want %s, %v, %d",
				outcomes[i], status, creds, attempts, w.status, w.credentials, w.attempts)
		}
	}
	var evidence int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_report_attempts WHERE worker = 'r1' AND duration_ms = 5 AND error LIKE 'why %'`).Scan(&evidence); err != nil || evidence != 6 {
		t.Fatalf("%d delivery attempts kept (%v), want 6", evidence, err)
	}
	// The retried ones wait for their delay; nothing is claimable now.
	if again, err := q.ClaimReports(b.ctx, "r2", transcendLane, 10, time.Minute); err != nil || len(again) != 0 {
		t.Fatalf("claimed %d reports before their retry time (%v)", len(again), err)
	}
	if n, err := q.RequeueReports(b.ctx, ""); err != nil || n != 1 {
		t.Fatalf("requeued %d failed reports (%v), want 1", n, err)
	}
	if again, err := q.ClaimReports(b.ctx, "r2", transcendLane, 10, time.Minute); err != nil || len(again) != 1 || again[0].RequestID != ids[5] {
		t.Fatalf("after requeue claimed %+v (%v), want the rejected report", again, err)
	}
}

func TestAReportIsDeliveredByOneReporterAndTakenOverWhenItsLeaseEnds(t *testing.T) {
	q, b := setup(t)
	const n, reporters = 300, 6
	b.enqueueReported(t, q, "webhook", n)
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)

	var mu sync.Mutex
	holder := map[int64]string{}
	var wg sync.WaitGroup
	for w := range reporters {
		wg.Go(func() {
			owner := fmt.Sprintf("reporter-%d", w)
			for {
				got, err := q.ClaimReports(b.ctx, owner, webhookLane, 7, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, r := range got {
					if prev, ok := holder[r.ID]; ok {
						t.Errorf("report %d claimed by %s and %s", r.ID, prev, owner)
					}
					holder[r.ID] = owner
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(holder) != n {
		t.Fatalf("claimed %d distinct reports, want %d", len(holder), n)
	}

	// The reporters die; their leases run out; another takes the reports over, and a late
	// finish of the first claim changes nothing.
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_reports SET run_after = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	first, err := q.ClaimReports(b.ctx, "survivor", webhookLane, 1000, time.Minute)
	if err != nil || len(first) != n {
		t.Fatalf("took over %d of %d reports (%v)", len(first), n, err)
	}
	stale := queue.ReportResult{ID: first[0].ID, Token: first[0].Token - 1, Result: "rejected", AttemptedAt: time.Now()}
	if moved, err := q.FinishReports(b.ctx, holder[first[0].ID], []queue.ReportResult{stale}); err != nil || len(moved) != 0 {
		t.Fatalf("a finish from a lost lease moved %v (%v), want nothing", moved, err)
	}
	if err := q.ReleaseReports(b.ctx, "survivor", first); err != nil {
		t.Fatal(err)
	}
	if again, err := q.ClaimReports(b.ctx, "next", webhookLane, 1000, time.Minute); err != nil || len(again) != n {
		t.Fatalf("after release claimed %d (%v), want %d", len(again), err, n)
	}
}

func TestAClaimOfAnotherConnectorsLaneLeavesTheReportsBe(t *testing.T) {
	q, b := setup(t)
	b.enqueueReported(t, q, "ketch", 2)
	finishAll(t, q, b, queue.Fail, queue.OutcomeExhausted)
	got, err := q.ClaimReports(b.ctx, "r1", webhookLane, 10, time.Minute)
	if err != nil || len(got) != 0 {
		t.Fatalf("claimed %d reports of another connector (%v)", len(got), err)
	}
	st, err := q.ReportStats(b.ctx, []string{"webhook", "ketch", "transcend"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending["ketch"] != 2 || st.Pending["webhook"] != 0 || st.OldestPendingAge() <= 0 {
		t.Fatalf("report stats %+v, want 2 ketch reports pending and an age", st)
	}
}

func TestRequeueOfAFailedRequestHoldsItsUndeliveredReport(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "webhook", 1)
	finishAll(t, q, b, queue.Fail, queue.OutcomeRejected)
	if n, err := q.Requeue(b.ctx, queue.RequeueFilter{All: true}); err != nil || n != 1 {
		t.Fatalf("requeue: %d, %v", n, err)
	}
	if st, _ := b.reportStatus(t, ids[0]); st != queue.ReportWaiting {
		t.Fatalf("the report of a requeued request is %s, want waiting for the new outcome", st)
	}
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	got, err := q.ClaimReports(b.ctx, "r1", webhookLane, 10, time.Minute)
	if err != nil || len(got) != 1 || got[0].Outcome != queue.OutcomeDeleted {
		t.Fatalf("claimed %+v (%v), want one report of the new outcome", got, err)
	}
}

func TestLookupReadsTheWholeRecord(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueReported(t, q, "webhook", 1)
	jobs, err := q.Claim(b.ctx, "w1", 1, time.Minute)
	if err != nil || len(jobs) != 1 {
		t.Fatal(err)
	}
	r := jobs[0].Result()
	r.Transition, r.Outcome = queue.Succeed, queue.OutcomeDeleted
	r.Calls = []queue.Call{{StartedAt: time.Now(), Duration: 3 * time.Millisecond, HTTPStatus: 200, Result: "deleted"}}
	if _, err := q.Finish(b.ctx, "w1", []queue.Result{r}); err != nil {
		t.Fatal(err)
	}
	rec, err := q.Lookup(b.ctx, "rep-0")
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != ids[0] || rec.Status != queue.StatusSucceeded || rec.Outcome != queue.OutcomeDeleted ||
		rec.CompletedAt.IsZero() || len(rec.Calls) != 1 || rec.Calls[0].HTTPStatus != 200 || rec.Calls[0].Worker != "w1" ||
		len(rec.Reports) != 1 || rec.Reports[0].Status != queue.ReportPending {
		t.Fatalf("record %+v", rec)
	}
	if _, err := q.Lookup(b.ctx, "no-such-ref"); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("lookup of an unknown ref: %v, want ErrNotFound", err)
	}
}

func TestOneLeaderAtATimeAndATakeoverOnceTheTermLapses(t *testing.T) {
	q, b := setup(t)
	if ok, err := q.Lead(b.ctx, "transcend", "a", time.Minute); err != nil || !ok {
		t.Fatalf("a first candidate is not elected: %v %v", ok, err)
	}
	if ok, err := q.Lead(b.ctx, "transcend", "b", time.Minute); err != nil || ok {
		t.Fatalf("a second candidate is elected during the first's term: %v %v", ok, err)
	}
	if ok, err := q.Lead(b.ctx, "transcend", "a", time.Minute); err != nil || !ok {
		t.Fatalf("the leader cannot renew its term: %v %v", ok, err)
	}
	if ok, err := q.Lead(b.ctx, "purge", "b", time.Minute); err != nil || !ok {
		t.Fatalf("another duty's election depends on this one: %v %v", ok, err)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_leaders SET expires_at = now() - interval '1 second' WHERE name = 'transcend'`); err != nil {
		t.Fatal(err)
	}
	if ok, err := q.Lead(b.ctx, "transcend", "b", time.Minute); err != nil || !ok {
		t.Fatalf("no takeover once the term lapsed: %v %v", ok, err)
	}
	if err := q.Resign(b.ctx, "transcend", "b"); err != nil {
		t.Fatal(err)
	}
	if ok, err := q.Lead(b.ctx, "transcend", "a", time.Minute); err != nil || !ok {
		t.Fatalf("no takeover after a resignation: %v %v", ok, err)
	}
}

func TestAFinishOfReportsRetriedAfterALostAnswerKeepsEachAttemptOnce(t *testing.T) {
	q, b := setup(t)
	b.enqueueReported(t, q, "webhook", 3)
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	claimed, err := q.ClaimReports(b.ctx, "r1", webhookLane, 10, time.Minute)
	if err != nil || len(claimed) != 3 {
		t.Fatalf("claimed %d (%v)", len(claimed), err)
	}
	results := make([]queue.ReportResult, len(claimed))
	for i, r := range claimed {
		results[i] = queue.ReportResult{ID: r.ID, Token: r.Token, Result: "delivered", AttemptedAt: time.Now(), HTTPStatus: 204}
	}
	// The first finish commits, its answer is lost, the reporter sends it again.
	for range 2 {
		if _, err := q.FinishReports(b.ctx, "r1", results); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_report_attempts`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("%d attempts kept (%v), want one per delivery", n, err)
	}
}
