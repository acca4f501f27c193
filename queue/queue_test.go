package queue_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

type testBundle struct {
	pool *pgxpool.Pool
	ctx  context.Context
}

func setup(t *testing.T) (*queue.Queue, *testBundle) {
	t.Helper()
	t.Parallel()
	pool := queuetest.Pool(t)
	return queue.New(pool), &testBundle{pool: pool, ctx: context.Background()}
}

// insert adds n pending requests named ref-0..ref-(n-1) straight through SQL, as a privacy
// request system does.
func (b *testBundle) insert(t *testing.T, n int) {
	t.Helper()
	_, err := b.pool.Exec(b.ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id)
SELECT 'ref-' || i, 'user-' || i FROM generate_series(0, $1 - 1) AS i
ON CONFLICT (request_ref) DO NOTHING`, n)
	if err != nil {
		t.Fatal(err)
	}
}

type row struct {
	Status, Outcome, LastError, LastErrorCode, LeaseOwner string
	Attempts                                              int
	RunAfter                                              time.Time
	Completed                                             bool
}

func (b *testBundle) row(t *testing.T, id int64) row {
	t.Helper()
	var r row
	err := b.pool.QueryRow(b.ctx, `
SELECT status, coalesce(outcome, ''), coalesce(last_error, ''), coalesce(last_error_code, ''),
       coalesce(lease_owner, ''), attempts, run_after, completed_at IS NOT NULL
FROM erasure_requests WHERE id = $1`, id).
		Scan(&r.Status, &r.Outcome, &r.LastError, &r.LastErrorCode, &r.LeaseOwner, &r.Attempts, &r.RunAfter, &r.Completed)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (b *testBundle) count(t *testing.T, where string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_requests WHERE `+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *testBundle) expireLeases(t *testing.T) {
	t.Helper()
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET lease_expires_at = now() - interval '1 second' WHERE status = 'running'`); err != nil {
		t.Fatal(err)
	}
}

func TestClaimUnderContentionNeverHandsOneRowToTwoWorkers(t *testing.T) {
	q, b := setup(t)
	const rows, workers = 600, 8
	b.insert(t, rows)

	var mu sync.Mutex
	holder := map[int64]string{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("worker-%d", w)
			for {
				jobs, err := q.Claim(b.ctx, owner, 7, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if len(jobs) == 0 {
					return
				}
				mu.Lock()
				for _, j := range jobs {
					if prev, ok := holder[j.ID]; ok {
						t.Errorf("request %d claimed by %s and %s", j.ID, prev, owner)
					}
					holder[j.ID] = owner
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(holder) != rows {
		t.Fatalf("claimed %d distinct requests, want all %d", len(holder), rows)
	}
	if n := b.count(t, `status = 'running' AND attempts = 1`); n != rows {
		t.Fatalf("%d rows running with attempt 1, want %d", n, rows)
	}
}

func TestClaimSetsLeaseAndSkipsFutureRows(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 3)
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET run_after = now() + interval '1 hour' WHERE request_ref = 'ref-1'`); err != nil {
		t.Fatal(err)
	}
	jobs, err := q.Claim(b.ctx, "w1", 10, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 {
		t.Fatalf("claimed %d, want the 2 runnable rows", len(jobs))
	}
	for _, j := range jobs {
		if j.RequestRef == "ref-1" {
			t.Fatal("claimed a row whose run_after is in the future")
		}
		if j.Attempt != 1 || j.ExternalUserID == "" {
			t.Fatalf("job %+v: want attempt 1 and the user id", j)
		}
		if d := time.Until(j.LeaseExpiresAt); d < 20*time.Second || d > 40*time.Second {
			t.Fatalf("lease expires in %v, want about 30s", d)
		}
		if r := b.row(t, j.ID); r.Status != "running" || r.LeaseOwner != "w1" {
			t.Fatalf("row %+v, want running under w1", r)
		}
	}
}

