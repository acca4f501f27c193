// Command fidesfake serves a local stand-in for Fides, for development, demos and the fault
// suite of erasure-worker's Fides door. It serves Fides' request task callback (POST
// /api/v1/request-task/callback) and, when asked through POST /_fake/push, sends erasure requests
// to the door as Fides' custom SaaS connector would, each with its reply-to-token. Faults on the
// callback can be set with flags at start and changed at run time through PUT /_fake/faults; GET
// /_fake/stats shows what Fides was told.
//
// The admin endpoints have no authentication: bind to loopback (the default).
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/fides/fidesfake"
	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole program; it returns the exit code: 0 after a clean stop on SIGINT/SIGTERM, 1
// if serving failed, 2 for bad flags. serve runs until ctx is done.
var run, serve = fakekit.Main(command)

func command(func(string) string) fakekit.Command {
	var (
		park, lifetime time.Duration
		f              = fidesfake.Faults{RetryAfter: fidesfake.Duration(time.Second)}
		fake           *fidesfake.Server
	)
	return fakekit.Command{
		Name:   "fidesfake",
		Addr:   "127.0.0.1:8082",
		Faults: &f,
		Flags: func(fs *flag.FlagSet) {
			fs.DurationVar(&park, "park-delay", fidesfake.DefaultParkDelay, "how long after the door's 2xx a task awaits its callback; a callback before then is answered 400 (0: at once)")
			fs.DurationVar(&lifetime, "token-lifetime", fidesfake.DefaultTokenLifetime, "how long a reply-to-token is taken after it was issued (Fides: FIDES__EXECUTION__PRIVACY_REQUEST_DELAY_TIMEOUT)")
		},
		Check: func() (http.Handler, error) {
			switch {
			case park < 0:
				return nil, fmt.Errorf("-park-delay must not be negative, got %v", park)
			case lifetime <= 0:
				return nil, fmt.Errorf("-token-lifetime must be above zero, got %v", lifetime)
			}
			if park == 0 {
				park = -1 // Options: none
			}
			fake = fidesfake.New(fidesfake.Options{ParkDelay: park, TokenLifetime: lifetime, Faults: f})
			return fake, nil
		},
		// Tokens never reach these logs: they live in the fake's memory, and the door's bearer
		// token only in a push request's body.
		Started: func(base string) []any {
			return []any{"callback_url", base + fidesfake.CallbackPath, "park_delay", max(park, 0), "token_lifetime", lifetime}
		},
		Stopped: func() any { return fake.Stats() },
	}
}
