// Command webhookfake receives erasure-worker's outcome webhooks for development, demos and
// tests: it verifies every Standard Webhooks signature and timestamp, checks each body against
// the contract, and counts what arrived (GET /_fake/stats). Faults can be set with flags at start
// and changed at run time through PUT /_fake/faults.
//
// Point REPORT_WEBHOOK_URL at any path of it, with the same secret in REPORT_WEBHOOK_SECRET and
// WEBHOOK_FAKE_SECRET. The admin endpoints have no authentication: bind to loopback (the
// default).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole program; it returns the exit code: 0 after a clean stop on SIGINT/SIGTERM, 1
// if serving failed, 2 for bad flags. serve runs until ctx is done.
var run, serve = fakekit.Main(command)

func command(getenv func(string) string) fakekit.Command {
	var (
		secretFile, userIDExpr string
		tolerance, outage      time.Duration
		f                      webhookfake.Faults
		fake                   *webhookfake.Server
	)
	return fakekit.Command{
		Name: "webhookfake",
		Addr: "127.0.0.1:8083",
		Flags: func(fs *flag.FlagSet) {
			// The secret itself has no flag: a flag's value shows in ps, and its default in the usage.
			fs.StringVar(&secretFile, "secret-file", "", "file holding the whsec_ secret (default: env WEBHOOK_FAKE_SECRET)")
			fs.DurationVar(&tolerance, "tolerance", 5*time.Minute, "how far webhook-timestamp may be from the fake's clock")
			fs.StringVar(&userIDExpr, "user-id-pattern", "", "regular expression: a string in a body that matches it counts as a violation (a user id)")
			fakekit.FaultFlags(fs, "valid messages", &f.ErrorRate, &f.RateLimitRate, &f.RetryAfter, &f.HangRate)
			fs.Float64Var(&f.ConflictRate, "conflict-rate", 0, "share of valid messages answered 409")
			fs.Float64Var(&f.LostAnswerRate, "lost-answer-rate", 0, "share of valid messages processed, then dropped without an answer")
			fs.BoolVar(&f.RejectSignatures, "reject-signatures", false, "answer every message 401")
			fs.DurationVar(&outage, "outage", 0, "answer every message 500 for this long after start")
		},
		Check: func() (http.Handler, error) {
			opts := webhookfake.Options{Tolerance: tolerance}
			env := getenv("WEBHOOK_FAKE_SECRET")
			switch {
			case secretFile != "" && env != "":
				return nil, errors.New("set WEBHOOK_FAKE_SECRET or -secret-file, not both")
			case secretFile != "":
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return nil, fmt.Errorf("-secret-file: %v", err)
				}
				opts.Secret = strings.TrimSpace(string(b))
			default:
				opts.Secret = strings.TrimSpace(env)
			}
			if opts.Secret == "" {
				return nil, errors.New("-secret-file (or WEBHOOK_FAKE_SECRET) is required")
			}
			if userIDExpr != "" {
				re, err := regexp.Compile(userIDExpr)
				if err != nil {
					return nil, fmt.Errorf("-user-id-pattern: %v", err)
				}
				opts.LooksLikeUserID = re.MatchString
			}
			switch {
			case tolerance <= 0:
				return nil, fmt.Errorf("-tolerance must be positive, got %v", tolerance)
			case outage < 0:
				return nil, fmt.Errorf("-outage must not be negative, got %v", outage)
			}
			if err := f.Validate(); err != nil {
				// Validate names JSON fields; the flags use dashes.
				return nil, fmt.Errorf("fault flags: %v", err)
			}
			if outage > 0 {
				f.OutageUntil = time.Now().Add(outage)
			}
			opts.Faults = f
			// New's error names what is wrong with the secret, never the secret.
			var err error
			fake, err = webhookfake.New(opts)
			return fake, err
		},
		Started: func(string) []any {
			return []any{"tolerance", tolerance, "user_id_pattern", userIDExpr != "",
				"error_rate", f.ErrorRate, "rate_limit_rate", f.RateLimitRate,
				"retry_after", f.RetryAfter.String(), "conflict_rate", f.ConflictRate,
				"hang_rate", f.HangRate, "lost_answer_rate", f.LostAnswerRate,
				"reject_signatures", f.RejectSignatures, "outage", outage}
		},
		Stopped: func() []any {
			st := fake.Stats()
			return []any{"messages", st.Messages, "accepted", st.Accepted, "request_refs", st.RequestRefs,
				"bad_signatures", st.BadSignatures, "stale_timestamps", st.StaleTimestamps, "malformed", st.Malformed,
				"violations", st.Violations, "duplicate_webhook_ids", st.DuplicateWebhookIDs,
				"request_refs_several_ids", st.RequestRefsSeveralIDs}
		},
	}
}
