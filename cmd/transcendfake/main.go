// Command transcendfake serves a local stand-in for Transcend's Sombra gateway (the "cron"
// integration: GET /v1/data-silo/{id}/pending-requests/ERASURE and PUT /v1/data-silo), for
// development, demos and fault tests of erasure-worker. Items are seeded with -items or POST
// /_fake/items; faults can be set with flags at start and changed at run time through PUT
// /_fake/faults; GET /_fake/stats shows what clients did.
//
// The admin endpoints have no authentication: bind to loopback (the default).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// shutdownTimeout bounds the graceful stop; hung calls are released first, so only ordinary
// in-flight calls are waited for.
const shutdownTimeout = 10 * time.Second

// maxSeed bounds -items, as POST /_fake/items is bounded.
const maxSeed = 1_000_000

// run is the whole program. It returns the exit code: 0 after a clean stop on SIGINT/SIGTERM,
// 1 if serving failed, 2 for bad flags.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, args, getenv, stdout, stderr)
}

type config struct {
	addr                     string
	apiKey, sombraKey, silo  string
	items                    int
	prefix                   string
	daysUntilOverdue         float64
	pullOutage, reportOutage time.Duration
	faults                   transcendfake.Faults
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var (
		c                   config
		retryAfter, latency time.Duration
		rejectCredentials   bool
	)
	fs := flag.NewFlagSet("transcendfake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8082", "listen address (port 0 picks a free port)")
	// The env values are applied after parsing, not as flag defaults: the flag package prints
	// defaults in its usage text, keys included.
	fs.StringVar(&c.apiKey, "api-key", "", "API key to accept (default: env TRANSCEND_FAKE_API_KEY; prefer the env, flags show in ps)")
	fs.StringVar(&c.sombraKey, "sombra-key", "", "Sombra internal key to require as x-sombra-authorization, as a self-hosted Sombra does (default: env TRANSCEND_FAKE_SOMBRA_KEY; none: multi-tenant)")
	fs.StringVar(&c.silo, "data-silo-id", "", "the data silo the fake serves (default: env TRANSCEND_FAKE_DATA_SILO_ID)")
	fs.IntVar(&c.items, "items", 0, "pending erasure items to seed at start")
	fs.StringVar(&c.prefix, "items-prefix", "user", "identifier prefix of seeded items (prefix-000001, ...)")
	fs.Float64Var(&c.daysUntilOverdue, "days-until-overdue", 30, "deadline of seeded items, in days from start")
	fs.Float64Var(&c.faults.Pull.ErrorRate, "pull-error-rate", 0, "share of pulls answered 500")
	fs.Float64Var(&c.faults.Pull.RateLimitRate, "pull-rate-limit-rate", 0, "share of pulls answered 429")
	fs.Float64Var(&c.faults.Pull.HangRate, "pull-hang-rate", 0, "share of pulls never answered")
	fs.Float64Var(&c.faults.Pull.TruncatedRate, "pull-truncated-rate", 0, "share of pulls answered 200 with truncated JSON")
	fs.DurationVar(&c.pullOutage, "pull-outage", 0, "answer every pull 500 for this long after start")
	fs.Float64Var(&c.faults.Report.ErrorRate, "report-error-rate", 0, "share of reports answered 500 (nothing recorded)")
	fs.Float64Var(&c.faults.Report.RateLimitRate, "report-rate-limit-rate", 0, "share of reports answered 429 (nothing recorded)")
	fs.Float64Var(&c.faults.Report.HangRate, "report-hang-rate", 0, "share of reports never answered (nothing recorded)")
	fs.Float64Var(&c.faults.Report.ConflictRate, "report-conflict-rate", 0, "share of reports answered 409 as if the request had been revoked")
	fs.DurationVar(&c.reportOutage, "report-outage", 0, "answer every report 500 for this long after start")
	fs.DurationVar(&retryAfter, "retry-after", time.Second, "Retry-After sent with 429s (whole seconds, rounded up)")
	fs.DurationVar(&latency, "latency", 0, "latency added to every pull and report")
	fs.BoolVar(&rejectCredentials, "reject-credentials", false, "answer every pull and report 401")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.apiKey == "" {
		c.apiKey = getenv("TRANSCEND_FAKE_API_KEY")
	}
	if c.sombraKey == "" {
		c.sombraKey = getenv("TRANSCEND_FAKE_SOMBRA_KEY")
	}
	if c.silo == "" {
		c.silo = getenv("TRANSCEND_FAKE_DATA_SILO_ID")
	}
	for _, fsSet := range []*transcendfake.FaultSet{&c.faults.Pull, &c.faults.Report} {
		fsSet.RetryAfter = transcendfake.Duration(retryAfter)
		fsSet.Latency = transcendfake.Duration(latency)
		fsSet.RejectCredentials = rejectCredentials
	}
	switch {
	case c.apiKey == "":
		return c, errors.New("-api-key (or TRANSCEND_FAKE_API_KEY) is required")
	case c.silo == "":
		return c, errors.New("-data-silo-id (or TRANSCEND_FAKE_DATA_SILO_ID) is required")
	case c.items < 0 || c.items > maxSeed:
		return c, fmt.Errorf("-items must be between 0 and %d, got %d", maxSeed, c.items)
	case c.prefix == "" || len(c.prefix) > 64 || strings.ContainsFunc(c.prefix, unicode.IsControl):
		return c, errors.New("-items-prefix must be 1 to 64 bytes without control characters")
	case math.IsNaN(c.daysUntilOverdue) || math.Abs(c.daysUntilOverdue) > 36500:
		return c, fmt.Errorf("-days-until-overdue must be within 36500 days either way, got %v", c.daysUntilOverdue)
	case c.pullOutage < 0:
		return c, fmt.Errorf("-pull-outage must not be negative, got %v", c.pullOutage)
	case c.reportOutage < 0:
		return c, fmt.Errorf("-report-outage must not be negative, got %v", c.reportOutage)
	}
	if err := c.faults.Validate(); err != nil {
		// Validate names JSON fields (pull.error_rate); the flags use dashes.
		return c, fmt.Errorf("fault flags: %v", err)
	}
	return c, nil
}

