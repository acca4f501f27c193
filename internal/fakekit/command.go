package fakekit

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
)

// Command is a cmd/*fake binary: its flags and its fake. Serve does the rest, alike for all.
type Command struct {
	// Name ("knotfake") names the flag set and starts error messages and the "listening on" line.
	Name string
	// Addr is the default of -addr.
	Addr string
	// Flags declares the binary's flags on fs, -addr aside.
	Flags func(fs *flag.FlagSet)
	// Check validates the parsed flags and builds the fake; its error is a usage error.
	Check func() (http.Handler, error)
	// Started is told the URL the fake is reachable at, and returns the attributes of the
	// "started" log line. Credentials never go there: these logs are shared freely.
	Started func(base string) []any
	// Stopped returns the attributes of the "stopped" log line: the fake's main counts.
	Stopped func() []any
}

// FaultFlags declares the flags of the faults every fake has: -error-rate, -rate-limit-rate,
// -retry-after and -hang-rate. what names the calls they apply to ("callbacks").
func FaultFlags(fs *flag.FlagSet, what string, errorRate, rateLimitRate *float64, retryAfter *Duration, hangRate *float64) {
	fs.Float64Var(errorRate, "error-rate", 0, "share of "+what+" answered 500")
	fs.Float64Var(rateLimitRate, "rate-limit-rate", 0, "share of "+what+" answered 429")
	fs.DurationVar((*time.Duration)(retryAfter), "retry-after", time.Second, "Retry-After sent with 429s (whole seconds, rounded up)")
	fs.Float64Var(hangRate, "hang-rate", 0, "share of "+what+" never answered")
}

// LatencyFlags declares -latency and -latency-jitter; what names the calls they delay ("call").
func LatencyFlags(fs *flag.FlagSet, what string, latency, jitter *Duration) {
	fs.DurationVar((*time.Duration)(latency), "latency", 0, "latency added to every "+what)
	fs.DurationVar((*time.Duration)(jitter), "latency-jitter", 0, "uniform extra latency, 0 up to this")
}

// shutdownTimeout bounds the graceful stop; hung calls are released first, so only ordinary
// in-flight calls are waited for.
const shutdownTimeout = 10 * time.Second

// Main returns a binary's whole program, run, and serve, which runs until ctx is done: tests
// call serve instead of sending signals. Both return the exit code.
func Main(command func(getenv func(string) string) Command) (
	run func(args []string, getenv func(string) string, stdout, stderr io.Writer) int,
	serve func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int,
) {
	serve = func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
		return command(getenv).Serve(ctx, args, stdout, stderr)
	}
	run = func(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return serve(ctx, args, getenv, stdout, stderr)
	}
	return run, serve
}

// Serve parses args, listens, prints "NAME listening on http://ADDR" and serves the fake until
// ctx is done, then stops gracefully. It returns the exit code: 0 after a clean stop, 1 if
// serving failed, 2 for bad flags.
func (c Command) Serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(c.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", c.Addr, "listen address (port 0 picks a free port)")
	c.Flags(fs)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var fake http.Handler
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err == nil {
		fake, err = c.Check()
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", c.Name, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Error("listen failed", "addr", *addr, "err", err)
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
	fmt.Fprintf(stdout, "%s listening on http://%s\n", c.Name, ln.Addr())
	log.Info(c.Name+" started", append([]any{"addr", ln.Addr().String()}, c.Started("http://"+reachable(ln.Addr()))...)...)

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
	log.Info("stopped", c.Stopped()...)
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