func TestFinishAppliesEachTransition(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 5)
	jobs, err := q.Claim(b.ctx, "w1", 5, time.Minute)
	if err != nil || len(jobs) != 5 {
		t.Fatalf("claim: %v, %d jobs", err, len(jobs))
	}
	later := time.Now().Add(time.Hour)
	call := queue.Call{StartedAt: time.Now(), Duration: 12 * time.Millisecond, HTTPStatus: 200, Result: "deleted"}
	results := []queue.Result{
		{Transition: queue.Succeed, Outcome: queue.OutcomeDeleted, Calls: []queue.Call{call}},
		{Transition: queue.Succeed, Outcome: queue.OutcomeNotFound},
		{Transition: queue.Fail, Outcome: queue.OutcomeRejected, ErrorCode: "NO_ACCESS", Error: "knot: 403"},
		{Transition: queue.Retry, Delay: time.Hour, ErrorCode: "http_500", Error: "knot: 500 Server Error"},
		{Transition: queue.Release},
	}
	for i := range results {
		results[i].ID, results[i].Attempt, results[i].Token = jobs[i].ID, jobs[i].Attempt, jobs[i].Token
	}
	applied, err := q.Finish(b.ctx, "w1", results)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 5 {
		t.Fatalf("applied %d of 5", len(applied))
	}

	want := []row{
		{Status: "succeeded", Outcome: "deleted", Attempts: 1, Completed: true},
		{Status: "succeeded", Outcome: "not_found", Attempts: 1, Completed: true},
		{Status: "failed", Outcome: "rejected", Attempts: 1, Completed: true, LastError: "knot: 403", LastErrorCode: "NO_ACCESS"},
		{Status: "pending", Attempts: 1, LastError: "knot: 500 Server Error", LastErrorCode: "http_500"},
		{Status: "pending", Attempts: 0}, // released: the attempt is refunded
	}
	for i, w := range want {
		got := b.row(t, jobs[i].ID)
		got.RunAfter = time.Time{}
		if got != w {
			t.Errorf("%s: got %+v, want %+v", results[i].Transition, got, w)
		}
	}
	if r := b.row(t, jobs[3].ID); r.RunAfter.Before(later.Add(-time.Second)) {
		t.Errorf("retry run_after %v, want %v", r.RunAfter, later)
	}
	var evidence int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_attempts WHERE request_id = $1 AND worker = 'w1' AND http_status = 200 AND result = 'deleted' AND duration_ms = 12`, jobs[0].ID).Scan(&evidence); err != nil || evidence != 1 {
		t.Fatalf("evidence rows %d (%v), want 1", evidence, err)
	}
	// Only the released row is claimable now; the retried one waits for its run_after.
	again, err := q.Claim(b.ctx, "w2", 10, time.Minute)
	if err != nil || len(again) != 1 || again[0].ID != jobs[4].ID || again[0].Attempt != 1 {
		t.Fatalf("claim after finish: %v %+v, want only the released row at attempt 1", err, again)
	}
}

func TestFinishIsFencedByLease(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 1)
	old, err := q.Claim(b.ctx, "old", 1, time.Minute)
	if err != nil || len(old) != 1 {
		t.Fatalf("claim: %v %v", err, old)
	}
	// The old owner stalls past its lease; another replica recovers and re-claims the row.
	b.expireLeases(t)
	if rec, err := q.RecoverExpired(b.ctx, "recoverer", 10); err != nil || rec.Requeued != 1 {
		t.Fatalf("recover: %+v %v", rec, err)
	}
	cur, err := q.Claim(b.ctx, "new", 1, time.Minute)
	if err != nil || len(cur) != 1 || cur[0].Attempt != 2 {
		t.Fatalf("re-claim: %v %+v", err, cur)
	}

	stale := queue.Result{ID: old[0].ID, Attempt: old[0].Attempt, Token: old[0].Token, Transition: queue.Fail, Outcome: queue.OutcomeRejected,
		Calls: []queue.Call{{StartedAt: time.Now(), HTTPStatus: 403, Result: "permanent"}}}
	applied, err := q.Finish(b.ctx, "old", []queue.Result{stale})
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 0 {
		t.Fatal("a worker that lost its lease overwrote the row")
	}
	// The same owner with a stale attempt number is fenced too.
	stale.Attempt = 1
	if applied, _ := q.Finish(b.ctx, "new", []queue.Result{stale}); len(applied) != 0 {
		t.Fatal("a stale attempt number overwrote the row")
	}
	if r := b.row(t, cur[0].ID); r.Status != "running" || r.LeaseOwner != "new" {
		t.Fatalf("row after stale finish: %+v", r)
	}
	applied, err = q.Finish(b.ctx, "new", []queue.Result{{ID: cur[0].ID, Attempt: cur[0].Attempt, Token: cur[0].Token, Transition: queue.Succeed, Outcome: queue.OutcomeNotFound}})
	if err != nil || len(applied) != 1 {
		t.Fatalf("current owner's finish: %v %v", err, applied)
	}
	// The stale calls still happened, so they are in the evidence.
	var calls int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_attempts WHERE worker = 'old'`).Scan(&calls); err != nil || calls != 1 {
		t.Fatalf("stale call evidence %d (%v), want 1", calls, err)
	}
}

