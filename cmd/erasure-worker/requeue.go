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
	dbURL := s.RequireDatabaseURL()
	var f queue.RequeueFilter
	var refs refList
	s.Flags().BoolVar(&f.All, "all", false, "")
	s.Flags().Var(&refs, "ref", "")
	s.Flags().StringVar(&f.ErrorCode, "error-code", "", "")
	s.Flags().StringVar(&f.Outcome, "outcome", "", "")
	s.FlagExtra("all", "requeue every failed request")
	s.FlagExtra("ref REQUEST_REF", "requeue the failed request with this request_ref; repeat for several")
	s.FlagExtra("error-code CODE", "requeue failed requests whose last_error_code is CODE (Knot's error_code, or http_403, http_500, timeout, lease_expired...)")
	s.FlagExtra("outcome OUTCOME", "requeue failed requests with this outcome: rejected, invalid or exhausted")
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
	skipped, err := q.RequeueSkipped(ctx, f)
	if err != nil {
		env.errorf("%v", err)
		return exitFailure
	}
	if skipped > 0 {
		fmt.Fprintf(env.stderr, "erasure-worker: requeue: skipped %d failed request(s) whose external_user_id was pseudonymised (IDENTIFIER_RETENTION passed): there is no id left to send Knot; ask the privacy request system to send them again\n", skipped)
	}
	if len(refs) > 0 && n+skipped < int64(len(refs)) {
		fmt.Fprintf(env.stderr, "erasure-worker: requeue: %d of the %d refs named were not failed requests (unknown, or pending, running or succeeded)\n",
			int64(len(refs))-n-skipped, len(refs))
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

// runReports is `erasure-worker reports requeue [--connector C]`.
func runReports(ctx context.Context, env *environment, args []string) int {
	if len(args) == 0 || args[0] != "requeue" {
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
			fmt.Fprintln(env.stdout, "Usage: erasure-worker reports requeue [--connector "+strings.Join(connectors.Names(), "|")+"]\n\nSends again the reports that a privacy request system refused for good (erasure-worker status lists them).\nSee 'erasure-worker reports requeue --help' for its settings.")
			return exitOK
		}
		env.errorf("reports: the only subcommand is requeue (erasure-worker reports requeue [--connector C])")
		return exitUsage
	}
	s := newSettingSet("reports requeue", env)
	dbURL := s.RequireDatabaseURL()
	var connector string
	names := strings.Join(connectors.Names(), ", ")
	s.Flags().StringVar(&connector, "connector", "", "")
	s.FlagExtra("connector NAME", "requeue only this connector's failed reports: one of "+names+" (default: all)")
	if code, ok := parseOnly(s, env, args[1:]); !ok {
		return code
	}
	if _, known := connectors.Lookup(connector); connector != "" && !known {
		env.errorf("reports requeue: --connector %q is not one of %s", connector, names)
		return exitUsage
	}
	q, closeDB, code := connectQueue(ctx, env, s, dbURL)
	if q == nil {
		return code
	}
	defer closeDB()
	n, err := q.RequeueReports(ctx, connector)
	if err != nil {
		env.errorf("%v", err)
		return exitFailure
	}
	fmt.Fprintf(env.stdout, "requeued %d failed report(s); the reporters send them within a second\n", n)
	return exitOK
}
