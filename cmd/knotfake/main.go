// Command knotfake serves a local stand-in for Knot's POST /user/delete, for
// development, demos and load tests of erasure-worker. Faults can be set
// with flags at start and changed at run time through PUT /_fake/faults;
// GET /_fake/stats shows what clients did.
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
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// shutdownTimeout bounds the graceful stop; hung calls are released first,
// so only ordinary in-flight calls are waited for.
const shutdownTimeout = 10 * time.Second

// run is the whole program. It returns the exit code: 0 after a clean stop
// on SIGINT/SIGTERM, 1 if serving failed, 2 for bad flags.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, args, getenv, stdout, stderr)
}

type config struct {
	addr     string
	clientID string
	secret   string
	missing  float64
	outage   time.Duration
	faults   knotfake.Faults
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var (
		c                               config
		retryAfter, latency, latencyJit time.Duration
	)
	fs := flag.NewFlagSet("knotfake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "listen address (port 0 picks a free port)")
	// The env values are applied after parsing, not as flag defaults: the
	// flag package prints defaults in its usage text, secret included.
	fs.StringVar(&c.clientID, "client-id", "", "client id to accept (default: env KNOT_CLIENT_ID)")
	fs.StringVar(&c.secret, "secret", "", "secret to accept (default: env KNOT_SECRET; prefer the env, flags show in ps)")
	fs.Float64Var(&c.missing, "missing", 0.1, "share of users that never existed (answered USER_NOT_FOUND)")
	fs.Float64Var(&c.faults.ErrorRate, "error-rate", 0, "share of calls answered 500")
	fs.Float64Var(&c.faults.RateLimitRate, "rate-limit-rate", 0, "share of calls answered 429")
	fs.DurationVar(&retryAfter, "retry-after", time.Second, "Retry-After sent with 429s (whole seconds, rounded up)")
	fs.DurationVar(&latency, "latency", 0, "latency added to every call")
	fs.DurationVar(&latencyJit, "latency-jitter", 0, "uniform extra latency, 0 up to this")
	fs.DurationVar(&c.outage, "outage", 0, "answer every call 500 for this long after start")
	fs.BoolVar(&c.faults.RejectCredentials, "reject-credentials", false, "answer every call 401 INVALID_API_KEYS")
	fs.Float64Var(&c.faults.HangRate, "hang-rate", 0, "share of calls never answered")
	fs.Float64Var(&c.faults.BadGatewayRate, "bad-gateway-rate", 0, "share of calls answered 502 with an HTML body")
	fs.Float64Var(&c.faults.TruncatedRate, "truncated-rate", 0, "share of calls answered 200 with truncated JSON (nothing deleted)")
	fs.Float64Var(&c.faults.EmptyOKRate, "empty-ok-rate", 0, "share of calls answered 200 with an empty body (nothing deleted)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.clientID == "" {
		c.clientID = getenv("KNOT_CLIENT_ID")
	}
	if c.secret == "" {
		c.secret = getenv("KNOT_SECRET")
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	c.faults.RetryAfter = knotfake.Duration(retryAfter)
	c.faults.Latency = knotfake.Duration(latency)
	c.faults.LatencyJitter = knotfake.Duration(latencyJit)
	switch {
	case c.clientID == "":
		return c, errors.New("-client-id (or KNOT_CLIENT_ID) is required")
	case c.secret == "":
		return c, errors.New("-secret (or KNOT_SECRET) is required")
	case c.missing < 0 || c.missing > 1 || c.missing != c.missing:
		return c, fmt.Errorf("-missing must be between 0 and 1, got %v", c.missing)
	case c.outage < 0:
		return c, fmt.Errorf("-outage must not be negative, got %v", c.outage)
	}
	if err := c.faults.Validate(); err != nil {
		// Validate names JSON fields; the flags use dashes.
		return c, fmt.Errorf("fault flags: %v", err)
	}
	return c, nil
}

// serve runs until ctx is done; tests call it directly instead of sending
// signals.
func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "knotfake: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	if cfg.outage > 0 {
		cfg.faults.OutageUntil = time.Now().Add(cfg.outage)
	}
	fake := knotfake.New(knotfake.Options{
		ClientID: cfg.clientID,
		Secret:   cfg.secret,
		Exists:   knotfake.MissingShare(cfg.missing),
		Faults:   cfg.faults,
	})

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error("listen failed", "addr", cfg.addr, "err", err)
		return 1
	}

	// Hung calls wait for their request context; cancelling the base
	// context on shutdown releases them, so Shutdown does not wait for
	// clients that may never give up.
	baseCtx, releaseHung := context.WithCancel(context.Background())
	defer releaseHung()
	srv := &http.Server{
		Handler:           fake,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	fmt.Fprintf(stdout, "knotfake listening on http://%s\n", ln.Addr())
	// The client id is not secret, but logs here are shared freely in
	// bug reports; leave credentials out entirely.
	log.Info("knotfake started", "addr", ln.Addr().String(), "missing", cfg.missing,
		"error_rate", cfg.faults.ErrorRate, "rate_limit_rate", cfg.faults.RateLimitRate,
		"retry_after", cfg.faults.RetryAfter.String(), "latency", cfg.faults.Latency.String(),
		"latency_jitter", cfg.faults.LatencyJitter.String(), "outage", cfg.outage,
		"reject_credentials", cfg.faults.RejectCredentials, "hang_rate", cfg.faults.HangRate,
		"bad_gateway_rate", cfg.faults.BadGatewayRate, "truncated_rate", cfg.faults.TruncatedRate,
		"empty_ok_rate", cfg.faults.EmptyOKRate)

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
	log.Info("stopped", "calls", st.Calls, "deleted", st.Deleted, "not_found", st.NotFound,
		"duplicate_deletes", st.DuplicateDeletes, "early_retries", st.EarlyRetries,
		"busiest_second", st.BusiestSecond)
	return code
}
