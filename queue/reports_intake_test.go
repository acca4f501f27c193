package queue_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

var onetrustLane = queue.ReportLane{Connector: "onetrust"}

// enqueueWithIntakeReport adds n requests (in-0..), each with a report at intake (target 0)
// and an outcome report (target 1) of one connector, as a receiver that takes "in progress"
// and then the outcome asks.
func (b *testBundle) enqueueWithIntakeReport(t *testing.T, q *queue.Queue, n int) []int64 {
	t.Helper()
	reqs := make([]queue.NewRequest, n)
	for i := range reqs {
		reqs[i] = queue.NewRequest{
			RequestRef: fmt.Sprintf("in-%d", i), ExternalUserID: fmt.Sprintf("user-%d", i),
			Reports: []queue.NewReport{
				{Connector: "onetrust", Target: 0, AtIntake: true},
				{Connector: "onetrust", Target: 1},
			},
		}
	}
	res, err := q.Enqueue(b.ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, n)
	for i, r := range res {
		if r.Admission != queue.Inserted {
			t.Fatalf("request %d: %+v", i, r)
		}
		ids[i] = r.ID
	}
	return ids
}

func deliverAll(t *testing.T, q *queue.Queue, b *testBundle, reports []queue.Report, result string) {
	t.Helper()
	results := make([]queue.ReportResult, len(reports))
	for i, r := range reports {
		results[i] = queue.ReportResult{ID: r.ID, Token: r.Token, Result: result, AttemptedAt: time.Now(), Delay: time.Hour}
	}
	if moved, err := q.FinishReports(b.ctx, "r1", results); err != nil || len(moved) != len(reports) {
		t.Fatalf("finish reports: %d of %d moved (%v)", len(moved), len(reports), err)
	}
}

