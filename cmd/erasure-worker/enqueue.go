package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
)

// enqueueBatch is how many lines go to the database in one statement.
const enqueueBatch = 1000

func runEnqueue(ctx context.Context, env *environment, args []string) int {
	s := newSettingSet("enqueue", env)
	s.SetOperand(" [FILE]")
	dbURL := s.RequireDatabaseURL()
	var format string
	s.Flags().StringVar(&format, "format", "jsonl", "")
	s.FlagExtra("format jsonl|csv",
		`input format (default jsonl). JSON Lines: {"request_ref":"...","external_user_id":"...","due_at":"2026-12-24T00:00:00Z"}
      (due_at optional: RFC 3339 or YYYY-MM-DD; default received + 30 days). CSV: request_ref,external_user_id[,due_at],
      with or without that header line. Reads FILE, or standard input when FILE is - or absent.`)
	rest, err := s.Parse(args)
	if errors.Is(err, errHelp) {
		return exitOK
	}
	if err != nil {
		env.errorf("%v", err)
		return exitUsage
	}
	if format != "jsonl" && format != "csv" {
		env.errorf("enqueue: --format %q is not jsonl or csv", format)
		return exitUsage
	}
	if len(rest) > 1 {
		env.errorf("enqueue: takes at most one FILE, got %d arguments", len(rest))
		return exitUsage
	}
	in, name := env.stdin, "standard input"
	if len(rest) == 1 && rest[0] != "-" {
		f, err := os.Open(rest[0])
		if err != nil {
			env.errorf("enqueue: %v", err)
			return exitUsage
		}
		defer f.Close()
		in, name = f, rest[0]
	}

	q, closeDB, code := connectQueue(ctx, env, s, dbURL)
	if q == nil {
		return code
	}
	defer closeDB()

	var counts struct{ inserted, duplicate, rejected int }
	reject := func(line int, err error) {
		counts.rejected++
		fmt.Fprintf(env.stderr, "enqueue: line %d: %v\n", line, err)
	}
	var batch []queue.NewRequest
	var lines []int
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		results, err := q.Enqueue(ctx, batch)
		if err != nil {
			return err
		}
		for i, r := range results {
			switch r.Admission {
			case queue.Inserted:
				counts.inserted++
			case queue.Duplicate:
				counts.duplicate++
			default:
				reject(lines[i], r.Err)
			}
		}
		batch, lines = batch[:0], lines[:0]
		return nil
	}

	p := connector.LineParser{CSV: format == "csv"}
	now := time.Now()
	err = connector.EachLine(in, func(n int, line []byte, tooLong bool) error {
		if tooLong {
			reject(n, fmt.Errorf("line is longer than %d bytes", connector.MaxLineBytes))
			return nil
		}
		sub, skip, err := p.Parse(line)
		req := queue.NewRequest{RequestRef: sub.RequestRef, ExternalUserID: sub.ExternalUserID, DueAt: sub.DueAt}
		switch {
		case err != nil:
			reject(n, err)
		case skip:
		default:
			if !req.DueAt.IsZero() && req.DueAt.Before(now) {
				fmt.Fprintf(env.stderr, "enqueue: line %d: warning: due_at %s is in the past; the request is accepted and counts as overdue\n",
					n, req.DueAt.Format(time.RFC3339))
			}
			batch, lines = append(batch, req), append(lines, n)
			if len(batch) >= enqueueBatch {
				return flush()
			}
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	// What was written stays written: report it even when the rest could not be.
	fmt.Fprintf(env.stdout, "inserted %d, duplicate %d, rejected %d\n", counts.inserted, counts.duplicate, counts.rejected)
	if err != nil {
		env.errorf("enqueue: reading %s stopped: %v; lines after the last reported batch were not enqueued (enqueue is idempotent: run it again)", name, err)
		return exitFailure
	}
	if counts.rejected > 0 {
		return exitFailure
	}
	return exitOK
}
