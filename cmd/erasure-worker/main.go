// Command erasure-worker carries out GDPR erasure requests against Knot's POST /user/delete.
// A privacy request system inserts requests into PostgreSQL; `erasure-worker run` claims them,
// calls Knot within a rate limit and records each outcome. See `erasure-worker --help`.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/fides"
	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/connector/onetrust"
	"github.com/erasure-worker/erasure-worker/connector/transcend"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
)

// connectors are the privacy request systems the worker takes requests from and reports to,
// one line each (README "Adding a connector").
var connectors = connector.NewRegistry(
	webhook.Connector{},
	ketch.Connector{},
	transcend.Connector{},
	onetrust.Connector{},
	fides.Connector{},
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and something failed (rejected lines, database down)
	exitUsage   = 2 // bad arguments or configuration: nothing was done
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *environment, args []string) int
}

var commands = []command{
	{"migrate", "create or upgrade the database schema (safe to run from many replicas at once)", runMigrate},
	{"run", "carry out erasure requests until SIGTERM", runWorker},
	{"enqueue", "add erasure requests from JSON Lines or CSV (a file or standard input)", runEnqueue},
	{"status", "show counts by status and outcome, the oldest pending request and recent failures", runStatus},
	{"requeue", "put failed requests back to pending: all, by --ref, by --error-code or by --outcome", runRequeue},
	{"reports", "reports requeue: send again the reports a privacy request system refused for good", runReports},
	{"evidence", "print a request's record: by --ref, by --external-user-id, or a period's as JSON Lines (--since/--until)", runEvidence},
	{"console", "serve the read-only web console (CONSOLE_LISTEN_ADDR, behind CONSOLE_WEB_CONFIG_FILE's authentication)", runConsole},
}

// environment is what a command may touch of the outside world, so that tests run the whole
// binary in-process.
type environment struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func (e *environment) errorf(format string, args ...any) {
	fmt.Fprintf(e.stderr, "erasure-worker: "+format+"\n", args...)
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	env := &environment{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "--version", "-version", "version":
		fmt.Fprintf(stdout, "erasure-worker %s\n", buildVersion())
		return exitOK
	case "--help", "-help", "-h", "help":
		usage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, env, args[1:])
		}
	}
	env.errorf("unknown command %q", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `erasure-worker %s: carries out GDPR erasure requests against Knot's POST /user/delete.

Usage:
  erasure-worker COMMAND [flags]

Commands:
`, buildVersion())
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Every setting comes from the environment or from the flag of the same name
(RATE_LIMIT_RPS or --rate-limit-rps); a flag wins. Secrets (DATABASE_URL,
KNOT_SECRET) come only from the environment or from a file named by NAME_FILE
(DATABASE_URL_FILE, KNOT_SECRET_FILE): a flag's value is visible to every user
of the machine (ps), so their flags are refused. 'erasure-worker COMMAND --help'
lists a command's settings and their defaults.
`)
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return "dev"
}
