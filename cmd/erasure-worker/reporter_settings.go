package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

// declareReporter declares the reporter's timings on s. Once s is parsed, the function it
// returns reads them, refuses what does not hold together (naming the setting) and returns the
// reporter's config; the caller adds ID, Deliverers, Logger and Metrics.
func declareReporter(s *settings.Set) func() worker.ReporterConfig {
	timeout := s.Add("REPORT_TIMEOUT", worker.DefaultReportTimeout.String(),
		"how long one delivery of a report may take; a receiver that has not answered by then has the report retried with backoff")
	lease := s.Add("REPORT_LEASE", "",
		"how long a replica holds a report it claimed before another replica may take it over (after a crash, say); longer than REPORT_TIMEOUT. Default 3 × REPORT_TIMEOUT")
	concurrency := s.Add("REPORT_CONCURRENCY", strconv.Itoa(worker.DefaultReportConcurrency),
		"deliveries in flight at once in one lane: each connector has a lane, and a connector that reports to many receiver hosts (callbacks) one per host; a slot is refilled as soon as its delivery ends, so a receiver that hangs holds back only its own lane")
	maxInFlight := s.Add("REPORT_MAX_IN_FLIGHT", strconv.Itoa(worker.DefaultReportMaxInFlight),
		"deliveries in flight at once over all the lanes of one connector, so that many hung receiver hosts hold this many connections at most; at least REPORT_CONCURRENCY")
	minBackoff := s.Add("REPORT_MIN_BACKOFF", worker.DefaultReportMinBackoff.String(),
		"wait after a report's first failed delivery (5xx, 429, timeout, no connection); it doubles with each failed attempt up to REPORT_MAX_BACKOFF, each wait drawn between half and all of it; a longer Retry-After is honoured")
	maxBackoff := s.Add("REPORT_MAX_BACKOFF", worker.DefaultReportMaxBackoff.String(),
		"longest wait between two deliveries of a report that keeps failing")
	probe := s.Add("REPORT_PROBE_INTERVAL", worker.DefaultReportProbeInterval.String(),
		"while a receiver refuses our credentials (401), its connector's reports are paused on this replica and one is tried this often, until one is taken")
	poll := s.Add("REPORT_POLL_INTERVAL", worker.DefaultReportPollInterval.String(),
		"how often the reporter looks for reports to deliver: a report may wait this long after it becomes deliverable (its request finished, its retry came due) before it is sent")
	maxAge := s.Add("REPORT_MAX_AGE", "",
		"how long after its request finished (or it was requeued) a report is tried: then it is failed with its last reason, counted in erasure_reports_given_up_total, and waits for `erasure-worker reports requeue`. Whole days (3d) or a Go duration (36h); at most IDENTIFIER_RETENTION, since a report that names the person keeps the raw id until it ends. Default "+days(worker.DefaultReportMaxAge)+", or IDENTIFIER_RETENTION when that is shorter")
	return func() worker.ReporterConfig {
		cfg := worker.ReporterConfig{
			Timeout:       s.Duration(timeout),
			Concurrency:   s.Int(concurrency, 1),
			MaxInFlight:   s.Int(maxInFlight, 1),
			MinBackoff:    s.Duration(minBackoff),
			MaxBackoff:    s.Duration(maxBackoff),
			ProbeInterval: s.Duration(probe),
			PollInterval:  s.Duration(poll),
		}
		if strings.TrimSpace(lease.Raw()) != "" {
			cfg.Lease = s.Duration(lease)
		}
		if strings.TrimSpace(maxAge.Raw()) != "" {
			cfg.MaxAge = s.Period(maxAge, maxRetentionDays) // 0 otherwise: fitReportMaxAge chooses
		}
		if s.Err() == nil {
			if err := cfg.Validate(); err != nil {
				s.SetErr(err)
			}
		}
		return cfg
	}
}

// fitReportMaxAge holds REPORT_MAX_AGE (rc.MaxAge, 0 when not set) to IDENTIFIER_RETENTION
// (identifier, 0 when off): a report that names the person keeps its own copy of the raw id
// until it ends, which must not outlive the request's. Not set, it is DefaultReportMaxAge or
// IDENTIFIER_RETENTION, whichever is shorter, so that a deployment with a short
// IDENTIFIER_RETENTION starts as before.
func fitReportMaxAge(rc *worker.ReporterConfig, identifier time.Duration) error {
	switch {
	case identifier <= 0 && rc.MaxAge == 0:
		rc.MaxAge = worker.DefaultReportMaxAge
	case identifier <= 0:
	case rc.MaxAge == 0:
		rc.MaxAge = min(worker.DefaultReportMaxAge, identifier)
	case rc.MaxAge > identifier:
		return fmt.Errorf("REPORT_MAX_AGE (%s) must not be longer than IDENTIFIER_RETENTION (%s): a report that names the person keeps the raw id until it ends, and would keep it past IDENTIFIER_RETENTION",
			days(rc.MaxAge), days(identifier))
	}
	return nil
}
