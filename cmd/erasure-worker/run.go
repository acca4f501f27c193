package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

// runConfig is everything `run` needs, read and checked before anything starts.
type runConfig struct {
	databaseURL string
	role        string // all, worker or doors
	knot        knotclient.Config
	secretFile  string
	listenAddr  string
	logLevel    string
	logFormat   string
	worker      worker.Config
	doors       doorsConfig
	reporter    worker.ReporterConfig
	retention   retentionConfig
}

func dur(d time.Duration) string { return d.String() }

func parseRunConfig(env *environment, args []string) (runConfig, error) {
	s := newSettingSet("run", env)
	var (
		dbURL       = s.RequireDatabaseURL()
		role        = s.Add("ROLE", roleAll, "what this process does: all (the default), worker (claim, call Knot, report, pull, purge; no HTTP doors) or doors (serve the HTTP doors only, on a database pool of their own, with no Knot credentials needed), so that the doors can run as a Deployment of their own")
		baseURL     = s.Add("KNOT_BASE_URL", "https://development.knotapi.com", "Knot API base URL; https://production.knotapi.com for production (separate credentials)")
		clientID    = s.Require("KNOT_CLIENT_ID", "Knot client_id, sent as the Basic auth user name")
		secret      = s.RequireSecret("KNOT_SECRET", "Knot secret, sent as the Basic auth password", "file holding the Knot secret; re-read while paused on rejected credentials, so a rotated secret is picked up without a restart")
		knotVersion = s.Add("KNOT_VERSION", "", "value of the Knot-Version header; not sent when empty (Knot then uses 2.0)")
		knotTimeout = s.Add("KNOT_TIMEOUT", dur(worker.DefaultCallTimeout), "timeout of one call to Knot")
		rps         = s.Add("RATE_LIMIT_RPS", fmt.Sprint(worker.DefaultRateLimit), "most calls to Knot per second for the whole deployment, shared by the replicas through the database: while work waits at least 95% of it over any 10s, never more than it plus RATE_LIMIT_BURST in any second")
		burst       = s.Add("RATE_LIMIT_BURST", "", "calls the deployment may send at once after a lull (default: a tenth of RATE_LIMIT_RPS, at least 1; any value from 1 keeps the promise)")
		rateSync    = s.Add("RATE_LIMIT_SYNC_INTERVAL", dur(worker.DefaultRateSyncInterval), "how often a replica heartbeats; a dead replica is counted gone, and its claims taken back, after three of these; sends are taken from the shared bucket a quarter of it ahead (250ms at most)")
		concurrency = s.Add("CONCURRENCY", "auto", "most calls to Knot in flight at once; auto sizes it from this replica's share of the rate times Knot's observed latency plus 100ms of calls waiting for their turn (4 to 256)")
		listenAddr  = s.Add("LISTEN_ADDR", ":9090", "address serving /metrics, /healthz and /readyz")
		lease       = s.Add("LEASE_DURATION", dur(worker.DefaultLeaseDuration), "how long a claimed request is held before another replica may take it over")
		maxAttempts = s.Add("MAX_ATTEMPTS", fmt.Sprint(worker.DefaultMaxAttempts), "claims a request gets for retryable errors (5xx, timeouts) before it fails as exhausted")
		shutdown    = s.Add("SHUTDOWN_TIMEOUT", dur(worker.DefaultShutdownTimeout), "how long SIGTERM waits for calls in flight; keep terminationGracePeriodSeconds above it")
		logLevel    = s.Add("LOG_LEVEL", "info", "debug, info, warn or error")
		logFormat   = s.Add("LOG_FORMAT", "auto", "json, text, or auto (text on a terminal, else JSON)")
		poll        = s.Add("POLL_INTERVAL", dur(worker.DefaultPollInterval), "how often an idle worker looks for work when no notification arrives")
		minBackoff  = s.Add("RETRY_MIN_BACKOFF", dur(worker.DefaultRetryMinBackoff), "wait before the second claim of a request that met retryable errors; doubles per attempt")
		maxBackoff  = s.Add("RETRY_MAX_BACKOFF", dur(worker.DefaultRetryMaxBackoff), "longest wait between claims of a request that meets retryable errors")
		quick       = s.Add("QUICK_RETRIES", fmt.Sprint(worker.DefaultQuickRetries), "calls one claim may make for retryable errors before the request waits in the table")
		probe       = s.Add("PAUSE_PROBE_INTERVAL", dur(worker.DefaultPauseProbeInterval), "how often a worker paused on rejected credentials tries one request")
		stats       = s.Add("STATS_INTERVAL", dur(worker.DefaultStatsInterval), "how often the queue gauges are read from the database")
		noListen    = s.Add("DISABLE_LISTEN", "false", "true behind a pooler in transaction mode (PgBouncer's pool_mode = transaction), which cannot carry LISTEN/NOTIFY: poll only, every POLL_INTERVAL, and send every statement unprepared (without it run keeps pgx's cache of prepared statements, which spares PostgreSQL planning each statement again). The only setting a pooler needs: no command takes a session lock or SETs anything, and the other commands never prepare statements")
		doors       = declareDoors(s)
		reporter    = declareReporter(s)
		retention   = declareRetention(s)
	)
	if _, err := s.Parse(args); err != nil {
		return runConfig{}, err
	}
	r := s.OneOf(role, roleAll, roleWorker, roleDoors)
	if r == roleDoors {
		// The doors never call Knot: a Deployment of them holds no Knot credential.
		s.Waive(clientID)
		s.Waive(secret)
	}
	c := runConfig{
		role:        r,
		databaseURL: s.DatabaseURL(dbURL),
		secretFile:  s.String(secret.File()),
		listenAddr:  s.String(listenAddr),
		logLevel:    s.OneOf(logLevel, "debug", "info", "warn", "error"),
		logFormat:   s.OneOf(logFormat, "json", "text", "auto"),
	}
	c.knot = knotclient.Config{
		BaseURL:   s.String(baseURL),
		ClientID:  s.String(clientID),
		Secret:    s.Verbatim(secret), // a secret is taken as given, spaces and all
		Version:   s.String(knotVersion),
		UserAgent: "erasure-worker/" + buildVersion(),
		Timeout:   s.Duration(knotTimeout),
	}
	c.worker = worker.Config{
		Concurrency:        s.AutoInt(concurrency),
		RateLimit:          s.Number(rps),
		LeaseDuration:      s.Duration(lease),
		MaxAttempts:        s.Int(maxAttempts, 1),
		CallTimeout:        c.knot.Timeout,
		QuickRetries:       s.Int(quick, 1),
		RetryMinBackoff:    s.Duration(minBackoff),
		RetryMaxBackoff:    s.Duration(maxBackoff),
		PollInterval:       s.Duration(poll),
		RateSyncInterval:   s.Duration(rateSync),
		StatsInterval:      s.Duration(stats),
		PauseProbeInterval: s.Duration(probe),
		ShutdownTimeout:    s.Duration(shutdown),
		DisableListen:      s.Bool(noListen),
	}
	if burst.Raw() != "" {
		c.worker.Burst = s.Int(burst, 1)
	}
	c.doors = doors()
	c.reporter = reporter()
	if s.Err() != nil {
		return runConfig{}, s.Err()
	}
	if r == roleDoors && !c.doors.listening() {
		return runConfig{}, errors.New("ROLE=doors: no door is on (set API_LISTEN_ADDR and a connector's door setting, e.g. API_TOKEN or KETCH_AUTH_VALUE)")
	}
	if r == roleDoors {
		c.knot = knotclient.Config{} // not used, and not checked
	} else if _, err := knotclient.New(c.knot); err != nil {
		return runConfig{}, fmt.Errorf("Knot settings (KNOT_BASE_URL, KNOT_CLIENT_ID, KNOT_SECRET): %w", err)
	}
	c.worker.ID = workerID()
	if err := c.worker.Validate(); err != nil {
		return runConfig{}, err
	}
	// Last, so that any other mistake is named first: IDENTIFIER_KEY_FILE is what a deployment
	// set up before retention lacks.
	if c.retention = retention(); s.Err() != nil {
		return runConfig{}, s.Err()
	}
	if err := fitReportMaxAge(&c.reporter, c.retention.identifier); err != nil {
		return runConfig{}, err
	}
	return c, nil
}

