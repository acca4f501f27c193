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
	"reflect"
	"strings"
	"syscall"
	"time"
)

// Command is a cmd/*fake binary: its flags and its fake. Serve does the rest, alike for all.
type Command struct {
	// Name ("knotfake") names the flag set and starts error messages and the "listening on" line.
	Name string
	// Addr is the default of -addr.
	Addr string
	// Faults points at the binary's faults. Each field with a help tag gets a flag named for its
	// JSON name with dashes (outage_until: -outage, a duration from start); the faults are
	// validated once the flags are parsed, and logged in the "started" line.
	Faults Faults
	// Flags declares the binary's other flags on fs.
	Flags func(fs *flag.FlagSet)
	// Check validates the other flags and builds the fake; its error is a usage error.
	Check func() (http.Handler, error)
	// Started is told the URL the fake is reachable at, and returns the other attributes of the
	// "started" log line. Credentials never go there: these logs are shared freely.
	Started func(base string) []any
	// Stopped returns the fake's stats, logged in the "stopped" line.
	Stopped func() any
}

// faultFlags declares the flags of c.Faults and returns what sets its outages once they are
// parsed.
func (c Command) faultFlags(fs *flag.FlagSet) func() error {
	var outages []func() error
	v := reflect.ValueOf(c.Faults).Elem()
	for i := range v.NumField() {
		help, ok := v.Type().Field(i).Tag.Lookup("help")
		if !ok {
			continue
		}
		name := strings.ReplaceAll(jsonName(v.Type().Field(i)), "_", "-")
		switch p := v.Field(i).Addr().Interface().(type) {
		case *float64:
			fs.Float64Var(p, name, *p, help)
		case *bool:
			fs.BoolVar(p, name, *p, help)
		case *Duration:
			fs.DurationVar((*time.Duration)(p), name, time.Duration(*p), help)
		case *time.Time:
			name = strings.TrimSuffix(name, "-until")
			d := fs.Duration(name, 0, help)
			outages = append(outages, func() error {
				if *d < 0 {
					return fmt.Errorf("-%s must not be negative, got %v", name, *d)
				}
				if *d > 0 {
					*p = time.Now().Add(*d)
				}
				return nil
			})
		}
	}
	return func() error {
		for _, set := range outages {
			if err := set(); err != nil {
				return err
			}
		}
		return nil
	}
}

// Attrs are the attributes of a log line for v, a struct or a pointer to one: each field by its
// JSON name, but maps, lists and zero times; a nested struct's fields as "pull.error_rate".
func Attrs(v any) []any { return attrs(reflect.Indirect(reflect.ValueOf(v)), "") }

func attrs(v reflect.Value, prefix string) []any {
	var out []any
	for i := range v.NumField() {
		f, name := v.Field(i), prefix+jsonName(v.Type().Field(i))
		_, isTime := f.Interface().(time.Time)
		switch {
		case f.Kind() == reflect.Map || f.Kind() == reflect.Slice || isTime && f.IsZero():
		case f.Kind() == reflect.Struct && !isTime:
			out = append(out, attrs(f, name+".")...)
		default:
			out = append(out, name, f.Interface())
		}
	}
	return out
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
	outages := c.faultFlags(fs)
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
		err = outages()
	}
	if err == nil {
		if err = c.Faults.Validate(); err != nil {
			// Validate names JSON fields; the flags use dashes.
			err = fmt.Errorf("fault flags: %v", err)
		}
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
	started := append([]any{"addr", ln.Addr().String()}, c.Started("http://"+reachable(ln.Addr()))...)
	log.Info(c.Name+" started", append(started, Attrs(c.Faults)...)...)

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
	log.Info("stopped", Attrs(c.Stopped())...)
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
