// Command transcendfake serves a local stand-in for Transcend's Sombra gateway (package
// transcendfake) for development, demos and fault tests of erasure-worker. Items are seeded with
// -items; faults are set with flags at start or through PUT /_fake/faults; GET /_fake/stats shows
// what clients did. The keys and the data silo come from the environment, as flags would show
// the keys in ps: TRANSCEND_FAKE_API_KEY, TRANSCEND_FAKE_DATA_SILO_ID and, to play a self-hosted
// Sombra, TRANSCEND_FAKE_SOMBRA_KEY.
//
// The admin endpoints have no authentication: bind to loopback (the default).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole program; it returns the exit code: 0 after a clean stop on SIGINT/SIGTERM, 1
// if serving failed, 2 for bad flags. serve runs until ctx is done.
var run, serve = fakekit.Main(command)

// maxSeed bounds -items.
const maxSeed = 1_000_000

func command(getenv func(string) string) fakekit.Command {
	var (
		items  int
		prefix string
		f      transcendfake.Faults
		fake   *transcendfake.Server
	)
	apiKey, silo := getenv("TRANSCEND_FAKE_API_KEY"), getenv("TRANSCEND_FAKE_DATA_SILO_ID")
	sombraKey := getenv("TRANSCEND_FAKE_SOMBRA_KEY")
	p, r := &f.Pull, &f.Report
	return fakekit.Command{
		Name:   "transcendfake",
		Addr:   "127.0.0.1:8082",
		Faults: &f,
		Flags: func(fs *flag.FlagSet) {
			fs.IntVar(&items, "items", 0, "pending erasure items to seed at start, due in 30 days")
			fs.StringVar(&prefix, "items-prefix", "user", "identifier prefix of seeded items (prefix-000001, ...)")
			for door, set := range map[string]*transcendfake.FaultSet{"pull": p, "report": r} {
				fs.Float64Var(&set.ErrorRate, door+"-error-rate", 0, "share of "+door+"s answered 500")
				fs.Float64Var(&set.RateLimitRate, door+"-rate-limit-rate", 0, "share of "+door+"s answered 429")
				fs.Float64Var(&set.HangRate, door+"-hang-rate", 0, "share of "+door+"s never answered")
			}
			fs.Float64Var(&p.TruncatedRate, "pull-truncated-rate", 0, "share of pulls answered 200 with cut-off JSON")
			fs.Float64Var(&r.ConflictRate, "report-conflict-rate", 0, "share of reports answered 409 as if revoked")
			fs.Float64Var(&r.LostAnswerRate, "report-lost-answer-rate", 0, "share of reports recorded, then dropped")
			// The faults both doors share are the pull's, copied to the report once parsed.
			fs.DurationVar((*time.Duration)(&p.RetryAfter), "retry-after", time.Second, "Retry-After sent with 429s")
			fs.DurationVar((*time.Duration)(&p.Latency), "latency", 0, "latency added to every pull and report")
			fs.BoolVar(&p.RejectCredentials, "reject-credentials", false, "answer every pull and report 401")
		},
		Check: func() (http.Handler, error) {
			r.RetryAfter, r.Latency, r.RejectCredentials = p.RetryAfter, p.Latency, p.RejectCredentials
			switch {
			case apiKey == "":
				return nil, errors.New("TRANSCEND_FAKE_API_KEY is required")
			case silo == "":
				return nil, errors.New("TRANSCEND_FAKE_DATA_SILO_ID is required")
			case items < 0 || items > maxSeed:
				return nil, fmt.Errorf("-items must be between 0 and %d, got %d", maxSeed, items)
			case prefix == "" || len(prefix) > 64 || strings.ContainsFunc(prefix, unicode.IsControl):
				return nil, errors.New("-items-prefix must be 1 to 64 bytes without control characters")
			}
			fake = transcendfake.New(transcendfake.Options{APIKey: apiKey, SombraKey: sombraKey, DataSiloID: silo, Faults: f})
			seed := make([]transcendfake.Item, items)
			for i := range seed {
				seed[i] = transcendfake.Item{Identifier: fmt.Sprintf("%s-%06d", prefix, i+1), DaysUntilOverdue: 30}
			}
			fake.Add(seed...)
			return fake, nil
		},
		// Keys never reach the log; the data silo id is not a credential.
		Started: func(string) []any {
			return []any{"data_silo_id", silo, "self_hosted_sombra", sombraKey != "", "items", items}
		},
		Stopped: func() any { return fake.Stats() },
	}
}