// The roles of `run`.
const (
	roleAll    = "all"
	roleWorker = "worker"
	roleDoors  = "doors"
)

// workerID names this process as lease owner: the host (the pod name in Kubernetes), the pid
// and a random suffix, so that a restarted pod never inherits its predecessor's leases.
func workerID() string {
	host, _ := os.Hostname()
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

func runWorker(ctx context.Context, env *environment, args []string) int {
	cfg, err := parseRunConfig(env, args)
	if errors.Is(err, errHelp) {
		return exitOK
	}
	if err != nil {
		env.errorf("%v", err)
		return exitUsage
	}
	log := logger(cfg.logLevel, cfg.logFormat, env.stderr)
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("worker stopped on an error", "err", err)
		return exitFailure
	}
	return exitOK
}

func serve(ctx context.Context, cfg runConfig, log *slog.Logger) error {
	prepared := !cfg.worker.DisableListen
	pool, err := openPool(ctx, cfg.databaseURL, prepared, 0)
	if err != nil {
		return err
	}
	defer pool.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	q := queue.New(pool)
	// The worker's metrics exist from the start, while the schema is awaited too; the doors
	// alone have none of them.
	var retentionMetrics *worker.RetentionMetrics
	if cfg.role != roleDoors {
		cfg.worker.Metrics = worker.NewMetrics(reg)
		retentionMetrics = worker.NewRetentionMetrics(reg)
	}

	ln, err := net.Listen("tcp", cfg.listenAddr)
	if err != nil {
		return fmt.Errorf("LISTEN_ADDR: %w", err)
	}
	var st startup
	st.waitingFor("checking the database schema")
	srv := newMetricsServer(probes(&st, pool, reg))
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	defer func() {
		// Run kept this much of SHUTDOWN_TIMEOUT for it: scrapes and probes are quick.
		shutdownCtx, cancel := context.WithTimeout(context.Background(), worker.AfterRunReserve)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String(), "version", buildVersion(), "role", cfg.role)

	// The worker is made only once the schema is right, so that /healthz never judges a claim
	// loop that has not been allowed to start.
	if !waitForSchema(ctx, q, &st, log) {
		log.Info("stopped before the database schema was ready")
		return nil
	}

	// The doors bind first: a taken API_LISTEN_ADDR stops start-up before anything runs. They
	// store requests through a small pool of their own, so that no flood at a door waits for a
	// connection that a heartbeat or a finish needs. Any return from here on stops the services
	// started below, then waits for them.
	doorMetrics := newDoorMetrics(reg)
	if cfg.role != roleWorker && cfg.doors.listening() {
		doorsPool, err := openPool(ctx, cfg.databaseURL, prepared, cfg.doors.dbConns)
		if err != nil {
			return err
		}
		defer doorsPool.Close()
		stop, err := serveDoors(cfg.doors, cfg.retention.keys, queue.New(doorsPool), log, doorMetrics)
		if err != nil {
			return err
		}
		defer stop()
	}
	if cfg.role == roleDoors {
		st.doorsOnly()
		<-ctx.Done()
		return nil
	}
	if cfg.role == roleWorker && cfg.doors.listening() {
		log.Info("ROLE=worker: the HTTP doors are not served here; a Deployment with ROLE=doors serves them")
	}

	knot, err := knotclient.New(cfg.knot)
	if err != nil {
		return err
	}
	cfg.worker.Logger = log
	if cfg.secretFile != "" {
		cfg.worker.BeforeProbe = func(context.Context) {
			sec, err := settings.ReadSecretFile(cfg.secretFile)
			if err != nil {
				log.Warn("could not re-read KNOT_SECRET_FILE", "err", err)
				return
			}
			knot.SetCredentials(cfg.knot.ClientID, sec)
		}
	}
	w, err := worker.New(q, knot, cfg.worker)
	if err != nil {
		return err
	}
	st.started(w)

	var services sync.WaitGroup
	defer services.Wait()
	ctx, stopServices := context.WithCancel(ctx)
	defer stopServices()
	reportMetrics := worker.NewReportMetrics(reg, connectors.Names()...)
	if cfg.doors.apiAddr != "" && !cfg.doors.listening() {
		log.Warn("API_LISTEN_ADDR is set but no connector's door is on: nothing is served there")
	}
	if deliverers := cfg.doors.deliverers(); len(deliverers) > 0 {
		rc := cfg.reporter
		rc.ID, rc.Deliverers, rc.StatsInterval, rc.Logger, rc.Metrics = cfg.worker.ID, deliverers, cfg.worker.StatsInterval, log, reportMetrics
		rep := worker.NewReporter(q, rc)
		services.Go(func() { rep.Run(ctx) })
	}
	for _, c := range cfg.doors.on {
		p := c.parts.Puller
		if p == nil {
			continue
		}
		plog := log.With("connector", c.info.Name)
		in := intake(q, c.info, cfg.retention.keys, doorMetrics.refusals, plog)
		services.Go(func() {
			// A pull pages through everything pending: the next is due an interval later.
			pull := func(ctx context.Context) (bool, error) { return false, p.Pull(ctx, in, plog) }
			worker.RunDuty(ctx, q, cfg.worker.ID, worker.Duty{Name: c.info.Name, Interval: p.PullInterval(), Do: pull}, log)
		})
	}
	purge, err := cfg.retention.purge(q, cfg.worker.ID, cfg.worker.StatsInterval, log, retentionMetrics)
	if err != nil {
		return err
	}
	services.Go(func() { purge.Run(ctx) })
	w.Run(ctx)
	return nil
}

