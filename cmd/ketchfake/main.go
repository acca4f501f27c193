// Command ketchfake serves a local stand-in for Ketch, for development, demos and the fault
// suite of erasure-worker's Ketch door: the callbacks Ketch serves (POST /callbacks/{name}) and,
// on POST /_fake/push, DeleteRequests sent to a forwarder as Ketch sends them, with the identity
// in the space KETCH_IDENTITY_SPACE names (default account_id). Faults on the callbacks are set
// with flags and through PUT /_fake/faults; GET /_fake/stats shows what the forwarder did.
//
// The admin endpoints have no authentication: bind to loopback (the default).
package main

import (
	"cmp"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole program, serve runs it until ctx is done; both return the exit code: 0 after a
// clean stop, 1 if serving failed, 2 for bad flags.
var run, serve = fakekit.Main(command)

func command(getenv func(string) string) fakekit.Command {
	var (
		space     = cmp.Or(getenv("KETCH_IDENTITY_SPACE"), "account_id")
		callbacks int
		f         = ketchfake.Faults{RetryAfter: ketchfake.Duration(time.Second)}
		fake      *ketchfake.Server
	)
	return fakekit.Command{
		Name:   "ketchfake",
		Addr:   "127.0.0.1:8081",
		Faults: &f,
		Flags: func(fs *flag.FlagSet) {
			fs.IntVar(&callbacks, "callbacks", 2, "callbacks per pushed request, 1 to 16")
		},
		Check: func() (http.Handler, error) {
			if callbacks < 1 || callbacks > 16 {
				return nil, fmt.Errorf("-callbacks must be between 1 and 16, got %d", callbacks)
			}
			fake = ketchfake.New(ketchfake.Options{IdentitySpace: space, CallbacksPerRequest: callbacks, Faults: f})
			return fake, nil
		},
		// Credentials never reach these logs: callback credentials live in the fake's memory, the
		// forwarder's credential only in a push request's body.
		Started: func(base string) []any {
			fake.SetCallbackBaseURL(base)
			return []any{"callback_base_url", base, "identity_space", space, "callbacks", callbacks}
		},
		Stopped: func() any { return fake.Stats() },
	}
}
