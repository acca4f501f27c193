package fides_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/fides"
	"github.com/erasure-worker/erasure-worker/connector/fides/fidesfake"
	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
	"github.com/jackc/pgx/v5/pgxpool"
)

// e2e is the connector as `run` wires it, against PostgreSQL and a fake Fides: the door, the
// queue, and the reporter delivering the reports.
type e2e struct {
	*testBundle
	q    *queue.Queue
	pool *pgxpool.Pool
	logs *fakekittest.SyncBuffer
	log  *slog.Logger
}

const e2eHold = 300 * time.Millisecond

func setupE2E(t *testing.T) *e2e {
	t.Helper()
	pool := queuetest.Pool(t)
	e := &e2e{q: queue.New(pool), pool: pool, logs: &fakekittest.SyncBuffer{}}
	e.log = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.testBundle = &testBundle{fake: fidesfake.New(fidesfake.Options{ParkDelay: 50 * time.Millisecond})}
	e.fides = httptest.NewServer(e.fake)
	t.Cleanup(e.fides.Close)
	parts, err := configure(map[string]string{"FIDES_AUTH_TOKEN": testToken, "FIDES_URL": e.fides.URL, "FIDES_CALLBACK_DELAY": e2eHold.String()})
	if err != nil {
		t.Fatal(err)
	}
	e.parts = parts
	in := worker.NewIntake(e.q, worker.IntakeConfig{Info: fides.Connector{}.Info(), Prefixes: []string{"fides:"}, Logger: e.log})
	mux := http.NewServeMux()
	for pattern, h := range parts.Door.Routes(in, e.log) {
		mux.Handle(pattern, h)
	}
	door := httptest.NewServer(mux)
	t.Cleanup(door.Close)
	e.door = door.URL
	return e
}

// finish carries out the stored requests with the outcome each id's outcome gives.
func (e *e2e) finish(t *testing.T, outcomes map[string]string) {
	t.Helper()
	jobs, err := e.q.Claim(context.Background(), "e2e", len(outcomes), time.Minute)
	if err != nil || len(jobs) != len(outcomes) {
		t.Fatalf("claim: %d of %d, %v", len(jobs), len(outcomes), err)
	}
	var results []queue.Result
	for _, j := range jobs {
		r := j.Result()
		r.Outcome = outcomes[strings.TrimPrefix(j.RequestRef, "fides:")]
		r.Transition = queue.Succeed
		if r.Outcome == queue.OutcomeRejected {
			r.Transition, r.ErrorCode = queue.Fail, "NO_ACCESS"
		}
		results = append(results, r)
	}
	if _, err := e.q.Finish(context.Background(), "e2e", results); err != nil {
		t.Fatal(err)
	}
}

