package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

func TestReporterSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    worker.ReporterConfig // Timeout, Lease, Concurrency, MaxInFlight, backoffs, probe, poll
		wantErr string
	}{
		{name: "defaults", want: worker.ReporterConfig{Timeout: 10 * time.Second, Concurrency: 8, MaxInFlight: 128,
			MinBackoff: time.Second, MaxBackoff: 5 * time.Minute, ProbeInterval: 30 * time.Second, PollInterval: time.Second}},
		{name: "every one set", env: map[string]string{"REPORT_TIMEOUT": "20s", "REPORT_LEASE": "1m", "REPORT_CONCURRENCY": "4",
			"REPORT_MAX_IN_FLIGHT": "32", "REPORT_MIN_BACKOFF": "2s", "REPORT_MAX_BACKOFF": "10m", "REPORT_PROBE_INTERVAL": "1m",
			"REPORT_POLL_INTERVAL": "500ms"},
			want: worker.ReporterConfig{Timeout: 20 * time.Second, Lease: time.Minute, Concurrency: 4, MaxInFlight: 32,
				MinBackoff: 2 * time.Second, MaxBackoff: 10 * time.Minute, ProbeInterval: time.Minute, PollInterval: 500 * time.Millisecond}},
		{name: "lease not longer than the timeout", env: map[string]string{"REPORT_TIMEOUT": "30s", "REPORT_LEASE": "30s"},
			wantErr: "REPORT_LEASE (30s) must be longer than REPORT_TIMEOUT (30s)"},
		{name: "a long timeout stretches the default lease", env: map[string]string{"REPORT_TIMEOUT": "1m"},
			want: worker.ReporterConfig{Timeout: time.Minute, Concurrency: 8, MaxInFlight: 128,
				MinBackoff: time.Second, MaxBackoff: 5 * time.Minute, ProbeInterval: 30 * time.Second, PollInterval: time.Second}},
		{name: "backoffs the wrong way round", env: map[string]string{"REPORT_MIN_BACKOFF": "10m"},
			wantErr: "REPORT_MAX_BACKOFF (5m0s) must not be shorter than REPORT_MIN_BACKOFF (10m0s)"},
		{name: "a lane wider than its connector", env: map[string]string{"REPORT_CONCURRENCY": "200"},
			wantErr: "REPORT_MAX_IN_FLIGHT (128) must be at least REPORT_CONCURRENCY (200)"},
		{name: "no concurrency", env: map[string]string{"REPORT_CONCURRENCY": "0"},
			wantErr: "REPORT_CONCURRENCY (--report-concurrency): must be at least 1, got 0"},
		{name: "not a duration", env: map[string]string{"REPORT_POLL_INTERVAL": "often"},
			wantErr: `REPORT_POLL_INTERVAL (--report-poll-interval): "often" is not a duration`},
		{name: "zero timeout", env: map[string]string{"REPORT_TIMEOUT": "0s"},
			wantErr: "REPORT_TIMEOUT (--report-timeout): must be above zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := settings.New("run", func(k string) string { return tc.env[k] }, io.Discard)
			read := declareReporter(s)
			if _, err := s.Parse(nil); err != nil {
				t.Fatal(err)
			}
			got := read()
			err := s.Err()
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("error %v; want %q…", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Timeout != tc.want.Timeout || got.Lease != tc.want.Lease || got.Concurrency != tc.want.Concurrency ||
				got.MaxInFlight != tc.want.MaxInFlight || got.MinBackoff != tc.want.MinBackoff || got.MaxBackoff != tc.want.MaxBackoff ||
				got.ProbeInterval != tc.want.ProbeInterval || got.PollInterval != tc.want.PollInterval {
				t.Fatalf("got %+v (%v); want %+v", got, err, tc.want)
			}
		})
	}
}

// REPORT_MAX_AGE takes days or a duration, and never outlives IDENTIFIER_RETENTION: a report
// that names the person keeps its own copy of the raw id until it ends.
func TestReportMaxAgeStaysWithinIdentifierRetention(t *testing.T) {
	t.Parallel()
	keyFile := writeKeyFile(t, testIdentifierKey)
	day := 24 * time.Hour
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    time.Duration
		wantErr string
	}{
		{"default", nil, 3 * day, ""},
		{"a shorter IDENTIFIER_RETENTION lowers the default", map[string]string{"IDENTIFIER_RETENTION": "1d"}, day, ""},
		{"in hours", map[string]string{"REPORT_MAX_AGE": "36h"}, 36 * time.Hour, ""},
		{"as long as IDENTIFIER_RETENTION", map[string]string{"REPORT_MAX_AGE": "7d"}, 7 * day, ""},
		{"IDENTIFIER_RETENTION off", map[string]string{"IDENTIFIER_RETENTION": "off", "REPORT_MAX_AGE": "30d"}, 30 * day, ""},
		{"IDENTIFIER_RETENTION off, the default", map[string]string{"IDENTIFIER_RETENTION": "off"}, 3 * day, ""},
		{"longer than IDENTIFIER_RETENTION", map[string]string{"REPORT_MAX_AGE": "8d"}, 0,
			"REPORT_MAX_AGE (8d) must not be longer than IDENTIFIER_RETENTION (7d)"},
		{"longer than a short IDENTIFIER_RETENTION", map[string]string{"IDENTIFIER_RETENTION": "1s", "REPORT_MAX_AGE": "2s"}, 0,
			"REPORT_MAX_AGE (2s) must not be longer than IDENTIFIER_RETENTION (1s)"},
		{"no unit", map[string]string{"REPORT_MAX_AGE": "3"}, 0, `REPORT_MAX_AGE (--report-max-age): "3" is not a retention period`},
		{"zero", map[string]string{"REPORT_MAX_AGE": "0d"}, 0, "REPORT_MAX_AGE (--report-max-age): must be above zero"},
	} {
		env := map[string]string{"DATABASE_URL": "postgres://u:p@127.0.0.1:1/db", "KNOT_CLIENT_ID": "id", "KNOT_SECRET": "s3cret-value",
			"IDENTIFIER_KEY_FILE": keyFile}
		for k, v := range tc.env {
			env[k] = v
		}
		c, err := parseRunConfig(&environment{getenv: func(k string) string { return env[k] }, stdout: io.Discard, stderr: io.Discard}, nil)
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %v; want %q", tc.name, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || c.reporter.MaxAge != tc.want):
			t.Errorf("%s: REPORT_MAX_AGE %v (%v); want %v", tc.name, c.reporter.MaxAge, err, tc.want)
		}
	}
}
