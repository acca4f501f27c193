package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// result is what one in-process run of the binary printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the whole binary in-process with env as its only environment.
func runCLI(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return env[k] }, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func TestHelpVersionAndUnknownCommand(t *testing.T) {
	t.Parallel()
	if r := runCLI(t, nil, "", "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "erasure-worker ") {
		t.Errorf("--version: %+v", r)
	}
	r := runCLI(t, nil, "", "--help")
	for _, c := range []string{"migrate", "run", "enqueue", "status", "requeue"} {
		if !strings.Contains(r.stdout, "  "+c+" ") {
			t.Errorf("--help does not list %s:\n%s", c, r.stdout)
		}
	}
	if r := runCLI(t, nil, "", "frobnicate"); r.code != exitUsage || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %+v", r)
	}
	// run --help lists every setting of DESIGN.md with its environment name and flag; the
	// secrets with their environment name only.
	r = runCLI(t, nil, "", "run", "--help")
	for _, name := range []string{"DATABASE_URL_FILE", "KNOT_BASE_URL", "KNOT_CLIENT_ID", "KNOT_SECRET_FILE",
		"RATE_LIMIT_RPS", "RATE_LIMIT_BURST", "CONCURRENCY", "LISTEN_ADDR", "LEASE_DURATION", "MAX_ATTEMPTS",
		"SHUTDOWN_TIMEOUT", "LOG_LEVEL"} {
		flagName := "--" + strings.ReplaceAll(strings.ToLower(name), "_", "-")
		if !strings.Contains(r.stdout, flagName+", "+name+" ") {
			t.Errorf("run --help does not document %s / %s", flagName, name)
		}
	}
	for _, name := range []string{"DATABASE_URL", "KNOT_SECRET"} {
		flagName := "--" + strings.ReplaceAll(strings.ToLower(name), "_", "-")
		if !strings.Contains(r.stdout, "  "+name+" (environment only; required, or "+name+"_FILE)") ||
			strings.Contains(r.stdout, flagName+",") {
			t.Errorf("run --help does not document %s as environment-only (without %s):\n%s", name, flagName, r.stdout)
		}
	}
	if r.code != 0 {
		t.Errorf("run --help exit %d", r.code)
	}
}

