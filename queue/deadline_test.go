package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A statement that the server does not answer ends at the queue's deadline, whatever the
// caller's context says, and the pool serves the next statement once the server answers again.
func TestAStatementTheServerDoesNotAnswerEndsAtTheDeadline(t *testing.T) {
	t.Parallel()
	pool := queuetest.Pool(t)
	ctx := context.Background()
	q := queue.New(pool).WithStatementTimeout(300 * time.Millisecond)

	// A transaction holding the table stands for a server that stops answering.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE erasure_requests IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err = q.Claim(ctx, "w", 1, time.Minute) // no deadline of the caller's own
	took := time.Since(began)
	if !errors.Is(err, context.DeadlineExceeded) || took > 2*time.Second {
		t.Fatalf("claim against a held table: %v after %v; want the deadline's error after about 300ms", err, took)
	}
	// A caller's shorter deadline wins.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	began = time.Now()
	if _, err := q.Stats(short); err == nil || time.Since(began) > 250*time.Millisecond {
		t.Fatalf("stats under a 50ms deadline: %v after %v", err, time.Since(began))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Claim(ctx, "w", 1, time.Minute); err != nil {
		t.Fatalf("claim once the table is free: %v", err)
	}
}

// Nothing the queue sends leaves a prepared statement on the server connection: behind a
// pooler in transaction mode the next client of that connection would meet it (42P05), or
// this one would look for it on another connection (26000).
func TestTheQueueLeavesNoPreparedStatementBehind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, err := queue.ParsePoolConfig(queuetest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // every statement below on one server connection
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	q := queue.New(pool)

	if _, err := q.Enqueue(ctx, []queue.NewRequest{{RequestRef: "r-1", ExternalUserID: "u-1",
		Reports: []queue.NewReport{{Connector: "webhook", Credentials: []byte(`{"k":"v"}`)}}}}); err != nil {
		t.Fatal(err)
	}
	jobs, err := q.Claim(ctx, "w", 10, time.Minute)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %v, %d jobs", err, len(jobs))
	}
	if _, err := q.Finish(ctx, "w", []queue.Result{{ID: jobs[0].ID, Attempt: jobs[0].Attempt, Token: jobs[0].Token,
		Transition: queue.Succeed, Outcome: queue.OutcomeDeleted}}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.CheckSchema(ctx); err != nil {
		t.Fatal(err)
	}
	var prepared int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_statements`).Scan(&prepared); err != nil || prepared != 0 {
		t.Fatalf("%d statements prepared on the connection (%v); want none", prepared, err)
	}
}
