package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

const testIdentifierKey = "a key for the tests, 32 bytes or more"

// writeKeyFile writes an IDENTIFIER_KEY_FILE holding keys, newest first, and returns its path.
func writeKeyFile(t *testing.T, keys ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "identifier-keys")
	if err := os.WriteFile(path, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func parseRetention(t *testing.T, env map[string]string, args ...string) (retentionConfig, error) {
	t.Helper()
	e := map[string]string{"DATABASE_URL": "postgres://u:hunter2@127.0.0.1:1/db", "KNOT_CLIENT_ID": "id", "KNOT_SECRET": "s3cret-value"}
	for k, v := range env {
		e[k] = v
	}
	c, err := parseRunConfig(&environment{getenv: func(k string) string { return e[k] }, stdout: io.Discard, stderr: io.Discard}, args)
	return c.retention, err
}

func TestRetentionSettingsTakeDaysAndDurations(t *testing.T) {
	t.Parallel()
	keyFile := writeKeyFile(t, "a newer key for the tests, 32 bytes or more", testIdentifierKey)
	day := 24 * time.Hour
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want retentionConfig
	}{
		{"the defaults", map[string]string{"IDENTIFIER_KEY_FILE": keyFile}, nil,
			retentionConfig{identifier: 7 * day, evidence: 730 * day, interval: time.Minute}},
		{"days and durations", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "IDENTIFIER_RETENTION": "36h", "EVIDENCE_RETENTION": "1095d", "RETENTION_INTERVAL": "10s"}, nil,
			retentionConfig{identifier: 36 * time.Hour, evidence: 1095 * day, interval: 10 * time.Second}},
		{"flags win", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "IDENTIFIER_RETENTION": "36h"}, []string{"--identifier-retention", "30d"},
			retentionConfig{identifier: 30 * day, evidence: 730 * day, interval: time.Minute}},
		{"off, without a key", map[string]string{"IDENTIFIER_RETENTION": "OFF"}, nil,
			retentionConfig{evidence: 730 * day, interval: time.Minute}},
		{"off, the manifests' key file missing", map[string]string{"IDENTIFIER_RETENTION": "off", "IDENTIFIER_KEY_FILE": filepath.Join(t.TempDir(), "nowhere")}, nil,
			retentionConfig{evidence: 730 * day, interval: time.Minute}},
		{"below the CCPA's year, said so", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "EVIDENCE_RETENTION": "90d", "EVIDENCE_RETENTION_BELOW_CCPA": "true"}, nil,
			retentionConfig{identifier: 7 * day, evidence: 90 * day, interval: time.Minute}},
	} {
		got, err := parseRetention(t, tc.env, tc.args...)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got.identifier != tc.want.identifier || got.evidence != tc.want.evidence || got.interval != tc.want.interval {
			t.Errorf("%s: identifier %s, evidence %s, interval %s; want %s, %s, %s", tc.name,
				got.identifier, got.evidence, got.interval, tc.want.identifier, tc.want.evidence, tc.want.interval)
		}
		if got.identifier > 0 && got.keys.Len() != 2 {
			t.Errorf("%s: %d keys read, want the file's 2", tc.name, got.keys.Len())
		}
	}
}