// report runs the reporter until no report of ids is waiting or being delivered.
func (e *e2e) report(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rep := worker.NewReporter(e.q, worker.ReporterConfig{ID: "e2e", Deliverers: map[string]connector.Deliverer{"fides": e.parts.Deliverer},
		PollInterval: 20 * time.Millisecond, Timeout: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: e.log})
	done := make(chan struct{})
	go func() { rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	queuetest.WaitFor(t, 20*time.Second, "every report delivered or failed", func() bool {
		var settled int
		_ = e.pool.QueryRow(ctx, `SELECT count(*) FROM erasure_reports WHERE status IN ('delivered', 'failed')`).Scan(&settled)
		return settled == n
	})
}

func (e *e2e) reportOf(t *testing.T, id string) (status, lastError string, creds bool) {
	t.Helper()
	err := e.pool.QueryRow(context.Background(), `SELECT r.status, coalesce(r.last_error, ''), r.credentials IS NOT NULL
FROM erasure_reports r JOIN erasure_requests q ON q.id = r.request_id WHERE q.request_ref = $1`, "fides:"+id).Scan(&status, &lastError, &creds)
	if err != nil {
		t.Fatal(err)
	}
	return status, lastError, creds
}

func (e *e2e) status(t *testing.T, id string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.door+"/v1/fides/erasures/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	status, body := do(t, req)
	return status, strings.TrimSpace(body)
}

func TestFidesIsToldEachOutcomeAsItCountsThem(t *testing.T) {
	t.Parallel()
	e := setupE2E(t)
	ctx := context.Background()

	// An expired token first: the request's report fails naming the 403, alone.
	res, err := e.fake.Push(ctx, fidesfake.PushSpec{Target: e.door + "/v1/fides/erasures", AuthToken: testToken, Count: 1, UserPrefix: "old-person-"})
	if err != nil || res.Answers["http_202"] != 1 {
		t.Fatalf("push: %+v %v", res, err)
	}
	expired := res.PrivacyRequestIDs[0]
	e.fake.SetTokenLifetime(time.Millisecond)
	e.finish(t, map[string]string{expired: queue.OutcomeDeleted})
	e.report(t, 1)
	if status, lastError, _ := e.reportOf(t, expired); status != "failed" || !strings.Contains(lastError, "403 Forbidden: the reply-to-token is wrong or expired") {
		t.Fatalf("the report with an expired token: %s %q, want failed naming the 403", status, lastError)
	}
	if code, body := e.status(t, expired); code != 200 || body != `{"status":"completed","outcome":"deleted"}` {
		t.Errorf("the status of the request whose callback failed: %d %s, want it completed", code, body)
	}

	// An admin retries it in Fides: the same privacy request comes again with a new token, is
	// answered as a repeat, and its report goes again with the new token, completing the task.
	e.fake.SetTokenLifetime(time.Hour)
	if answer := e.fake.Retry(ctx, e.door+"/v1/fides/erasures", testToken, expired); answer != "http_200" {
		t.Fatalf("the retried request was answered %s, want http_200 (a repeat)", answer)
	}
	e.report(t, 1)
	if task, _ := e.fake.Task(expired); task.Completions != 1 || task.RowsMasked[0] != 1 {
		t.Fatalf("the retried task: %+v; want it completed once with the new token", task)
	}

	e.fake.SetFaults(fidesfake.Faults{ErrorRate: 0.2, RateLimitRate: 0.1, RetryAfter: fidesfake.Duration(time.Second), LostAnswerRate: 0.2})
	res, err = e.fake.Push(ctx, fidesfake.PushSpec{Target: e.door + "/v1/fides/erasures", AuthToken: testToken, Count: 9})
	if err != nil || res.Answers["http_202"] != 9 {
		t.Fatalf("push: %+v %v", res, err)
	}
	outcomes := map[string]string{}
	for i, id := range res.PrivacyRequestIDs {
		outcomes[id] = []string{queue.OutcomeDeleted, queue.OutcomeNotFound, queue.OutcomeRejected}[i%3]
	}
	e.finish(t, outcomes)
	e.report(t, 10)

	var tokens, users []string
	for id, outcome := range outcomes {
		task, _ := e.fake.Task(id)
		tokens, users = append(tokens, task.Token), append(users, task.ExternalUserID)
		status, lastError, creds := e.reportOf(t, id)
		switch rows, ok := fides.RowsMasked(outcome); {
		case !ok:
			if task.Completions != 0 || status != "failed" || !strings.Contains(lastError, "rejected (NO_ACCESS)") || !strings.Contains(lastError, "no failure callback") {
				t.Errorf("%s (%s): %d completions, report %s %q; want none, and the report failed with the reason", id, outcome, task.Completions, status, lastError)
			}
			if code, body := e.status(t, id); code != 422 || body != `{"status":"failed","reason":"the Knot erasure failed: rejected (NO_ACCESS)"}` {
				t.Errorf("%s: status %d %s, want 422 failed with the reason", id, code, body)
			}
		case task.Completions != 1 || task.RowsMasked[0] != rows || status != "delivered" || creds:
			t.Errorf("%s (%s): %d completions %v, report %s (credentials kept: %t); want one with rows_masked %d, delivered, none kept",
				id, outcome, task.Completions, task.RowsMasked, status, creds, rows)
		}
	}
	if st := e.fake.Stats(); st.PrematureCallbacks != 0 || st.EarlyRetries != 0 {
		t.Errorf("Fides saw %d callbacks before its task was parked and %d before a Retry-After", st.PrematureCallbacks, st.EarlyRetries)
	}
	// No callback went out within FIDES_CALLBACK_DELAY of its intake.
	var early int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM erasure_report_attempts a JOIN erasure_reports r ON r.id = a.report_id
JOIN erasure_requests q ON q.id = r.request_id WHERE a.http_status IS NOT NULL AND a.attempted_at < q.received_at + $1 * interval '1 millisecond'`,
		e2eHold.Milliseconds()).Scan(&early); err != nil || early != 0 {
		t.Errorf("%d callbacks sent within the hold (%v)", early, err)
	}
	// The queue held the reports: the deliverer never had to hold one back itself.
	var heldByDeliverer int
	_ = e.pool.QueryRow(ctx, `SELECT count(*) FROM erasure_report_attempts WHERE error LIKE '%held back%'`).Scan(&heldByDeliverer)
	if heldByDeliverer != 0 {
		t.Errorf("%d reports were handed over within their hold", heldByDeliverer)
	}
	// The tokens are in no error, no log line; the people in no log line.
	logs := e.logs.String()
	for _, tok := range append(tokens, testToken) {
		var n int
		_ = e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM erasure_reports WHERE strpos(coalesce(last_error, ''), $1) > 0)
     + (SELECT count(*) FROM erasure_report_attempts WHERE strpos(coalesce(error, ''), $1) > 0)`, tok).Scan(&n)
		if n > 0 || strings.Contains(logs, tok) {
			t.Errorf("a token is in %d errors or in the logs", n)
		}
	}
	for _, u := range append(users, "old-person-1") {
		if strings.Contains(logs, `"`+u+`"`) {
			t.Error("an external_user_id is in the logs")
		}
	}
}
