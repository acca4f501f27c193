package queue

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultStatementTimeout is the longest any statement the queue sends may take, waiting for a
// connection included, unless the caller's context ends sooner. A server that stops answering (a
// frozen process, a half-open TCP connection) then costs this long, not the kernel's fifteen
// minutes of retransmissions: pgx closes the connection when the deadline passes, and the pool
// opens a new one for the next statement.
//
// No statement of the queue needs more: claims and finishes take milliseconds, retention works in
// batches with their own shorter timeouts, and the evidence export pages through the table.
const DefaultStatementTimeout = 15 * time.Second

// db is what the queue needs of a pool. Every statement sent through it has a deadline.
type db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	Begin(ctx context.Context) (pgx.Tx, error)
	Config() *pgxpool.Config
}

// deadlinePool is a pool whose every statement ends by its timeout: the caller's context is
// kept when it ends sooner, else bounded. The bound is released once the statement's results
// are read (Row.Scan, Rows.Close or the last Rows.Next, BatchResults.Close).
type deadlinePool struct {
	*pgxpool.Pool
	timeout time.Duration
}

// bounded is ctx, bounded by timeout unless it already ends sooner.
func bounded(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= timeout {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, timeout)
}

func (p deadlinePool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	ctx, cancel := bounded(ctx, p.timeout)
	defer cancel()
	return p.Pool.Exec(ctx, sql, args...)
}

func (p deadlinePool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	ctx, cancel := bounded(ctx, p.timeout)
	rows, err := p.Pool.Query(ctx, sql, args...)
	if err != nil {
		cancel()
		return nil, err
	}
	return &deadlineRows{Rows: rows, cancel: cancel}, nil
}

func (p deadlinePool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	ctx, cancel := bounded(ctx, p.timeout)
	return deadlineRow{row: p.Pool.QueryRow(ctx, sql, args...), cancel: cancel}
}

func (p deadlinePool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	ctx, cancel := bounded(ctx, p.timeout)
	return deadlineBatch{BatchResults: p.Pool.SendBatch(ctx, b), cancel: cancel}
}

// Begin bounds BEGIN, then each statement of the transaction, COMMIT and ROLLBACK on their own.
func (p deadlinePool) Begin(ctx context.Context) (pgx.Tx, error) {
	bctx, cancel := bounded(ctx, p.timeout)
	defer cancel()
	tx, err := p.Pool.Begin(bctx)
	if err != nil {
		return nil, err
	}
	return deadlineTx{Tx: tx, timeout: p.timeout}, nil
}

type deadlineRows struct {
	pgx.Rows
	cancel context.CancelFunc
}

func (r *deadlineRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.cancel() // pgx closed the rows: the statement is over
	return false
}

func (r *deadlineRows) Close() {
	r.Rows.Close()
	r.cancel()
}

type deadlineRow struct {
	row    pgx.Row
	cancel context.CancelFunc
}

func (r deadlineRow) Scan(dest ...any) error {
	defer r.cancel()
	return r.row.Scan(dest...)
}

type deadlineBatch struct {
	pgx.BatchResults
	cancel context.CancelFunc
}

func (b deadlineBatch) Close() error {
	defer b.cancel()
	return b.BatchResults.Close()
}

type deadlineTx struct {
	pgx.Tx
	timeout time.Duration
}

func (t deadlineTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	ctx, cancel := bounded(ctx, t.timeout)
	defer cancel()
	return t.Tx.Exec(ctx, sql, args...)
}

func (t deadlineTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	ctx, cancel := bounded(ctx, t.timeout)
	rows, err := t.Tx.Query(ctx, sql, args...)
	if err != nil {
		cancel()
		return nil, err
	}
	return &deadlineRows{Rows: rows, cancel: cancel}, nil
}

func (t deadlineTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	ctx, cancel := bounded(ctx, t.timeout)
	return deadlineRow{row: t.Tx.QueryRow(ctx, sql, args...), cancel: cancel}
}

func (t deadlineTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	ctx, cancel := bounded(ctx, t.timeout)
	return deadlineBatch{BatchResults: t.Tx.SendBatch(ctx, b), cancel: cancel}
}

func (t deadlineTx) Commit(ctx context.Context) error {
	ctx, cancel := bounded(ctx, t.timeout)
	defer cancel()
	return t.Tx.Commit(ctx)
}

func (t deadlineTx) Rollback(ctx context.Context) error {
	ctx, cancel := bounded(ctx, t.timeout)
	defer cancel()
	return t.Tx.Rollback(ctx)
}
