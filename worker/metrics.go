package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/erasure-worker/erasure-worker/queue"
)

// Metrics are the worker's Prometheus metrics. Their names are a contract with dashboards and
// alert rules (DESIGN.md). No label ever holds an external_user_id or a request_ref.
type Metrics struct {
	Completed        *prometheus.CounterVec
	KnotRequests     *prometheus.CounterVec
	KnotDuration     prometheus.Histogram
	QueueDepth       *prometheus.GaugeVec
	OldestPendingAge prometheus.Gauge
	Overdue          prometheus.Gauge
	DueSoon          prometheus.Gauge
	Paused           prometheus.Gauge
	RateLimitWait    prometheus.Histogram
	Inflight         prometheus.Gauge
	RateLimitRPS     prometheus.Gauge
	GlobalRPS        prometheus.Gauge
	Replicas         prometheus.Gauge
	SendsGivenUp     prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg, unless reg is nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erasure_requests_completed_total",
			Help: "Erasure requests finished by this worker, by outcome: deleted and not_found succeeded; rejected, invalid and exhausted failed.",
		}, []string{"outcome"}),
		KnotRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erasure_knot_requests_total",
			Help: "Calls to Knot's POST /user/delete, by HTTP status code, or timeout/connection when no answer came; a 200 that is not Knot's answer counts as invalid_response.",
		}, []string{"code"}),
		KnotDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "erasure_knot_request_duration_seconds",
			Help:    "Time taken by calls to Knot's POST /user/delete.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		QueueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erasure_queue_depth",
			Help: "Erasure requests in the table by status (pending, running, failed), read periodically. Finished successes are counted by erasure_requests_completed_total instead.",
		}, []string{"status"}),
		OldestPendingAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_oldest_pending_age_seconds",
			Help: "How long the oldest pending erasure request has waited since it was received; 0 when none waits.",
		}),
		Overdue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_overdue_requests",
			Help: "Pending or running erasure requests past their due_at.",
		}),
		DueSoon: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_due_soon_requests",
			Help: "Pending or running erasure requests due within 7 days (including overdue ones).",
		}),
		Paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_worker_paused",
			Help: "1 while Knot rejects the credentials and the worker has paused claiming, else 0.",
		}),
		RateLimitWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "erasure_rate_limit_wait_seconds",
			Help:    "Time calls waited for the rate limit (and any 429 Retry-After) before going out.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		Inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_inflight_requests",
			Help: "Claimed erasure requests this worker is carrying out now.",
		}),
		RateLimitRPS: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_rate_limit_rps",
			Help: "This replica's estimate of its share of the deployment's rate, in calls per second: what caps its claims (its sends come from the shared bucket).",
		}),
		GlobalRPS: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_rate_limit_global_rps",
			Help: "The deployment's current rate limit in calls per second: RATE_LIMIT_RPS, or less while Knot answers 429.",
		}),
		Replicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erasure_replicas",
			Help: "Live replicas sharing the rate limit, as this replica last saw them.",
		}),
		SendsGivenUp: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erasure_rate_limit_sends_given_up_total",
			Help: "Sends the deployment's bucket granted this replica that it could not use in time (a call woke late, a take answered slowly, or its work ran out): rate the deployment did not use.",
		}),
	}
	for _, o := range []string{queue.OutcomeDeleted, queue.OutcomeNotFound, queue.OutcomeRejected, queue.OutcomeInvalid, queue.OutcomeExhausted} {
		m.Completed.WithLabelValues(o)
	}
	if reg != nil {
		reg.MustRegister(m.Completed, m.KnotRequests, m.KnotDuration, m.QueueDepth, m.OldestPendingAge,
			m.Overdue, m.DueSoon, m.Paused, m.RateLimitWait, m.Inflight, m.RateLimitRPS, m.GlobalRPS, m.Replicas, m.SendsGivenUp)
	}
	return m
}

func (m *Metrics) setStats(s queue.Stats) {
	m.QueueDepth.WithLabelValues(queue.StatusPending).Set(float64(s.Pending))
	m.QueueDepth.WithLabelValues(queue.StatusRunning).Set(float64(s.Running))
	m.QueueDepth.WithLabelValues(queue.StatusFailed).Set(float64(s.Failed))
	m.OldestPendingAge.Set(s.OldestPendingAge().Seconds())
	m.Overdue.Set(float64(s.Overdue))
	m.DueSoon.Set(float64(s.DueSoon))
}