// Timeouts of the metrics server: a scrape or a probe is quick, and a connection that sends
// nothing, or idles, is not kept.
var (
	metricsReadTimeout  = 10 * time.Second
	metricsWriteTimeout = 30 * time.Second
	metricsIdleTimeout  = 60 * time.Second
)

// newMetricsServer serves LISTEN_ADDR.
func newMetricsServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: metricsReadTimeout,
		WriteTimeout: metricsWriteTimeout, IdleTimeout: metricsIdleTimeout, MaxHeaderBytes: 16 << 10}
}

// schemaCheckInterval is how often `run` looks again at a database that does not hold this
// binary's schema.
var schemaCheckInterval = 5 * time.Second

// waitForSchema returns true once the database holds this binary's schema, checking every
// schemaCheckInterval and logging each new reason to wait once; false when ctx ends first.
func waitForSchema(ctx context.Context, q *queue.Queue, st *startup, log *slog.Logger) bool {
	var last string
	for {
		checkCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := q.CheckSchema(checkCtx)
		cancel()
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			if last != "" {
				log.Info("schema is ready; starting")
			}
			return true
		}
		var schemaErr *queue.SchemaError
		reason := err.Error()
		if !errors.As(err, &schemaErr) {
			reason = "could not check the database schema: " + reason
		}
		st.waitingFor(reason)
		if reason != last {
			if schemaErr != nil {
				log.Error(reason, "checking_every", schemaCheckInterval)
			} else {
				log.Warn(reason, "checking_every", schemaCheckInterval)
			}
			last = reason
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(schemaCheckInterval):
		}
	}
}