func TestRetentionSettingsErrorsNameTheSetting(t *testing.T) {
	t.Parallel()
	keyFile := writeKeyFile(t, testIdentifierKey)
	shortKey := writeKeyFile(t, "too-short-a-key")
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"no key file", nil, []string{"IDENTIFIER_KEY_FILE (--identifier-key-file): is required while IDENTIFIER_RETENTION is on (7d)",
			"openssl rand -base64 32", "IDENTIFIER_RETENTION=off"}},
		{"a missing key file", map[string]string{"IDENTIFIER_KEY_FILE": filepath.Join(t.TempDir(), "nowhere")},
			[]string{"IDENTIFIER_KEY_FILE (--identifier-key-file): cannot read the key file"}},
		{"a short key", map[string]string{"IDENTIFIER_KEY_FILE": shortKey},
			[]string{"IDENTIFIER_KEY_FILE (--identifier-key-file): line 1: a key must be at least 32 bytes"}},
		{"fractions of days", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "IDENTIFIER_RETENTION": "1.5d"},
			[]string{`IDENTIFIER_RETENTION (--identifier-retention): "1.5d" is not a retention period: write whole days like 30d, or a Go duration like 36h`}},
		{"no unit", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "EVIDENCE_RETENTION": "730"},
			[]string{`EVIDENCE_RETENTION (--evidence-retention): "730" is not a retention period`}},
		{"zero days", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "IDENTIFIER_RETENTION": "0d"},
			[]string{"IDENTIFIER_RETENTION (--identifier-retention): must be above zero, got 0d"}},
		{"zero", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "IDENTIFIER_RETENTION": "0"},
			[]string{"IDENTIFIER_RETENTION (--identifier-retention): must be above zero, got 0"}},
		{"a century and more", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "EVIDENCE_RETENTION": "99999999999d"},
			[]string{"EVIDENCE_RETENTION (--evidence-retention): must be at most 36500d"}},
		{"below the CCPA's year", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "EVIDENCE_RETENTION": "180d"},
			[]string{"EVIDENCE_RETENTION (--evidence-retention): 180d is below 365d", "EVIDENCE_RETENTION_BELOW_CCPA=true"}},
		{"evidence before the id", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "IDENTIFIER_RETENTION": "30d", "EVIDENCE_RETENTION": "30d", "EVIDENCE_RETENTION_BELOW_CCPA": "true"},
			[]string{"EVIDENCE_RETENTION (--evidence-retention): 30d must be longer than IDENTIFIER_RETENTION (30d)"}},
		{"a bad override", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "EVIDENCE_RETENTION_BELOW_CCPA": "yes please"},
			[]string{`EVIDENCE_RETENTION_BELOW_CCPA (--evidence-retention-below-ccpa): "yes please" is not true or false`}},
		{"a slow purge", map[string]string{"IDENTIFIER_KEY_FILE": keyFile, "RETENTION_INTERVAL": "5m"},
			[]string{"RETENTION_INTERVAL (--retention-interval): must be at most 1m0s (the purge runs at least once a minute), got 5m0s"}},
	} {
		_, err := parseRetention(t, tc.env)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, want := range tc.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not say %q", tc.name, err, want)
			}
		}
		if strings.Contains(err.Error(), "too-short-a-key") || strings.Contains(err.Error(), testIdentifierKey) {
			t.Errorf("%s: the error shows a key: %q", tc.name, err)
		}
	}
}

// Every other mistake is named before the key file, which every deployment older than
// retention lacks: the operator fixes what is wrong first.
func TestAMissingKeyFileIsNamedLast(t *testing.T) {
	t.Parallel()
	_, err := parseRetention(t, map[string]string{"LEASE_DURATION": "2s"})
	if err == nil || !strings.Contains(err.Error(), "LEASE_DURATION (2s) is too short") {
		t.Errorf("%v, want LEASE_DURATION's error first", err)
	}
}

func TestRunHelpListsTheRetentionSettings(t *testing.T) {
	t.Parallel()
	r := runCLI(t, nil, "", "run", "--help")
	for _, want := range []string{"--identifier-retention, IDENTIFIER_RETENTION (default 7d)", "--identifier-key-file, IDENTIFIER_KEY_FILE (not set)",
		"--evidence-retention, EVIDENCE_RETENTION (default 730d)", "--evidence-retention-below-ccpa, EVIDENCE_RETENTION_BELOW_CCPA (default false)",
		"--retention-interval, RETENTION_INTERVAL (default 1m0s)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
}

func TestRequeueSaysWhichFailedRequestsLostTheirID(t *testing.T) {
	t.Parallel()
	url := queuetest.URL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pseudonym := worker.NewIdentifierKeys([]byte(testIdentifierKey)).Pseudonym("u1")
	if _, err := conn.Exec(ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, completed_at, pseudonymised_at, attempts) VALUES
  ('old', $1, 'failed', 'rejected', now() - interval '8 days', now(), 1),
  ('new', 'u2', 'failed', 'rejected', now(), NULL, 1)`, pseudonym); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, map[string]string{"DATABASE_URL": url}, "", "requeue", "--ref", "old", "--ref", "new", "--ref", "nope")
	if r.code != 0 || r.stdout != "requeued 1 failed request(s)\n" ||
		!strings.Contains(r.stderr, "skipped 1 failed request(s) whose external_user_id was pseudonymised") ||
		!strings.Contains(r.stderr, "1 of the 3 refs named were not failed requests") {
		t.Errorf("requeue: %+v", r)
	}
}