func TestRunConfigErrorsNameTheSetting(t *testing.T) {
	t.Parallel()
	base := map[string]string{"DATABASE_URL": "postgres://u:hunter2@127.0.0.1:1/db", "KNOT_CLIENT_ID": "id", "KNOT_SECRET": "s3cret-value"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range base {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	secretFile := t.TempDir() + "/secret"
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no database", with("DATABASE_URL", ""), nil, "DATABASE_URL: is required (or DATABASE_URL_FILE)"},
		{"no client id", with("KNOT_CLIENT_ID", ""), nil, "KNOT_CLIENT_ID (--knot-client-id): is required"},
		{"no secret", with("KNOT_SECRET", ""), nil, "KNOT_SECRET: is required (or KNOT_SECRET_FILE)"},
		{"missing secret file", with("KNOT_SECRET", ""), []string{"--knot-secret-file", secretFile}, "KNOT_SECRET_FILE (--knot-secret-file): cannot read"},
		{"secret and its file", with("KNOT_SECRET_FILE", secretFile), nil, "KNOT_SECRET_FILE (--knot-secret-file): KNOT_SECRET and KNOT_SECRET_FILE are both set"},
		{"bad rate", with("RATE_LIMIT_RPS", "fast"), nil, `RATE_LIMIT_RPS (--rate-limit-rps): "fast" is not a number`},
		{"zero concurrency", with("CONCURRENCY", "0"), nil, `CONCURRENCY (--concurrency): "0" is not auto or a whole number of at least 1`},
		{"bad duration", with("SHUTDOWN_TIMEOUT", "30"), nil, `SHUTDOWN_TIMEOUT (--shutdown-timeout): "30" is not a duration`},
		{"bad log level", with("LOG_LEVEL", "loud"), nil, "LOG_LEVEL (--log-level)"},
		{"short lease", with("LEASE_DURATION", "2s"), nil, "LEASE_DURATION (2s) is too short"},
		{"bad base url", with("KNOT_BASE_URL", "ftp://knot"), nil, "KNOT_BASE_URL"},
		{"flag wins over env", base, []string{"--max-attempts", "-3"}, "MAX_ATTEMPTS (--max-attempts): must be at least 1"},
		{"unknown flag", base, []string{"--rate-limit", "5"}, "flag provided but not defined: -rate-limit"},
	} {
		r := runCLI(t, tc.env, "", append([]string{"run"}, tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and %q", tc.name, r.code, r.stderr, tc.want)
		}
		for _, secret := range []string{"hunter2", "s3cret-value"} {
			if strings.Contains(r.stderr, secret) {
				t.Errorf("%s: stderr shows a secret: %q", tc.name, r.stderr)
			}
		}
	}
}

func TestEnqueueReportsEachBadLineAndKeepsTheGoodOnes(t *testing.T) {
	t.Parallel()
	url := queuetest.URL(t)
	env := map[string]string{"DATABASE_URL": url}
	input := strings.Join([]string{
		`{"request_ref":"r1","external_user_id":"u1"}`,
		`{"request_ref":"r2","external_user_id":"   "}`,
		`{"request_ref":"r3","external_user_id":"u3","due_at":"2031-01-01"}`,
		`not json`,
		``,
		`{"request_ref":"r1","external_user_id":"u1"}`,
		`{"request_ref":"r5"}`,
		`{"request_ref":"r6","external_user_id":"u6","due_at":"next tuesday"}`,
		`{"request_ref":"r7","external_user_id":123}`,
		`{"request_ref":"r8","external_user_id":"u8","extra":"x"}`,
		"{\"request_ref\":\"r9\",\"external_user_id\":\"bad\xffutf8\"}",
		`{"request_ref":"r10","external_user_id":"` + strings.Repeat("x", 10240) + `"}`,
		`{"request_ref":"r11","external_user_id":"O'Brien\"; DROP TABLE erasure_requests; --"}`,
		`{"request_ref":"r12","external_user_id":"u12","due_at":"2001-01-01T00:00:00Z"}`,
	}, "\n")
	r := runCLI(t, env, input, "enqueue")
	if r.code != exitFailure {
		t.Errorf("exit %d, want 1 because lines were rejected", r.code)
	}
	if want := "inserted 4, duplicate 1, rejected 8\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	for _, want := range []string{
		"line 2: invalid external_user_id: only whitespace",
		"line 4: not a JSON object",
		"line 7: external_user_id is missing",
		`line 8: due_at "next tuesday" is not a time`,
		"line 9: not a JSON object of request_ref, external_user_id and due_at: external_user_id must be a string, not a number",
		`line 10: not a JSON object of request_ref, external_user_id and due_at: json: unknown field "extra"`,
		"line 11: not valid UTF-8",
		"line 12: invalid external_user_id: 10240 bytes, longer than 1024",
		"line 14: warning: due_at 2001-01-01T00:00:00Z is in the past",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "bad\xffutf8") || strings.Contains(r.stderr, strings.Repeat("x", 100)) {
		t.Error("stderr repeats an external_user_id")
	}
	refs := dbRefs(t, url)
	if want := "r1,r11,r12,r3"; refs != want {
		t.Errorf("rows %s, want %s", refs, want)
	}

	// CSV, with a header, a quoted comma and a malformed line beside good ones.
	csvIn := "request_ref,external_user_id,due_at\nc1,u-c1\nc2,\"u,with,commas\",2031-02-03\nc3,\"unclosed\nc4\nc5,u5\n"
	r = runCLI(t, env, csvIn, "enqueue", "--format", "csv")
	if r.stdout != "inserted 3, duplicate 0, rejected 2\n" || !strings.Contains(r.stderr, "line 4: malformed CSV") ||
		!strings.Contains(r.stderr, "line 5: want 2 or 3 fields") {
		t.Errorf("csv: %+v", r)
	}
	// Running the same input again is harmless.
	r = runCLI(t, env, "c1,u-c1\n", "enqueue", "--format", "csv")
	if r.code != 0 || r.stdout != "inserted 0, duplicate 1, rejected 0\n" {
		t.Errorf("re-enqueue: %+v", r)
	}
}

func dbRefs(t *testing.T, url string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var refs string
	if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(request_ref, ',' ORDER BY request_ref), '') FROM erasure_requests`).Scan(&refs); err != nil {
		t.Fatal(err)
	}
	return refs
}

func TestStatusAndRequeue(t *testing.T) {
	t.Parallel()
	url := queuetest.URL(t)
	env := map[string]string{"DATABASE_URL": url}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, completed_at, last_error_code, last_error, attempts) VALUES
  ('ok-1', 'u1', 'succeeded', 'deleted', now(), NULL, NULL, 1),
  ('gone-1', 'u2', 'succeeded', 'not_found', now(), NULL, NULL, 1),
  ('bad-1', 'u3', 'failed', 'rejected', now(), 'NO_ACCESS', 'knot: 403 NO_ACCESS', 1),
  ('bad-2', 'u4', 'failed', 'exhausted', now(), 'http_500', 'knot: 500 Server Error', 20);
INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('wait-1', 'u5');
INSERT INTO erasure_workers (id, busy, share_rps, expires_at, ceiling_rps, paused) VALUES
  ('replica-paused', true, 5, now() + interval '1 minute', 10, true),
  ('replica-old', true, 5, now() + interval '1 minute', 10, NULL);`)
	if err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, env, "", "status")
	for _, want := range []string{"pending", "succeeded  2", "deleted 1, not_found 1", "failed     2", "bad-2", "exhausted", "http_500"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	for _, re := range []string{`(?m)\bPAUSED$`, `(?m)^replica-paused .* true$`, `(?m)^replica-old .* unknown$`} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("status's replicas do not match %s:\n%s", re, r.stdout)
		}
	}
	r = runCLI(t, env, "", "status", "--json")
	if !strings.Contains(r.stdout, `"not_found": 1`) || r.code != 0 {
		t.Errorf("status --json: %+v", r)
	}
	var doc struct {
		RateLimit struct {
			Replicas []struct {
				ID     string `json:"id"`
				Paused *bool  `json:"paused"`
			} `json:"replicas"`
		} `json:"rate_limit"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	for _, rep := range doc.RateLimit.Replicas {
		if (rep.ID == "replica-paused") != (rep.Paused != nil && *rep.Paused) || (rep.ID == "replica-old") != (rep.Paused == nil) {
			t.Errorf("status --json: replica %s paused %v", rep.ID, rep.Paused)
		}
	}
	if len(doc.RateLimit.Replicas) != 2 {
		t.Errorf("status --json: %d replicas, want 2:\n%s", len(doc.RateLimit.Replicas), r.stdout)
	}

	if r := runCLI(t, env, "", "requeue"); r.code != exitUsage {
		t.Errorf("requeue with no filter: %+v", r)
	}
	r = runCLI(t, env, "", "requeue", "--ref", "bad-1", "--ref", "ok-1")
	if r.stdout != "requeued 1 failed request(s)\n" || !strings.Contains(r.stderr, "1 of the 2 refs named were not failed") {
		t.Errorf("requeue --ref: %+v", r)
	}
	r = runCLI(t, env, "", "requeue", "--error-code", "http_500")
	if r.stdout != "requeued 1 failed request(s)\n" {
		t.Errorf("requeue --error-code: %+v", r)
	}
	var failed int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM erasure_requests WHERE status = 'failed'`).Scan(&failed); err != nil || failed != 0 {
		t.Errorf("%d still failed (%v)", failed, err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupBinaries()
	os.Exit(code)
}
