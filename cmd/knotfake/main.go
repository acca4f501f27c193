// Command knotfake serves a local stand-in for Knot's POST /user/delete, for development, demos
// and load tests of erasure-worker. Faults are set with flags at start and through PUT
// /_fake/faults at run time; GET /_fake/stats shows what clients did. The admin endpoints have
// no authentication: bind to loopback (the default).
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole program, serve the same until ctx is done; both return the exit code.
var run, serve = fakekit.Main(command)

func command(getenv func(string) string) fakekit.Command {
	var (
		clientID, secret string
		missing          float64
		f                = knotfake.Faults{RetryAfter: knotfake.Duration(time.Second)}
		fake             *knotfake.Server
	)
	return fakekit.Command{
		Name:   "knotfake",
		Addr:   "127.0.0.1:8080",
		Faults: &f,
		Flags: func(fs *flag.FlagSet) {
			// The env applies after parsing, not as defaults: usage prints defaults, secret included.
			fs.StringVar(&clientID, "client-id", "", "client id to accept (default: env KNOT_CLIENT_ID)")
			fs.StringVar(&secret, "secret", "", "secret to accept (default: env KNOT_SECRET; prefer the env, flags show in ps)")
			fs.Float64Var(&missing, "missing", 0.1, "share of users that never existed (answered USER_NOT_FOUND)")
		},
		Check: func() (http.Handler, error) {
			clientID, secret = cmp.Or(clientID, getenv("KNOT_CLIENT_ID")), cmp.Or(secret, getenv("KNOT_SECRET"))
			switch {
			case clientID == "":
				return nil, errors.New("-client-id (or KNOT_CLIENT_ID) is required")
			case secret == "":
				return nil, errors.New("-secret (or KNOT_SECRET) is required")
			case missing < 0 || missing > 1 || missing != missing:
				return nil, fmt.Errorf("-missing must be between 0 and 1, got %v", missing)
			}
			fake = knotfake.New(knotfake.Options{ClientID: clientID, Secret: secret, Exists: knotfake.MissingShare(missing), Faults: f})
			return fake, nil
		},
		// No credentials, not even the client id: these logs are shared freely in bug reports.
		Started: func(string) []any { return []any{"missing", missing} },
		Stopped: func() any { return fake.Stats() },
	}
}
