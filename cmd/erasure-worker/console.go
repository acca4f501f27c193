package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"go.yaml.in/yaml/v3"

	"github.com/erasure-worker/erasure-worker/console"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/worker"
)

// consoleDBConns is the console's own small pool: the chart's computation in the background,
// the overview's four statements read at once, and another person's page beside them.
const consoleDBConns = 8

// consoleStatementTimeout bounds each statement of a page: a person look-up reads the whole
// table (nothing indexes external_user_id), the rest go through indexes.
var consoleStatementTimeout = 30 * time.Second

// consoleConfig is what `console` was started with.
type consoleConfig struct {
	databaseURL string
	listenAddr  string
	webConfig   string // "" only with insecureLoopback
	insecure    bool
	keys        worker.IdentifierKeys
	evidence    time.Duration
	logLevel    string
	logFormat   string
}

// runConsole is `erasure-worker console`: the read-only web console, behind exporter-toolkit's
// web configuration (bcrypt basic auth, optional TLS).
func runConsole(ctx context.Context, env *environment, args []string) int {
	cfg, code, ok := parseConsoleConfig(env, args)
	if !ok {
		return code
	}
	log := logger(cfg.logLevel, cfg.logFormat, env.stderr)
	if err := serveConsole(ctx, cfg, log); err != nil {
		env.errorf("console: %v", err)
		return exitFailure
	}
	return exitOK
}

func parseConsoleConfig(env *environment, args []string) (consoleConfig, int, bool) {
	s := newSettingSet("console", env)
	var (
		dbURL     = s.RequireDatabaseURL()
		listen    = s.Add("CONSOLE_LISTEN_ADDR", ":8080", "address serving the console's pages and its /metrics")
		webConfig = s.Add("CONSOLE_WEB_CONFIG_FILE", "", "web configuration file in the format of Prometheus' exporter-toolkit (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md): basic_auth_users with bcrypt hashes (make one with `htpasswd -nbBC 10 USER PASSWORD`), optional tls_server_config; read again at each request. Required unless --insecure-loopback")
		keyFile   = s.Add("IDENTIFIER_KEY_FILE", "", "the keys that pseudonymise finished requests' ids, one a line, newest first: with it a person look-up also finds requests whose id was pseudonymised")
		evidence  = s.Add("EVIDENCE_RETENTION", "730d", "how long after a request finished it is deleted, as `run` is set: the console shows each request's deletion date. Whole days (730d) or a Go duration")
		logLevel  = s.Add("LOG_LEVEL", "info", "debug, info, warn or error")
		logFormat = s.Add("LOG_FORMAT", "json", "json or text: every page, person look-up and export is logged with the user's name")
	)
	var insecure bool
	s.Flags().BoolVar(&insecure, "insecure-loopback", false, "")
	s.FlagExtra("insecure-loopback", "serve without CONSOLE_WEB_CONFIG_FILE, without authentication, for a local demo: refused unless CONSOLE_LISTEN_ADDR is a loopback address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT)")
	if code, ok := parseOnly(s, env, args); !ok {
		return consoleConfig{}, code, false
	}
	c := consoleConfig{
		databaseURL: s.DatabaseURL(dbURL),
		listenAddr:  s.String(listen),
		webConfig:   s.String(webConfig),
		insecure:    insecure,
		evidence:    s.Period(evidence, maxRetentionDays),
		logLevel:    s.OneOf(logLevel, "debug", "info", "warn", "error"),
		logFormat:   s.OneOf(logFormat, "json", "text"),
	}
	switch {
	case c.webConfig != "" && insecure:
		s.Fail(webConfig, "is set and --insecure-loopback asks to serve without it: choose one")
	case c.webConfig != "":
		if err := web.Validate(c.webConfig); err != nil {
			s.Fail(webConfig, "%v", err)
		}
	case !insecure:
		s.Fail(webConfig, "is required: the console shows every erasure request and finds a person's; it is served only behind authentication. "+
			"Write a web configuration file with a bcrypt hash (`htpasswd -nbBC 10 USER PASSWORD` prints USER:HASH) as\n  basic_auth_users:\n    USER: HASH\n"+
			"and name it in CONSOLE_WEB_CONFIG_FILE; or, for a local demo only, start with --insecure-loopback on a loopback CONSOLE_LISTEN_ADDR")
	case !isLoopback(c.listenAddr):
		s.Fail(listen, "%q is not a loopback address: --insecure-loopback serves without authentication, so only on 127.0.0.1:PORT, [::1]:PORT or localhost:PORT; set CONSOLE_WEB_CONFIG_FILE to serve elsewhere", c.listenAddr)
	}
	if path := s.String(keyFile); path != "" {
		keys, err := worker.ReadIdentifierKeys(path)
		if err != nil {
			s.Fail(keyFile, "%v", err)
		}
		c.keys = keys
	}
	if err := s.Err(); err != nil {
		env.errorf("console: %v", err)
		return consoleConfig{}, exitUsage, false
	}
	return c, exitOK, true
}

