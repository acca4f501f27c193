package queue

import (
	"context"
	"fmt"
)

// Listen holds a dedicated connection (outside the pool) listening on Channel and calls wake
// for every notification, until ctx ends or the connection fails; it returns why. The caller
// reconnects. The connection has keepalives (Configure), so a server that vanished is found
// while waiting. Work is never lost when notifications are (PgBouncer in transaction mode drops
// them): the worker polls too.
func (q *Queue) Listen(ctx context.Context, ready func(), wake func()) error {
	conn, err := connect(ctx, q.pool)
	if err != nil {
		return fmt.Errorf("listen: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// LISTEN itself is a statement like any other; only the wait for notifications is long.
	lctx, cancel := bounded(ctx, DefaultStatementTimeout)
	_, err = conn.Exec(lctx, "LISTEN "+Channel)
	cancel()
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if ready != nil {
		ready()
	}
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("listen: %w", err)
		}
		wake()
	}
}