// startup is what the probes know of a `run` that may still be waiting for its schema.
type startup struct {
	waiting atomic.Pointer[string]        // why the worker has not started
	worker  atomic.Pointer[worker.Worker] // set once it has
	doors   atomic.Bool                   // ROLE=doors: serving the doors, with no worker
}

func (s *startup) waitingFor(reason string) { s.waiting.Store(&reason) }
func (s *startup) doorsOnly()               { s.doors.Store(true) }
func (s *startup) started(w *worker.Worker) { s.worker.Store(w) }

// probes serves /metrics; /healthz, which fails when the claim loop is stuck (restart me); and
// /readyz, which fails while the database does not answer or does not hold this binary's
// schema (do not count me). Waiting for the schema is healthy: a restart would not migrate it.
func probes(st *startup, pool *pgxpool.Pool, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, r *http.Request) {
		w := st.worker.Load()
		switch {
		case st.doors.Load():
			fmt.Fprintln(rw, "ok (doors only)")
			return
		case w == nil:
			fmt.Fprintln(rw, "ok (waiting for the database schema)")
			return
		}
		if err := w.Alive(); err != nil {
			http.Error(rw, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ok")
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, r *http.Request) {
		w := st.worker.Load()
		if w == nil && !st.doors.Load() {
			http.Error(rw, *st.waiting.Load(), http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := pool.Ping(ctx); err != nil {
			http.Error(rw, "database not answering", http.StatusServiceUnavailable)
			return
		}
		if w == nil {
			fmt.Fprintln(rw, "ok (doors only)")
			return
		}
		if w.Paused() {
			// Still ready: the pod is healthy and probing; erasure_worker_paused says why
			// nothing moves.
			fmt.Fprintln(rw, "ok (paused: Knot rejected the credentials)")
			return
		}
		fmt.Fprintln(rw, "ok")
	})
	return mux
}

// openPool connects to PostgreSQL with a connect timeout, safely behind a pooler in transaction
// mode (queue.ParsePoolConfig), or with prepared statements cached when no pooler is in between
// (queue.Prepared). Its errors never repeat the URL, which may hold a password.
func openPool(ctx context.Context, databaseURL string, prepared bool, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := queue.ParsePoolConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
		cfg.MinConns = min(cfg.MinConns, maxConns)
	}
	if prepared {
		queue.Prepared(cfg.ConnConfig)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("DATABASE_URL: cannot reach the database at %s: %w", cfg.ConnConfig.Host, err)
	}
	return pool, nil
}