// serve runs until ctx is done; tests call it directly instead of sending signals.
func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "transcendfake: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	start := time.Now()
	if cfg.pullOutage > 0 {
		cfg.faults.Pull.OutageUntil = start.Add(cfg.pullOutage)
	}
	if cfg.reportOutage > 0 {
		cfg.faults.Report.OutageUntil = start.Add(cfg.reportOutage)
	}
	fake := transcendfake.New(transcendfake.Options{
		APIKey:     cfg.apiKey,
		SombraKey:  cfg.sombraKey,
		DataSiloID: cfg.silo,
		Faults:     cfg.faults,
	})
	if cfg.items > 0 {
		fake.Generate(cfg.items, cfg.prefix, cfg.daysUntilOverdue)
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error("listen failed", "addr", cfg.addr, "err", err)
		return 1
	}

	// Hung calls wait for their request context; cancelling the base context on shutdown
	// releases them, so Shutdown does not wait for clients that may never give up.
	baseCtx, releaseHung := context.WithCancel(context.Background())
	defer releaseHung()
	srv := &http.Server{
		Handler:           fake,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	fmt.Fprintf(stdout, "transcendfake listening on http://%s\n", ln.Addr())
	// Keys never reach the log; the data silo id is not a credential.
	p, r := cfg.faults.Pull, cfg.faults.Report
	log.Info("transcendfake started", "addr", ln.Addr().String(), "data_silo_id", cfg.silo,
		"self_hosted_sombra", cfg.sombraKey != "", "items", cfg.items,
		"pull_error_rate", p.ErrorRate, "pull_rate_limit_rate", p.RateLimitRate, "pull_hang_rate", p.HangRate,
		"pull_truncated_rate", p.TruncatedRate, "pull_outage", cfg.pullOutage,
		"report_error_rate", r.ErrorRate, "report_rate_limit_rate", r.RateLimitRate, "report_hang_rate", r.HangRate,
		"report_conflict_rate", r.ConflictRate, "report_outage", cfg.reportOutage,
		"retry_after", p.RetryAfter.String(), "latency", p.Latency.String(), "reject_credentials", p.RejectCredentials)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		log.Error("serve failed", "err", err)
		return 1
	case <-ctx.Done():
	}

	log.Info("shutting down")
	releaseHung()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	code := 0
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Error("shutdown incomplete", "err", err)
		code = 1
	}
	<-served // returns http.ErrServerClosed once Shutdown has begun

	st := fake.Stats()
	log.Info("stopped", "pulls", st.Pulls, "items_served", st.ItemsServed, "reports", st.Reports,
		"items_pending", st.ItemsPending, "items_reported", st.ItemsReported,
		"duplicate_reports", st.DuplicateReports, "bad_nonces", st.BadNonces,
		"mismatched_profile_ids", st.MismatchedProfileIDs, "bad_credentials", st.BadCredentials)
	return code
}
