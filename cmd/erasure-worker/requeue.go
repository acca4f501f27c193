package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/erasure-worker/erasure-worker/queue"
)

func runRequeue(ctx context.Context, env *environment, args []string) int {
	s := newSettingSet("requeue", env)
	dbURL := s.requireDatabaseURL()
	var f queue.RequeueFilter
	var refs refList
	s.fs.BoolVar(&f.All, "all", false, "")
	s.fs.Var(&refs, "ref", "")
	s.fs.StringVar(&f.ErrorCode, "error-code", "", "")
	s.fs.StringVar(&f.Outcome, "outcome", "", "")
	s.flagExtra("all", "requeue every failed request")
	s.flagExtra("ref REQUEST_REF", "requeue the failed request with this request_ref; repeat for several")
	s.flagExtra("error-code CODE", "requeue failed requests whose last_error_code is CODE (Knot's error_code, or http_403, http_500, timeout, lease_expired...)")
	s.flagExtra("outcome OUTCOME", "requeue failed requests with this outcome: rejected, invalid or exhausted")
	if code, ok := parseOnly(s, env, args); !ok {
		return code
	}
	f.Refs = refs
	if f.Outcome != "" && f.Outcome != queue.OutcomeRejected && f.Outcome != queue.OutcomeInvalid && f.Outcome != queue.OutcomeExhausted {
		env.errorf("requeue: --outcome %q is not one of rejected, invalid, exhausted", f.Outcome)
		return exitUsage
	}
	q, closeDB, code := connectQueue(ctx, env, s, dbURL)
	if q == nil {
		return code
	}
	defer closeDB()
	n, err := q.Requeue(ctx, f)
	if err != nil {
		env.errorf("%v (use exactly one of --all, --ref, --error-code, --outcome)", err)
		return exitUsage
	}
	fmt.Fprintf(env.stdout, "requeued %d failed request(s)\n", n)
	if len(refs) > 0 && n < int64(len(refs)) {
		fmt.Fprintf(env.stderr, "erasure-worker: requeue: %d of the %d refs named were not failed requests (unknown, or pending, running or succeeded)\n",
			int64(len(refs))-n, len(refs))
	}
	return exitOK
}

type refList []string

var _ flag.Value = (*refList)(nil)

func (r *refList) String() string { return strings.Join(*r, ",") }
func (r *refList) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("--ref is empty")
	}
	*r = append(*r, v)
	return nil
}
