// Command transcendfake serves a local stand-in for Transcend's Sombra gateway (the "cron"
// integration: GET /v1/data-silo/{id}/pending-requests/ERASURE and PUT /v1/data-silo), for
// development, demos and fault tests of erasure-worker. Items are seeded with -items or POST
// /_fake/items; faults can be set with flags at start and changed at run time through PUT
// /_fake/faults; GET /_fake/stats shows what clients did.
//
// The admin endpoints have no authentication: bind to loopback (the default).
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"math"
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

// maxSeed bounds -items, as POST /_fake/items is bounded.
const maxSeed = 1_000_000

func command(getenv func(string) string) fakekit.Command {
	var (
		apiKey, sombraKey, silo, prefix string
		items                           int
		daysUntilOverdue                float64
		pullOutage, reportOutage        time.Duration
		f                               transcendfake.Faults
		fake                            *transcendfake.Server
	)
	p, r := &f.Pull, &f.Report
	return fakekit.Command{
		Name:   "transcendfake",
		Addr:   "127.0.0.1:8082",
		Faults: &f,
		Flags: func(fs *flag.FlagSet) {
			// The env values are applied after parsing, not as flag defaults: the flag package prints
			// defaults in its usage text, keys included.
			fs.StringVar(&apiKey, "api-key", "", "API key to accept (default: env TRANSCEND_FAKE_API_KEY; prefer the env, flags show in ps)")
			fs.StringVar(&sombraKey, "sombra-key", "", "Sombra internal key to require as x-sombra-authorization, as a self-hosted Sombra does (default: env TRANSCEND_FAKE_SOMBRA_KEY; none: multi-tenant)")
			fs.StringVar(&silo, "data-silo-id", "", "the data silo the fake serves (default: env TRANSCEND_FAKE_DATA_SILO_ID)")
			fs.IntVar(&items, "items", 0, "pending erasure items to seed at start")
			fs.StringVar(&prefix, "items-prefix", "user", "identifier prefix of seeded items (prefix-000001, ...)")
			fs.Float64Var(&daysUntilOverdue, "days-until-overdue", 30, "deadline of seeded items, in days from start")
			fs.Float64Var(&p.ErrorRate, "pull-error-rate", 0, "share of pulls answered 500")
			fs.Float64Var(&p.RateLimitRate, "pull-rate-limit-rate", 0, "share of pulls answered 429")
			fs.Float64Var(&p.HangRate, "pull-hang-rate", 0, "share of pulls never answered")
			fs.Float64Var(&p.TruncatedRate, "pull-truncated-rate", 0, "share of pulls answered 200 with truncated JSON")
			fs.DurationVar(&pullOutage, "pull-outage", 0, "answer every pull 500 for this long after start")
			fs.Float64Var(&r.ErrorRate, "report-error-rate", 0, "share of reports answered 500 (nothing recorded)")
			fs.Float64Var(&r.RateLimitRate, "report-rate-limit-rate", 0, "share of reports answered 429 (nothing recorded)")
			fs.Float64Var(&r.HangRate, "report-hang-rate", 0, "share of reports never answered (nothing recorded)")
			fs.Float64Var(&r.ConflictRate, "report-conflict-rate", 0, "share of reports answered 409 as if the request had been revoked")
			fs.Float64Var(&r.LostAnswerRate, "report-lost-answer-rate", 0, "share of reports recorded, then dropped without an answer")
			fs.DurationVar(&reportOutage, "report-outage", 0, "answer every report 500 for this long after start")
			// The faults both doors share are the pull's, copied to the report once parsed.
			fs.DurationVar((*time.Duration)(&p.RetryAfter), "retry-after", time.Second, "Retry-After sent with 429s (whole seconds, rounded up)")
			fs.DurationVar((*time.Duration)(&p.Latency), "latency", 0, "latency added to every pull and report")
			fs.BoolVar(&p.RejectCredentials, "reject-credentials", false, "answer every pull and report 401")
		},
		Check: func() (http.Handler, error) {
			apiKey = cmp.Or(apiKey, getenv("TRANSCEND_FAKE_API_KEY"))
			sombraKey = cmp.Or(sombraKey, getenv("TRANSCEND_FAKE_SOMBRA_KEY"))
			silo = cmp.Or(silo, getenv("TRANSCEND_FAKE_DATA_SILO_ID"))
			r.RetryAfter, r.Latency, r.RejectCredentials = p.RetryAfter, p.Latency, p.RejectCredentials
			switch {
			case apiKey == "":
				return nil, errors.New("-api-key (or TRANSCEND_FAKE_API_KEY) is required")
			case silo == "":
				return nil, errors.New("-data-silo-id (or TRANSCEND_FAKE_DATA_SILO_ID) is required")
			case items < 0 || items > maxSeed:
				return nil, fmt.Errorf("-items must be between 0 and %d, got %d", maxSeed, items)
			case prefix == "" || len(prefix) > 64 || strings.ContainsFunc(prefix, unicode.IsControl):
				return nil, errors.New("-items-prefix must be 1 to 64 bytes without control characters")
			case math.IsNaN(daysUntilOverdue) || math.Abs(daysUntilOverdue) > 36500:
				return nil, fmt.Errorf("-days-until-overdue must be within 36500 days either way, got %v", daysUntilOverdue)
			case pullOutage < 0:
				return nil, fmt.Errorf("-pull-outage must not be negative, got %v", pullOutage)
			case reportOutage < 0:
				return nil, fmt.Errorf("-report-outage must not be negative, got %v", reportOutage)
			}
			start := time.Now()
			if pullOutage > 0 {
				p.OutageUntil = start.Add(pullOutage)
			}
			if reportOutage > 0 {
				r.OutageUntil = start.Add(reportOutage)
			}
			fake = transcendfake.New(transcendfake.Options{APIKey: apiKey, SombraKey: sombraKey, DataSiloID: silo, Faults: f})
			if items > 0 {
				fake.Generate(items, prefix, daysUntilOverdue)
			}
			return fake, nil
		},
		// Keys never reach the log; the data silo id is not a credential.
		Started: func(string) []any {
			return []any{"data_silo_id", silo, "self_hosted_sombra", sombraKey != "", "items", items}
		},
		Stopped: func() any { return fake.Stats() },
	}
}
