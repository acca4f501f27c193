// Command ketchfake serves a local stand-in for Ketch, for development, demos and the fault
// suite of erasure-worker's Ketch door. It serves the callbacks Ketch would (POST
// /callbacks/{name}) and, when asked through POST /_fake/push, sends DeleteRequests to a
// forwarder as Ketch would. Faults on the callbacks can be set with flags at start and changed at
// run time through PUT /_fake/faults; GET /_fake/stats shows what the forwarder did.
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
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// shutdownTimeout bounds the graceful stop; hung callbacks are released first, so only ordinary
// in-flight calls (a push among them) are waited for.
const shutdownTimeout = 10 * time.Second

// run is the whole program. It returns the exit code: 0 after a clean stop on SIGINT/SIGTERM,
// 1 if serving failed, 2 for bad flags.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, args, getenv, stdout, stderr)
}

type config struct {
	addr          string
	callbackBase  string
	identitySpace string
	tenant        string
	callbacks     int
	outage        time.Duration
	faults        ketchfake.Faults
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var (
		c                               config
		retryAfter, latency, latencyJit time.Duration
	)
	fs := flag.NewFlagSet("ketchfake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8081", "listen address (port 0 picks a free port)")
	fs.StringVar(&c.callbackBase, "callback-base-url", "", "URL the forwarder reaches this fake at, for the callbacks of pushed requests (default: the listen address)")
	fs.StringVar(&c.identitySpace, "identity-space", "", "identity space that carries the Knot id (default: env KETCH_IDENTITY_SPACE, else account_id)")
	fs.StringVar(&c.tenant, "tenant", "ketchfake", "metadata.tenant of pushed requests")
	fs.IntVar(&c.callbacks, "callbacks", 2, "callbacks per pushed request, 1 to 16")
	fs.Float64Var(&c.faults.ErrorRate, "error-rate", 0, "share of callbacks answered 500")
	fs.Float64Var(&c.faults.RateLimitRate, "rate-limit-rate", 0, "share of callbacks answered 429")
	fs.DurationVar(&retryAfter, "retry-after", time.Second, "Retry-After sent with 429s (whole seconds, rounded up)")
	fs.Float64Var(&c.faults.ConflictRate, "conflict-rate", 0, "share of callbacks answered 409")
	fs.Float64Var(&c.faults.HangRate, "hang-rate", 0, "share of callbacks never answered")
	fs.DurationVar(&latency, "latency", 0, "latency added to every callback")
	fs.DurationVar(&latencyJit, "latency-jitter", 0, "uniform extra latency, 0 up to this")
	fs.DurationVar(&c.outage, "outage", 0, "answer every callback 503 for this long after start")
	fs.BoolVar(&c.faults.RejectCredentials, "reject-credentials", false, "answer every callback 401")
	fs.BoolVar(&c.faults.RejectAfterFinal, "reject-after-final", false, "answer 409 to an event after a final one (it is counted either way)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.identitySpace == "" {
		c.identitySpace = getenv("KETCH_IDENTITY_SPACE")
	}
	if c.identitySpace == "" {
		c.identitySpace = "account_id"
	}
	c.faults.RetryAfter = ketchfake.Duration(retryAfter)
	c.faults.Latency = ketchfake.Duration(latency)
	c.faults.LatencyJitter = ketchfake.Duration(latencyJit)
	switch {
	case c.callbacks < 1 || c.callbacks > 16:
		return c, fmt.Errorf("-callbacks must be between 1 and 16, got %d", c.callbacks)
	case c.outage < 0:
		return c, fmt.Errorf("-outage must not be negative, got %v", c.outage)
	case c.tenant == "":
		return c, errors.New("-tenant must not be empty")
	}
	if c.callbackBase != "" {
		u, err := url.Parse(c.callbackBase)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("-callback-base-url must be an absolute http or https URL, got %q", c.callbackBase)
		}
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
		fmt.Fprintf(stderr, "ketchfake: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error("listen failed", "addr", cfg.addr, "err", err)
		return 1
	}
	if cfg.callbackBase == "" {
		cfg.callbackBase = "http://" + reachable(ln.Addr())
	}
	if cfg.outage > 0 {
		cfg.faults.OutageUntil = time.Now().Add(cfg.outage)
	}
	fake := ketchfake.New(ketchfake.Options{
		CallbackBaseURL:     cfg.callbackBase,
		IdentitySpace:       cfg.identitySpace,
		Tenant:              cfg.tenant,
		CallbacksPerRequest: cfg.callbacks,
		Faults:              cfg.faults,
	})

	// Hung callbacks wait for their request context; cancelling the base context on shutdown
	// releases them, so Shutdown does not wait for clients that may never give up.
	baseCtx, releaseHung := context.WithCancel(context.Background())
	defer releaseHung()
	srv := &http.Server{
		Handler:           fake,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	fmt.Fprintf(stdout, "ketchfake listening on http://%s\n", ln.Addr())
	// Credentials never reach these logs: callback credentials live in the fake's memory, the
	// forwarder's credential only in a push request's body.
	log.Info("ketchfake started", "addr", ln.Addr().String(), "callback_base_url", cfg.callbackBase,
		"identity_space", cfg.identitySpace, "tenant", cfg.tenant, "callbacks", cfg.callbacks,
		"error_rate", cfg.faults.ErrorRate, "rate_limit_rate", cfg.faults.RateLimitRate,
		"retry_after", cfg.faults.RetryAfter.String(), "conflict_rate", cfg.faults.ConflictRate,
		"hang_rate", cfg.faults.HangRate, "latency", cfg.faults.Latency.String(),
		"latency_jitter", cfg.faults.LatencyJitter.String(), "outage", cfg.outage,
		"reject_credentials", cfg.faults.RejectCredentials, "reject_after_final", cfg.faults.RejectAfterFinal)

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
	log.Info("stopped", "requests_pushed", st.RequestsPushed, "callbacks", st.Callbacks, "events", st.Events,
		"final_events", st.FinalEvents, "uids_one_final", st.UIDsOneFinal, "uids_multiple_finals", st.UIDsMultipleFinals,
		"uids_awaiting_final", st.UIDsAwaitingFinal, "events_after_final", st.EventsAfterFinal,
		"bad_credentials", st.BadCredentials, "malformed_events", st.MalformedEvents)
	return code
}

// reachable is the listen address as a client can dial it: an unspecified host (":8081",
// "0.0.0.0:8081") becomes loopback.
func reachable(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return addr.String()
	}
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
}
