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
		tolerance              time.Duration
		f                      = webhookfake.Faults{RetryAfter: webhookfake.Duration(time.Second)}
		fake                   *webhookfake.Server
	)
	return fakekit.Command{
		Name:   "webhookfake",
		Addr:   "127.0.0.1:8083",
		Faults: &f,
		Flags: func(fs *flag.FlagSet) {
			// The secret itself has no flag: a flag's value shows in ps, and its default in the usage.
			fs.StringVar(&secretFile, "secret-file", "", "file holding the whsec_ secret (default: env WEBHOOK_FAKE_SECRET)")
			fs.DurationVar(&tolerance, "tolerance", 5*time.Minute, "how far webhook-timestamp may be from the fake's clock")
			fs.StringVar(&userIDExpr, "user-id-pattern", "", "regular expression: a string in a body that matches it counts as a violation (a user id)")
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
			if tolerance <= 0 {
				return nil, fmt.Errorf("-tolerance must be positive, got %v", tolerance)
			}
			opts.Faults = f
			// New's error names what is wrong with the secret, never the secret.
			var err error
			fake, err = webhookfake.New(opts)
			return fake, err
		},
		Started: func(string) []any { return []any{"tolerance", tolerance, "user_id_pattern", userIDExpr != ""} },
		Stopped: func() any { return fake.Stats() },
	}
}
