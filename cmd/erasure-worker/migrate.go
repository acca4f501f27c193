package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/settings"
)

func runMigrate(ctx context.Context, env *environment, args []string) int {
	s := newSettingSet("migrate", env)
	dbURL := s.RequireDatabaseURL()
	if code, ok := parseOnly(s, env, args); !ok {
		return code
	}
	url := s.DatabaseURL(dbURL)
	if s.Err() != nil {
		env.errorf("%v", s.Err())
		return exitUsage
	}
	cfg, err := queue.ParseConnConfig(url)
	if err != nil {
		env.errorf("DATABASE_URL: %v", err)
		return exitUsage
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		env.errorf("DATABASE_URL: cannot reach the database at %s: %v", cfg.Host, err)
		return exitFailure
	}
	defer conn.Close(context.WithoutCancel(ctx))
	from, to, err := queue.Migrate(ctx, conn)
	if err != nil {
		env.errorf("%v", err)
		return exitFailure
	}
	if from == to {
		fmt.Fprintf(env.stdout, "schema is up to date at version %d\n", to)
	} else {
		fmt.Fprintf(env.stdout, "schema migrated from version %d to %d\n", from, to)
	}
	return exitOK
}

// parseOnly parses a command that takes no positional arguments. ok is false when the command
// must stop with code (after --help, or on a usage error).
func parseOnly(s *settings.Set, env *environment, args []string) (code int, ok bool) {
	rest, err := s.Parse(args)
	if errors.Is(err, errHelp) {
		return exitOK, false
	}
	if err != nil {
		env.errorf("%v", err)
		return exitUsage, false
	}
	if len(rest) > 0 {
		env.errorf("%s: unexpected argument %q", s.Command(), rest[0])
		return exitUsage, false
	}
	return 0, true
}

// commandStatementTimeout bounds each statement of the short commands: longer than `run`'s
// (queue.DefaultStatementTimeout), since `status` counts and `requeue` updates whole tables of
// millions of rows while a person waits, and can interrupt.
const commandStatementTimeout = 5 * time.Minute

// connectQueue opens a pool for the short commands and checks that the database holds this
// binary's schema, so that an unmigrated database is named as such rather than by the first
// failing statement; errors never repeat the URL.
func connectQueue(ctx context.Context, env *environment, s *settings.Set, dbURL *settings.Setting) (*queue.Queue, func(), int) {
	url := s.DatabaseURL(dbURL)
	if s.Err() != nil {
		env.errorf("%v", s.Err())
		return nil, nil, exitUsage
	}
	pool, err := openPool(ctx, url, false, 0)
	if err != nil {
		env.errorf("%v", err)
		return nil, nil, exitFailure
	}
	q := queue.New(pool).WithStatementTimeout(commandStatementTimeout)
	if err := q.CheckSchema(ctx); err != nil {
		pool.Close()
		env.errorf("%s: %v", s.Command(), err)
		return nil, nil, exitFailure
	}
	return q, pool.Close, exitOK
}
