package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

// doorsConfig is how requests come in besides the table and `enqueue`, and where their outcomes
// go: every registered connector that its settings turn on.
type doorsConfig struct {
	apiAddr  string
	maxConns int          // open connections to API_LISTEN_ADDR at most
	dbConns  int32        // the doors' own database pool
	on       []configured // in the registry's order
}

type configured struct {
	info  connector.Info
	parts *connector.Parts
}

func (d doorsConfig) listening() bool {
	return d.apiAddr != "" && slices.ContainsFunc(d.on, func(c configured) bool { return c.parts.Door != nil })
}

// declareDoors declares API_LISTEN_ADDR and every connector's settings on s, and returns what
// reads them once s is parsed.
func declareDoors(s *settings.Set) func() doorsConfig {
	apiAddr := s.Add("API_LISTEN_ADDR", "", "address serving the HTTP doors of the connectors that are on, apart from LISTEN_ADDR; nothing is served there until a connector's setting below turns its door on")
	maxConns := s.Add("API_MAX_CONNECTIONS", "512", "open connections the HTTP doors serve at once; more wait to be accepted, so that a flood of slow or refused senders cannot take the process's memory")
	dbConns := s.Add("DOORS_DB_MAX_CONNS", "4", "connections to PostgreSQL that the HTTP doors may use, in a pool of their own: door traffic never delays the worker's heartbeat or its finishes")
	all := connectors.All()
	reads := make([]func() *connector.Parts, len(all))
	for i, c := range all {
		reads[i] = c.Declare(s)
	}
	return func() doorsConfig {
		d := doorsConfig{apiAddr: s.String(apiAddr), maxConns: s.Int(maxConns, 1), dbConns: int32(s.Int(dbConns, 1))}
		for i, c := range all {
			p := reads[i]()
			if p == nil {
				continue
			}
			if p.Door != nil && d.apiAddr == "" {
				s.Fail(apiAddr, "is required with %s: the %s door would not be served", p.OnBy, c.Info().DoorName())
			}
			d.on = append(d.on, configured{info: c.Info(), parts: p})
		}
		return d
	}
}

// deliverers are the Deliverers of the connectors that report outcomes, by name.
func (d doorsConfig) deliverers() map[string]connector.Deliverer {
	out := map[string]connector.Deliverer{}
	for _, c := range d.on {
		if c.parts.Deliverer != nil {
			out[c.info.Name] = c.parts.Deliverer
		}
	}
	return out
}

// intake is the Intake of one connector; refusals counts its door's refusals.
func intake(q *queue.Queue, info connector.Info, keys worker.IdentifierKeys, refusals *prometheus.CounterVec, log *slog.Logger) connector.Intake {
	return worker.NewIntake(q, worker.IntakeConfig{Info: info, Prefixes: connectors.Prefixes(), Keys: keys, Refusals: refusals, Logger: log})
}

// doorsMaxHeaderBytes bounds a request's headers at a door: a sender's credential and a few
// standard headers fit many times over.
const doorsMaxHeaderBytes = 16 << 10

// serveDoors serves the HTTP doors on API_LISTEN_ADDR; stop ends them gracefully, letting
// requests being answered finish.
func serveDoors(cfg doorsConfig, keys worker.IdentifierKeys, q *queue.Queue, log *slog.Logger, m doorMetrics) (stop func(), err error) {
	ln, err := net.Listen("tcp", cfg.apiAddr)
	if err != nil {
		return nil, fmt.Errorf("API_LISTEN_ADDR: %w", err)
	}
	handler, patterns := doorsHandler(cfg, keys, q, log, m)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    doorsMaxHeaderBytes,
	}
	go func() {
		if err := srv.Serve(netutil.LimitListener(ln, cfg.maxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("the HTTP doors stopped", "err", err)
		}
	}()
	log.Info("serving the HTTP doors", "addr", ln.Addr().String(), "doors", strings.Join(patterns, ", "))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), worker.AfterRunReserve)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// doorsHandler routes every door of the connectors that are on, each counted in
// erasure_api_requests_total by its door's name and its answer's status.
func doorsHandler(cfg doorsConfig, keys worker.IdentifierKeys, q *queue.Queue, log *slog.Logger, m doorMetrics) (http.Handler, []string) {
	mux := http.NewServeMux()
	var patterns []string
	for _, c := range cfg.on {
		if c.parts.Door == nil {
			continue
		}
		clog := log.With("connector", c.info.Name)
		routes := c.parts.Door.Routes(intake(q, c.info, keys, m.refusals, clog), clog)
		for _, p := range slices.Sorted(maps.Keys(routes)) {
			mux.Handle(p, counted(m.requests.MustCurryWith(prometheus.Labels{"door": c.info.DoorName()}), routes[p]))
			patterns = append(patterns, p)
		}
	}
	return mux, patterns
}

// doorMetrics are the doors' metrics. Every registered connector's door has its series from the
// start, at 0, whether it is on or not, as the reports' do: dashboards and alerts see a
// deployment as it is, and a door turned on later is not a new series.
type doorMetrics struct {
	requests *prometheus.CounterVec // erasure_api_requests_total{door,code}
	refusals *prometheus.CounterVec // erasure_door_refusals_total{door,reason}
}

func newDoorMetrics(reg prometheus.Registerer) doorMetrics {
	m := doorMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erasure_api_requests_total",
			Help: "Requests to the HTTP doors on API_LISTEN_ADDR, by door (a connector's door) and HTTP status of the answer; code abandoned when the sender went away before it was answered.",
		}, []string{"door", "code"}),
		refusals: worker.NewRefusalMetric(nil),
	}
	for _, c := range connectors.All() {
		door := c.Info().DoorName()
		m.requests.WithLabelValues(door, abandoned)
		for _, r := range connector.Refusals {
			m.refusals.WithLabelValues(door, string(r))
		}
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.refusals)
	}
	return m
}

// statusRecorder keeps the status a handler answered with, for the counter.
type statusRecorder struct {
	http.ResponseWriter
	status int // 0 until the handler writes
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection: a refusal ends its reads
// (connector.CloseAfter).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// abandoned is the code of a request whose sender went away before it was answered: nothing
// was written, and counting it 200 would read like success.
const abandoned = "abandoned"

func counted(requests *prometheus.CounterVec, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		code := strconv.Itoa(rec.status)
		switch {
		case rec.status != 0:
		case r.Context().Err() != nil:
			code = abandoned
		default:
			code = strconv.Itoa(http.StatusOK) // net/http answers 200 for a handler that wrote nothing
		}
		requests.WithLabelValues(code).Inc()
	})
}