// After a requeue the attempt numbers start again, so only the owner tells a stale worker
// from the current one.
func TestFinishIsFencedByOwnerAfterRequeue(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 1)
	old, err := q.Claim(b.ctx, "old", 1, time.Minute)
	if err != nil || len(old) != 1 {
		t.Fatalf("claim: %v %v", err, old)
	}
	b.expireLeases(t)
	if rec, err := q.RecoverExpired(b.ctx, "recoverer", 1); err != nil || rec.Exhausted != 1 {
		t.Fatalf("recover: %+v %v", rec, err)
	}
	if n, err := q.Requeue(b.ctx, queue.RequeueFilter{All: true}); err != nil || n != 1 {
		t.Fatalf("requeue: %d %v", n, err)
	}
	cur, err := q.Claim(b.ctx, "new", 1, time.Minute)
	if err != nil || len(cur) != 1 || cur[0].Attempt != old[0].Attempt {
		t.Fatalf("re-claim: %v %+v", err, cur)
	}
	applied, err := q.Finish(b.ctx, "old", []queue.Result{{ID: old[0].ID, Attempt: old[0].Attempt, Token: old[0].Token, Transition: queue.Succeed, Outcome: queue.OutcomeDeleted}})
	if err != nil || len(applied) != 0 {
		t.Fatalf("stale owner's finish applied: %v %v", applied, err)
	}
}

