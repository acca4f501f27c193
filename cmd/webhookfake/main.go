// Command webhookfake serves webhookfake, a receiver of erasure-worker's outcome webhooks, for
// development, demos and tests; faults are set with flags at start or with PUT /_fake/faults.
// Point REPORT_WEBHOOK_URL at any path of it, with the same secret in REPORT_WEBHOOK_SECRET and
// WEBHOOK_FAKE_SECRET. The admin endpoints have no authentication: bind to loopback (the
// default).
package main

import (
	"errors"
	"flag"
	"net/http"
	"os"
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
	f := webhookfake.Faults{RetryAfter: webhookfake.Duration(time.Second)}
	var fake *webhookfake.Server
	return fakekit.Command{
		Name:   "webhookfake",
		Addr:   "127.0.0.1:8083",
		Faults: &f,
		// The secret has no flag: a flag's value shows in ps, and its default in the usage.
		Flags: func(*flag.FlagSet) {},
		Check: func() (http.Handler, error) {
			secret := strings.TrimSpace(getenv("WEBHOOK_FAKE_SECRET"))
			if secret == "" {
				return nil, errors.New("WEBHOOK_FAKE_SECRET is required")
			}
			// New's error names what is wrong with the secret, never the secret.
			var err error
			fake, err = webhookfake.New(webhookfake.Options{Secret: secret, Faults: f})
			return fake, err
		},
		Started: func(string) []any { return nil },
		Stopped: func() any { return fake.Stats() },
	}
}
