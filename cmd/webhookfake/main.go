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
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// shutdownTimeout bounds the graceful stop; hung messages are released first, so only ordinary
// in-flight messages are waited for.
const shutdownTimeout = 10 * time.Second

// run is the whole program. It returns the exit code: 0 after a clean stop on SIGINT/SIGTERM, 1
// if serving failed, 2 for bad flags.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, args, getenv, stdout, stderr)
}

type config struct {
	addr      string
	secret    string
	tolerance time.Duration
	outage    time.Duration
	userID    *regexp.Regexp
	faults    webhookfake.Faults
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var (
		c                      config
		secretFile, userIDExpr string
		retryAfter             time.Duration
	)
	fs := flag.NewFlagSet("webhookfake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8083", "listen address (port 0 picks a free port)")
	// The secret itself has no flag: a flag's value shows in ps, and its default in the usage.
	fs.StringVar(&secretFile, "secret-file", "", "file holding the whsec_ secret (default: env WEBHOOK_FAKE_SECRET)")
	fs.DurationVar(&c.tolerance, "tolerance", 5*time.Minute, "how far webhook-timestamp may be from the fake's clock")
	fs.StringVar(&userIDExpr, "user-id-pattern", "", "regular expression: a string in a body that matches it counts as a violation (a user id)")
	fs.Float64Var(&c.faults.ErrorRate, "error-rate", 0, "share of valid messages answered 500")
	fs.Float64Var(&c.faults.RateLimitRate, "rate-limit-rate", 0, "share of valid messages answered 429")
	fs.DurationVar(&retryAfter, "retry-after", time.Second, "Retry-After sent with 429s (whole seconds, rounded up)")
	fs.Float64Var(&c.faults.ConflictRate, "conflict-rate", 0, "share of valid messages answered 409")
	fs.Float64Var(&c.faults.HangRate, "hang-rate", 0, "share of valid messages never answered")
	fs.Float64Var(&c.faults.LostAnswerRate, "lost-answer-rate", 0, "share of valid messages processed, then dropped without an answer")
	fs.BoolVar(&c.faults.RejectSignatures, "reject-signatures", false, "answer every message 401")
	fs.DurationVar(&c.outage, "outage", 0, "answer every message 500 for this long after start")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	env := getenv("WEBHOOK_FAKE_SECRET")
	switch {
	case secretFile != "" && env != "":
		return c, errors.New("set WEBHOOK_FAKE_SECRET or -secret-file, not both")
	case secretFile != "":
		b, err := os.ReadFile(secretFile)
		if err != nil {
			return c, fmt.Errorf("-secret-file: %v", err)
		}
		c.secret = strings.TrimSpace(string(b))
	default:
		c.secret = strings.TrimSpace(env)
	}
	if c.secret == "" {
		return c, errors.New("-secret-file (or WEBHOOK_FAKE_SECRET) is required")
	}
	if userIDExpr != "" {
		re, err := regexp.Compile(userIDExpr)
		if err != nil {
			return c, fmt.Errorf("-user-id-pattern: %v", err)
		}
		c.userID = re
	}
	c.faults.RetryAfter = webhookfake.Duration(retryAfter)
	switch {
	case c.tolerance <= 0:
		return c, fmt.Errorf("-tolerance must be positive, got %v", c.tolerance)
	case c.outage < 0:
		return c, fmt.Errorf("-outage must not be negative, got %v", c.outage)
	}
	if err := c.faults.Validate(); err != nil {
		// Validate names JSON fields; the flags use dashes.
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
		fmt.Fprintf(stderr, "webhookfake: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	if cfg.outage > 0 {
		cfg.faults.OutageUntil = time.Now().Add(cfg.outage)
	}
	opts := webhookfake.Options{Secret: cfg.secret, Faults: cfg.faults, Tolerance: cfg.tolerance}
	if cfg.userID != nil {
		opts.LooksLikeUserID = cfg.userID.MatchString
	}
	fake, err := webhookfake.New(opts)
	if err != nil {
		// The error names what is wrong with the secret, never the secret.
		fmt.Fprintf(stderr, "webhookfake: %v\n", err)
		return 2
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error("listen failed", "addr", cfg.addr, "err", err)
		return 1
	}

	// Hung messages wait for their request context; cancelling the base context on shutdown
	// releases them, so Shutdown does not wait for senders that may never give up.
	baseCtx, releaseHung := context.WithCancel(context.Background())
	defer releaseHung()
	srv := &http.Server{
		Handler:           fake,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	fmt.Fprintf(stdout, "webhookfake listening on http://%s\n", ln.Addr())
	log.Info("webhookfake started", "addr", ln.Addr().String(), "tolerance", cfg.tolerance,
		"user_id_pattern", cfg.userID != nil,
		"error_rate", cfg.faults.ErrorRate, "rate_limit_rate", cfg.faults.RateLimitRate,
		"retry_after", cfg.faults.RetryAfter.String(), "conflict_rate", cfg.faults.ConflictRate,
		"hang_rate", cfg.faults.HangRate, "lost_answer_rate", cfg.faults.LostAnswerRate,
		"reject_signatures", cfg.faults.RejectSignatures, "outage", cfg.outage)

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
	log.Info("stopped", "messages", st.Messages, "accepted", st.Accepted, "request_refs", st.RequestRefs,
		"bad_signatures", st.BadSignatures, "stale_timestamps", st.StaleTimestamps, "malformed", st.Malformed,
		"violations", st.Violations, "duplicate_webhook_ids", st.DuplicateWebhookIDs,
		"request_refs_several_ids", st.RequestRefsSeveralIDs)
	return code
}