// A report at intake goes out before its request finishes; the outcome report of the same
// request waits until the intake one is delivered, even when the request finished first, so
// that the receiver never hears "in progress" after the outcome.
func TestAReportAtIntakeGoesFirstAndTheOutcomeWaitsForIt(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueWithIntakeReport(t, q, 3)

	got, err := q.ClaimReports(b.ctx, "r1", onetrustLane, 10, time.Minute)
	if err != nil || len(got) != 3 {
		t.Fatalf("claimed %d before any request finished (%v); want the 3 reports at intake", len(got), err)
	}
	for _, r := range got {
		if !r.AtIntake || r.Target != 0 || r.Outcome != "" || !r.CompletedAt.IsZero() {
			t.Fatalf("claimed %+v; want a report at intake of an unfinished request", r)
		}
	}
	// The intake reports of requests 0 and 1 are refused for now (retry in an hour); request 2's is delivered.
	byReq := map[int64]queue.Report{}
	for _, r := range got {
		byReq[r.RequestID] = r
	}
	deliverAll(t, q, b, []queue.Report{byReq[ids[0]], byReq[ids[1]]}, "retry")
	deliverAll(t, q, b, []queue.Report{byReq[ids[2]]}, "delivered")

	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	got, err = q.ClaimReports(b.ctx, "r1", onetrustLane, 10, time.Minute)
	if err != nil || len(got) != 1 || got[0].RequestID != ids[2] || got[0].AtIntake || got[0].Outcome != queue.OutcomeDeleted {
		t.Fatalf("claimed %+v (%v); want only the outcome of the request whose intake was told", got, err)
	}
	deliverAll(t, q, b, got, "delivered")

	// Request 0's intake report is refused for good: its outcome goes out all the same.
	// Request 1's is still pending: its outcome still waits.
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_reports SET run_after = now() WHERE status = 'pending'`); err != nil {
		t.Fatal(err)
	}
	got, err = q.ClaimReports(b.ctx, "r1", onetrustLane, 10, time.Minute)
	if err != nil || len(got) != 2 {
		t.Fatalf("claimed %d (%v); want the two intake reports due again", len(got), err)
	}
	byReq = map[int64]queue.Report{}
	for _, r := range got {
		if !r.AtIntake {
			t.Fatalf("claimed an outcome report %+v while its intake report was undelivered", r)
		}
		byReq[r.RequestID] = r
	}
	deliverAll(t, q, b, []queue.Report{byReq[ids[0]]}, "rejected")
	deliverAll(t, q, b, []queue.Report{byReq[ids[1]]}, "retry")
	got, err = q.ClaimReports(b.ctx, "r1", onetrustLane, 10, time.Minute)
	if err != nil || len(got) != 1 || got[0].RequestID != ids[0] || got[0].AtIntake {
		t.Fatalf("claimed %+v (%v); want the outcome of the request whose intake report failed", got, err)
	}
}

// A requeued request's report at intake stands: the intake happened once; only its outcome
// report waits again.
func TestRequeueOfARequestLeavesItsReportAtIntake(t *testing.T) {
	q, b := setup(t)
	ids := b.enqueueWithIntakeReport(t, q, 1)
	got, err := q.ClaimReports(b.ctx, "r1", onetrustLane, 10, time.Minute)
	if err != nil || len(got) != 1 {
		t.Fatalf("claimed %d (%v)", len(got), err)
	}
	deliverAll(t, q, b, got, "delivered")
	finishAll(t, q, b, queue.Fail, queue.OutcomeRejected)
	if n, err := q.Requeue(b.ctx, queue.RequeueFilter{All: true}); err != nil || n != 1 {
		t.Fatalf("requeue: %d, %v", n, err)
	}
	var statuses []string
	rows, err := b.pool.Query(b.ctx, `SELECT status FROM erasure_reports WHERE request_id = $1 ORDER BY target`, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, s)
	}
	if len(statuses) != 2 || statuses[0] != queue.ReportDelivered || statuses[1] != queue.ReportWaiting {
		t.Fatalf("reports after requeue: %v; want [delivered waiting]", statuses)
	}
}

// A held report is not deliverable before its hold ends, whenever its request finishes; a
// report at intake with a hold also waits for it. The claim tells the deliverer when the hold ends.
func TestAHeldReportWaitsForItsHold(t *testing.T) {
	q, b := setup(t)
	const hold = 1500 * time.Millisecond
	start := time.Now()
	res, err := q.Enqueue(b.ctx, []queue.NewRequest{
		{RequestRef: "held-0", ExternalUserID: "u0", Reports: []queue.NewReport{{Connector: "fides", Hold: hold}}},
		{RequestRef: "held-1", ExternalUserID: "u1", Reports: []queue.NewReport{{Connector: "fides", AtIntake: true, Hold: hold}}},
		{RequestRef: "plain", ExternalUserID: "u2", Reports: []queue.NewReport{{Connector: "fides"}}},
	})
	if err != nil || len(res) != 3 {
		t.Fatal(res, err)
	}
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	lane := queue.ReportLane{Connector: "fides"}
	got, err := q.ClaimReports(b.ctx, "r1", lane, 10, time.Minute)
	if err != nil || len(got) != 1 || got[0].RequestRef != "plain" || !got[0].NotBefore.IsZero() {
		t.Fatalf("claimed %+v (%v) straight after the finish; want only the report without a hold", got, err)
	}
	var held []queue.Report
	for time.Since(start) < 10*time.Second && len(held) < 2 {
		more, err := q.ClaimReports(b.ctx, "r1", lane, 10, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, more...)
		time.Sleep(50 * time.Millisecond)
	}
	if len(held) != 2 {
		t.Fatalf("claimed %d held reports; want 2 once their hold ended", len(held))
	}
	for _, r := range held {
		// The database's clock decides; allow for the two clocks' skew on this machine.
		if r.NotBefore.Sub(start) < hold-100*time.Millisecond || time.Since(start) < hold-100*time.Millisecond {
			t.Fatalf("report %s claimed %v after intake with a hold until %v; want no sooner than %v",
				r.RequestRef, time.Since(start), r.NotBefore.Sub(start), hold)
		}
	}
}

// A repeat that brings new credentials renews the request's report: a delivered or failed one
// goes again with them once the request has finished; a waiting one waits on with them; one in
// delivery is left to end; a target the request lacked is added.
func TestRenewedReportsTakeTheNewCredentials(t *testing.T) {
	q, b := setup(t)
	lane := queue.ReportLane{Connector: "fides"}
	res, err := q.Enqueue(b.ctx, []queue.NewRequest{
		{RequestRef: "f-0", ExternalUserID: "u0", Reports: []queue.NewReport{{Connector: "fides", Credentials: []byte(`{"t":"old-0"}`)}}},
		{RequestRef: "f-1", ExternalUserID: "u1", Reports: []queue.NewReport{{Connector: "fides", Credentials: []byte(`{"t":"old-1"}`)}}},
		{RequestRef: "f-2", ExternalUserID: "u2", Reports: []queue.NewReport{{Connector: "fides", Credentials: []byte(`{"t":"old-2"}`)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := []int64{res[0].ID, res[1].ID, res[2].ID}
	finishAll(t, q, b, queue.Succeed, queue.OutcomeDeleted)
	got, err := q.ClaimReports(b.ctx, "r1", lane, 10, time.Minute)
	if err != nil || len(got) != 3 {
		t.Fatalf("claimed %d (%v)", len(got), err)
	}
	byReq := map[int64]queue.Report{}
	for _, r := range got {
		byReq[r.RequestID] = r
	}
	deliverAll(t, q, b, []queue.Report{byReq[ids[0]]}, "delivered")
	deliverAll(t, q, b, []queue.Report{byReq[ids[1]]}, "rejected")
	// f-2's stays in delivery.

	for i, id := range ids {
		n, err := q.RenewReports(b.ctx, id, []queue.NewReport{{Connector: "fides", Credentials: fmt.Appendf(nil, `{"t":"new-%d"}`, i)}})
		if err != nil || (i < 2) != (n == 1) {
			t.Fatalf("renew %d: %d renewed (%v)", i, n, err)
		}
	}
	got, err = q.ClaimReports(b.ctx, "r2", lane, 10, time.Minute)
	if err != nil || len(got) != 2 {
		t.Fatalf("claimed %d after the renewal (%v); want the delivered and the failed report again", len(got), err)
	}
	for _, r := range got {
		if string(r.Credentials) != fmt.Sprintf(`{"t": "new-%d"}`, r.RequestID-ids[0]) || r.Attempts != 0 {
			t.Errorf("renewed report of request %d: credentials %s, attempts %d; want the new ones and none", r.RequestID, r.Credentials, r.Attempts)
		}
	}
	var old string
	if err := b.pool.QueryRow(b.ctx, `SELECT credentials->>'t' FROM erasure_reports WHERE request_id = $1`, ids[2]).Scan(&old); err != nil || old != "old-2" {
		t.Errorf("the report in delivery has %q (%v); want it left as it was", old, err)
	}

	// A request still waiting for its outcome: its report waits on, with the new credentials;
	// a target it lacked is added, waiting too.
	res, err = q.Enqueue(b.ctx, []queue.NewRequest{{RequestRef: "f-3", ExternalUserID: "u3"}})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := q.RenewReports(b.ctx, res[0].ID, []queue.NewReport{{Connector: "fides", Credentials: []byte(`{"t":"late"}`)}}); err != nil || n != 1 {
		t.Fatalf("renew of a request without a report: %d (%v)", n, err)
	}
	if st, creds := b.reportStatus(t, res[0].ID); st != queue.ReportWaiting || !creds {
		t.Errorf("the added report is %s (credentials %v); want waiting with them", st, creds)
	}
}

// A denial is kept once per request, counting its repeats, and deleted with the rest of the
// evidence once its last repeat is older than EVIDENCE_RETENTION.
func TestADenialIsKeptOnceAndDeletedWithTheEvidence(t *testing.T) {
	q, b := setup(t)
	for range 2 {
		if err := q.RecordDenial(b.ctx, queue.Denial{RequestRef: "ketch:uid-1", Door: "ketch", Reason: "unidentified", Field: "request.identities"}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := q.LookupDenial(b.ctx, "ketch:uid-1")
	if err != nil || d.Times != 2 || d.Door != "ketch" || d.Reason != "unidentified" || d.Field != "request.identities" || d.FirstAt.IsZero() {
		t.Fatalf("denial %+v (%v); want it once, twice denied", d, err)
	}
	if _, err := q.LookupDenial(b.ctx, "ketch:uid-2"); err != queue.ErrNotFound {
		t.Fatalf("an unknown ref: %v, want ErrNotFound", err)
	}
	if _, err := q.DeleteEvidence(b.ctx, time.Hour, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := q.LookupDenial(b.ctx, "ketch:uid-1"); err != nil {
		t.Fatalf("a denial of a minute ago was deleted with a retention of an hour: %v", err)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_denials SET last_at = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	if _, err := q.DeleteEvidence(b.ctx, time.Hour, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := q.LookupDenial(b.ctx, "ketch:uid-1"); err != queue.ErrNotFound {
		t.Fatalf("a denial past the retention is still there: %v", err)
	}
}
