package main

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

// retentionConfig is how long `run` keeps what it knows of a finished request (issue 12): its
// raw external_user_id for identifier (0: until the evidence goes), then only its pseudonym
// under keys; the request, its calls and its reports for evidence.
type retentionConfig struct {
	identifier time.Duration
	keys       worker.IdentifierKeys
	evidence   time.Duration
	interval   time.Duration
}

// maxRetentionDays bounds a retention period in days: a century is already no retention at all.
const maxRetentionDays = 36500

// declareRetention declares the retention settings on s and returns what reads them once s is
// parsed.
func declareRetention(s *settings.Set) func() retentionConfig {
	var (
		identifier = s.Add("IDENTIFIER_RETENTION", "7d", "how long after a request finished its raw external_user_id is kept; then it is replaced by its HMAC-SHA256 under the newest key of IDENTIFIER_KEY_FILE, which still finds the request by id but cannot be reversed. Whole days (30d) or a Go duration (36h); off keeps raw ids until EVIDENCE_RETENTION deletes the request")
		keyFile    = s.Add("IDENTIFIER_KEY_FILE", "", "file of the keys that pseudonymise external_user_ids: one per line, newest first (the newest pseudonymises, look-ups try each), each at least 32 bytes, e.g. from openssl rand -base64 32; required unless IDENTIFIER_RETENTION is off (then not read). Read at start: restart after rotating")
		evidence   = s.Add("EVIDENCE_RETENTION", "730d", "how long after a request finished it is kept, with its calls and reports, as the evidence of what was done; then it is deleted. At least 365d (the CCPA asks for 24 months of records) unless EVIDENCE_RETENTION_BELOW_CCPA is true, and longer than IDENTIFIER_RETENTION. Whole days or a Go duration")
		belowCCPA  = s.Add("EVIDENCE_RETENTION_BELOW_CCPA", "false", "true allows an EVIDENCE_RETENTION under 365d: only where the CCPA's 24 months of request records (11 CCR §7101) do not apply to you")
		interval   = s.Add("RETENTION_INTERVAL", dur(worker.DefaultRetentionInterval), "how often one replica purges what is past its retention; at most 1m")
	)
	return func() retentionConfig {
		var c retentionConfig
		off := strings.EqualFold(strings.TrimSpace(identifier.Raw()), "off")
		if !off {
			c.identifier = s.Period(identifier, maxRetentionDays)
		}
		c.evidence = s.Period(evidence, maxRetentionDays)
		below := s.Bool(belowCCPA)
		if c.interval = s.Duration(interval); c.interval > worker.MaxRetentionInterval {
			s.Fail(interval, "must be at most %s (the purge runs at least once a minute), got %s", worker.MaxRetentionInterval, c.interval)
		}
		if s.Err() != nil {
			return c
		}
		switch {
		case c.evidence < worker.MinEvidenceRetention && !below:
			s.Fail(evidence, "%s is below 365d: the CCPA (11 CCR §7101) asks for 24 months of request records; set EVIDENCE_RETENTION_BELOW_CCPA=true to keep less, where it does not apply",
				days(c.evidence))
			return c
		case !off && c.identifier >= c.evidence:
			s.Fail(evidence, "%s must be longer than IDENTIFIER_RETENTION (%s): the evidence outlives the raw id", days(c.evidence), days(c.identifier))
			return c
		}
		if off {
			return c // run pseudonymises nothing: no key needed, none read
		}
		path := s.String(keyFile)
		switch {
		case path == "":
			s.Fail(keyFile, "is required while IDENTIFIER_RETENTION is on (%s): it holds the keys that pseudonymise finished requests' ids, kept outside the database. "+
				"Make one with `(umask 077; openssl rand -base64 32 > identifier-keys)` and keep it as you keep KNOT_SECRET (on Kubernetes, the key IDENTIFIER_KEY of the Secret erasure-worker); "+
				"or set IDENTIFIER_RETENTION=off to keep raw ids until EVIDENCE_RETENTION deletes the request",
				days(c.identifier))
		default:
			keys, err := worker.ReadIdentifierKeys(path)
			if err != nil {
				s.Fail(keyFile, "%v", err)
			}
			c.keys = keys
		}
		return c
	}
}

// days writes a period in whole days when it is some, as the settings are usually written.
func days(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// purge is the retention duty of a `run` whose replica is id.
func (c retentionConfig) purge(q *queue.Queue, id string, statsInterval time.Duration, log *slog.Logger, m *worker.RetentionMetrics) (*worker.Retention, error) {
	if c.identifier > 0 {
		log.Info("retention: a finished request's external_user_id is pseudonymised after IDENTIFIER_RETENTION, the request deleted after EVIDENCE_RETENTION",
			"identifier_retention", days(c.identifier), "identifier_keys", c.keys.Len(), "evidence_retention", days(c.evidence))
	} else {
		log.Warn("retention: IDENTIFIER_RETENTION is off: finished requests keep their raw external_user_id until EVIDENCE_RETENTION deletes them",
			"evidence_retention", days(c.evidence))
	}
	return worker.NewRetention(q, worker.RetentionConfig{
		ID: id, Identifier: c.identifier, Keys: c.keys, Evidence: c.evidence, Interval: c.interval,
		StatsInterval: statsInterval, Logger: log, Metrics: m,
	})
}