func TestRecoverExpiredRequeuesOrExhausts(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 4)
	jobs, err := q.Claim(b.ctx, "crashed", 4, time.Minute)
	if err != nil || len(jobs) != 4 {
		t.Fatal(err)
	}
	// Leases still valid: nothing to recover.
	if rec, err := q.RecoverExpired(b.ctx, "recoverer", 3); err != nil || rec != (queue.Recovered{}) {
		t.Fatalf("recovered live leases: %+v %v", rec, err)
	}
	// One of them was on its last allowed attempt.
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET attempts = 3 WHERE id = $1`, jobs[0].ID); err != nil {
		t.Fatal(err)
	}
	b.expireLeases(t)
	rec, err := q.RecoverExpired(b.ctx, "recoverer", 3)
	if err != nil || rec != (queue.Recovered{Requeued: 3, Exhausted: 1}) {
		t.Fatalf("recover: %+v %v", rec, err)
	}
	if r := b.row(t, jobs[0].ID); r.Status != "failed" || r.Outcome != "exhausted" || r.LastErrorCode != "lease_expired" {
		t.Fatalf("last-attempt row: %+v", r)
	}
	if r := b.row(t, jobs[1].ID); r.Status != "pending" || r.Attempts != 1 || r.LastErrorCode != "lease_expired" {
		t.Fatalf("recovered row: %+v", r)
	}
}

func TestReleaseRefundsAttemptAndWakesListeners(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 2)
	jobs, err := q.Claim(b.ctx, "w1", 2, time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	ready := make(chan struct{})
	woken := make(chan struct{}, 10)
	done := make(chan error, 1)
	go func() { done <- q.Listen(ctx, func() { close(ready) }, func() { woken <- struct{}{} }) }()
	<-ready

	applied, err := q.Release(b.ctx, "w1", jobs)
	if err != nil || len(applied) != 2 {
		t.Fatalf("release: %v %v", err, applied)
	}
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification after release")
	}
	if n := b.count(t, `status = 'pending' AND attempts = 0`); n != 2 {
		t.Fatalf("%d released rows pending with no attempt spent, want 2", n)
	}
	cancel()
	<-done
}

func TestInsertWakesListeners(t *testing.T) {
	q, b := setup(t)
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	ready := make(chan struct{})
	woken := make(chan struct{}, 10)
	go q.Listen(ctx, func() { close(ready) }, func() { woken <- struct{}{} })
	<-ready
	b.insert(t, 1000)
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification after insert")
	}
	// One statement, one notification, however many rows.
	select {
	case <-woken:
		t.Fatal("a bulk insert sent more than one notification")
	case <-time.After(200 * time.Millisecond):
	}
}

func TestConstraintsRefuseImpossibleRows(t *testing.T) {
	_, b := setup(t)
	for name, sql := range map[string]string{
		"blank external_user_id":  `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('a', '  ')`,
		"empty external_user_id":  `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('a', '')`,
		"10 KB external_user_id":  `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('a', repeat('x', 10240))`,
		"blank request_ref":       `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES (E'\t', 'u')`,
		"unknown status":          `INSERT INTO erasure_requests (request_ref, external_user_id, status) VALUES ('a', 'u', 'done')`,
		"running without lease":   `INSERT INTO erasure_requests (request_ref, external_user_id, status) VALUES ('a', 'u', 'running')`,
		"succeeded without time":  `INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome) VALUES ('a', 'u', 'succeeded', 'deleted')`,
		"succeeded as rejected":   `INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, completed_at) VALUES ('a', 'u', 'succeeded', 'rejected', now())`,
		"pending with an outcome": `INSERT INTO erasure_requests (request_ref, external_user_id, outcome) VALUES ('a', 'u', 'deleted')`,
		"negative attempts":       `INSERT INTO erasure_requests (request_ref, external_user_id, attempts) VALUES ('a', 'u', -1)`,
		"NUL byte":                `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('a', E'u\x00')`,
	} {
		if _, err := b.pool.Exec(b.ctx, sql); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n := b.count(t, `true`); n != 0 {
		t.Fatalf("%d rows got in", n)
	}
	// A well-formed row with quotes and SQL-looking text is just data.
	if _, err := b.pool.Exec(b.ctx, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, $2)`,
		"r'; DROP TABLE erasure_requests; --", `"quoted" O'Brien`); err != nil {
		t.Fatal(err)
	}
}

func TestEnqueueInsertsGoodRowsBesideBadOnes(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 1) // ref-0 exists already
	due := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	reqs := []queue.NewRequest{
		{RequestRef: "a", ExternalUserID: "u-a"},
		{RequestRef: "ref-0", ExternalUserID: "u-0"},                  // duplicate of an existing row
		{RequestRef: "b", ExternalUserID: "   "},                      // blank id
		{RequestRef: "c", ExternalUserID: "u-c", DueAt: due},          // explicit deadline
		{RequestRef: "a", ExternalUserID: "u-a2"},                     // duplicate within the batch
		{RequestRef: "d", ExternalUserID: string(make([]byte, 2000))}, // NUL bytes
	}
	res, err := q.Enqueue(b.ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	want := []queue.Admission{queue.Inserted, queue.Duplicate, queue.Rejected, queue.Inserted, queue.Duplicate, queue.Rejected}
	for i, w := range want {
		if res[i].Admission != w {
			t.Errorf("row %d (%s): admission %d, want %d (err %v)", i, reqs[i].RequestRef, res[i].Admission, w, res[i].Err)
		}
	}
	if res[2].Err == nil || res[2].Err.Error() != "external_user_id: only whitespace" {
		t.Errorf("blank id reason: %v", res[2].Err)
	}
	var gotDue time.Time
	var defaultDays float64
	if err := b.pool.QueryRow(b.ctx, `SELECT due_at FROM erasure_requests WHERE request_ref = 'c'`).Scan(&gotDue); err != nil || !gotDue.Equal(due) {
		t.Errorf("due_at %v (%v), want %v", gotDue, err, due)
	}
	if err := b.pool.QueryRow(b.ctx, `SELECT extract(epoch FROM due_at - received_at) / 86400 FROM erasure_requests WHERE request_ref = 'a'`).Scan(&defaultDays); err != nil || defaultDays < 29.99 || defaultDays > 30.01 {
		t.Errorf("default deadline %v days (%v), want 30", defaultDays, err)
	}
	if n := b.count(t, `true`); n != 3 {
		t.Fatalf("%d rows, want 3", n)
	}
	// Enqueueing the same file again changes nothing.
	res, err = q.Enqueue(b.ctx, reqs[:1])
	if err != nil || res[0].Admission != queue.Duplicate {
		t.Fatalf("re-enqueue: %v %+v", err, res)
	}
}