// isLoopback tells whether addr (host:port) listens on a loopback address only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// webConfigHasUsers tells whether the web configuration asks for basic auth: only then is the
// user name a request carries the name of a person who proved it.
func webConfigHasUsers(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	var doc struct {
		Users map[string]string `yaml:"basic_auth_users"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return false, err
	}
	return len(doc.Users) > 0, nil
}

// Timeouts of the console's server; a CSV export of a long period streams for minutes.
const (
	consoleReadHeaderTimeout = 10 * time.Second
	consoleReadTimeout       = 30 * time.Second
	consoleWriteTimeout      = 30 * time.Minute
	consoleIdleTimeout       = 2 * time.Minute
)

func serveConsole(ctx context.Context, cfg consoleConfig, log *slog.Logger) error {
	pool, err := openPool(ctx, cfg.databaseURL, false, consoleDBConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	q := queue.New(pool).WithStatementTimeout(consoleStatementTimeout)
	if err := q.CheckSchema(ctx); err != nil {
		return err
	}
	authenticated := false
	if cfg.webConfig != "" {
		if authenticated, err = webConfigHasUsers(cfg.webConfig); err != nil {
			return fmt.Errorf("CONSOLE_WEB_CONFIG_FILE: %w", err)
		}
		if !authenticated {
			log.Warn("console: CONSOLE_WEB_CONFIG_FILE names no basic_auth_users: the console asks for no password, and its logs name every user -")
		}
	} else {
		log.Warn("console: serving WITHOUT authentication (--insecure-loopback), for a local demo only", "addr", cfg.listenAddr)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erasure_console_lookups_total",
		Help: "Accountable look-ups made through the console: kind person (a person's requests found by external_user_id) or export (an evidence export).",
	}, []string{"kind"})
	for _, kind := range []string{"person", "export"} {
		lookups.WithLabelValues(kind)
	}
	reg.MustRegister(lookups)

	var doors []console.Door
	for _, c := range connectors.All() {
		in := c.Info()
		doors = append(doors, console.Door{Name: in.DoorName(), Connector: in.Name, Prefix: in.RefPrefix})
	}
	keys := cfg.keys
	h, err := console.New(console.Config{
		Queue: q,
		Doors: doors,
		Candidates: func(id string) []string {
			return append([]string{id}, keys.Pseudonyms(id)...)
		},
		Keys:              keys.Len(),
		EvidenceRetention: cfg.evidence,
		Logger:            log,
		Counted:           func(kind string) { lookups.WithLabelValues(kind).Inc() },
		Metrics:           promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Authenticated:     authenticated,
	})
	if err != nil {
		return err
	}
	defer h.Close() // before the pool closes: a chart being read would hold it for minutes

	ln, err := net.Listen("tcp", cfg.listenAddr)
	if err != nil {
		return fmt.Errorf("CONSOLE_LISTEN_ADDR: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: consoleReadHeaderTimeout, ReadTimeout: consoleReadTimeout,
		WriteTimeout: consoleWriteTimeout, IdleTimeout: consoleIdleTimeout, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	systemd := false
	addrs := []string{cfg.listenAddr}
	webConfig := cfg.webConfig
	flags := &web.FlagConfig{WebListenAddresses: &addrs, WebSystemdSocket: &systemd, WebConfigFile: &webConfig}
	log.Info("serving the console", "addr", ln.Addr().String(), "version", buildVersion(), "authenticated", authenticated,
		"identifier_keys", keys.Len())
	served := make(chan error, 1)
	go func() { served <- web.Serve(ln, srv, flags, log) }()
	select {
	case err := <-served:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	<-served
	log.Info("console stopped")
	return nil
}
