// Command onetrustfake serves a local stand-in for OneTrust, for development, demos and the
// fault suite of erasure-worker's OneTrust connector. It serves OneTrust's token endpoint and
// subtask API (POST /api/access/v1/oauth/token, PUT /api/datasubject/v2/subtasks/{id}/status,
// GET /api/datasubject/v2/subtasks/{id}) and, when asked through POST /_fake/push, creates
// subtasks and pushes them to the door as the customer's Integrations workflow would. Faults on
// the subtask calls can be set with flags at start and changed at run time through PUT
// /_fake/faults; GET /_fake/stats shows what the worker did, GET /_fake/subtasks/{id} one
// subtask's updates.
//
// The client credentials default to ONETRUST_CLIENT_ID and ONETRUST_CLIENT_SECRET from the
// environment, so that the worker and the fake can share one. The admin endpoints have no
// authentication: bind to loopback (the default).
package main

import (
	"cmp"
	"errors"
	"flag"
	"net/http"
	"os"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/onetrust/onetrustfake"
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
		lifetime    time.Duration
		acceptFinal bool
		f           = onetrustfake.Faults{RetryAfter: onetrustfake.Duration(time.Second)}
		fake        *onetrustfake.Server
	)
	return fakekit.Command{
		Name:   "onetrustfake",
		Addr:   "127.0.0.1:8083",
		Faults: &f,
		Flags: func(fs *flag.FlagSet) {
			fs.DurationVar(&lifetime, "token-lifetime", time.Hour, "expires_in of the access tokens issued (whole seconds); the API refuses a token once it has passed")
			fs.BoolVar(&acceptFinal, "accept-repeat-final", false, "answer 200 to the same final status sent again to a closed subtask, instead of 400")
		},
		Check: func() (http.Handler, error) {
			if lifetime < time.Second {
				return nil, errors.New("-token-lifetime must be at least 1s")
			}
			fake = onetrustfake.New(onetrustfake.Options{
				ClientID:      cmp.Or(getenv("ONETRUST_CLIENT_ID"), "onetrustfake-client"),
				ClientSecret:  cmp.Or(getenv("ONETRUST_CLIENT_SECRET"), "onetrustfake-secret"),
				TokenLifetime: lifetime, AcceptRepeatFinal: acceptFinal, Faults: f,
			})
			return fake, nil
		},
		// Credentials never reach these logs: the client's live in the environment, the door's
		// bearer only in a push request's body, the tokens in the fake's memory.
		Started: func(string) []any {
			return []any{"token_lifetime", lifetime, "accept_repeat_final", acceptFinal}
		},
		Stopped: func() any { return fake.Stats() },
	}
}