func TestStatsRequeueAndSummary(t *testing.T) {
	q, b := setup(t)
	b.insert(t, 6)
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET due_at = now() - interval '1 day', received_at = now() - interval '31 days' WHERE request_ref = 'ref-0'`); err != nil {
		t.Fatal(err)
	}
	jobs, _ := q.Claim(b.ctx, "w", 3, time.Minute)
	results := []queue.Result{
		{ID: jobs[0].ID, Attempt: 1, Token: jobs[0].Token, Transition: queue.Fail, Outcome: queue.OutcomeRejected, ErrorCode: "NO_ACCESS", Error: "knot: 403"},
		{ID: jobs[1].ID, Attempt: 1, Token: jobs[1].Token, Transition: queue.Fail, Outcome: queue.OutcomeExhausted, ErrorCode: "http_500", Error: "knot: 500"},
		{ID: jobs[2].ID, Attempt: 1, Token: jobs[2].Token, Transition: queue.Succeed, Outcome: queue.OutcomeDeleted},
	}
	if _, err := q.Finish(b.ctx, "w", results); err != nil {
		t.Fatal(err)
	}
	s, err := q.Stats(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// ref-0 was the oldest and overdue, and it was claimed and failed: it no longer counts.
	if s.Pending != 3 || s.Running != 0 || s.Failed != 2 || s.Overdue != 0 {
		t.Fatalf("stats %+v", s)
	}
	if age := s.OldestPendingAge(); age < 0 || age > time.Minute {
		t.Fatalf("oldest pending age %v", age)
	}

	sum, err := q.Summarize(b.ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.RecentFailures) != 2 || len(sum.ByOutcome) != 4 {
		t.Fatalf("summary %+v", sum)
	}

	if _, err := q.Requeue(b.ctx, queue.RequeueFilter{}); err == nil {
		t.Fatal("requeue with no filter was accepted")
	}
	n, err := q.Requeue(b.ctx, queue.RequeueFilter{ErrorCode: "NO_ACCESS"})
	if err != nil || n != 1 {
		t.Fatalf("requeue by code: %d %v", n, err)
	}
	if r := b.row(t, jobs[0].ID); r.Status != "pending" || r.Attempts != 0 || r.Outcome != "" || r.Completed || r.LastErrorCode != "NO_ACCESS" {
		t.Fatalf("requeued row %+v", r)
	}
	n, err = q.Requeue(b.ctx, queue.RequeueFilter{All: true})
	if err != nil || n != 1 {
		t.Fatalf("requeue all: %d %v", n, err)
	}
}

func TestMigrateConcurrentlyFromEmpty(t *testing.T) {
	t.Parallel()
	url := queuetest.EmptyURL(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			_, to, err := queue.Migrate(ctx, conn)
			if err == nil && to < 1 {
				err = fmt.Errorf("schema version %d after migrate", to)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	want, _ := queue.SchemaVersion()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	from, to, err := queue.Migrate(ctx, conn)
	if err != nil || from != want || to != want {
		t.Fatalf("second migrate: %d -> %d (%v), want %d -> %d", from, to, err, want, want)
	}
}
