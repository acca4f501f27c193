package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

type evidenceBundle struct {
	env  map[string]string
	pool *pgxpool.Pool
	q    *queue.Queue
	ctx  context.Context
	keys keyring
	// keyFile holds both generations of identifier keys, newest first; newKeyFile the newest
	// alone, as after the older key was dropped.
	keyFile, newKeyFile string
}

// keyring is two generations of identifier keys: an older one, rotated out by a newer one.
type keyring struct{ both, newOnly, oldOnly worker.IdentifierKeys }

func setupEvidence(t *testing.T) *evidenceBundle {
	t.Helper()
	t.Parallel()
	url := queuetest.URL(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	newKey, oldKey := "new-key-0123456789abcdef0123456789abcdef", "old-key-fedcba9876543210fedcba9876543210"
	dir := t.TempDir()
	b := &evidenceBundle{
		env: map[string]string{"DATABASE_URL": url}, pool: pool, q: queue.New(pool), ctx: context.Background(),
		keys: keyring{
			both:    worker.NewIdentifierKeys([]byte(newKey), []byte(oldKey)),
			newOnly: worker.NewIdentifierKeys([]byte(newKey)),
			oldOnly: worker.NewIdentifierKeys([]byte(oldKey)),
		},
		keyFile:    filepath.Join(dir, "keys"),
		newKeyFile: filepath.Join(dir, "new-key"),
	}
	if err := os.WriteFile(b.keyFile, []byte("# newest first\n"+newKey+"\n"+oldKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.newKeyFile, []byte(newKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// evidenceRow is a request as a test needs it, written straight through SQL.
type evidenceRow struct {
	ref, userID string
	received    time.Time
	// outcome "" leaves it pending. deleted: succeeded 5 s after it was received, after a 500
	// and a 200. rejected: failed on a 403 NO_ACCESS.
	outcome   string
	connector string // a report of this connector: delivered once the request has finished
}

func (b *evidenceBundle) insert(t *testing.T, rows ...evidenceRow) {
	t.Helper()
	for _, r := range rows {
		_, err := b.pool.Exec(b.ctx, `
WITH req AS (
    INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, received_at, due_at,
                                  completed_at, last_error_code, last_error)
    SELECT $1, $2, CASE $4 WHEN '' THEN 'pending' WHEN 'deleted' THEN 'succeeded' ELSE 'failed' END,
           nullif($4, ''), CASE $4 WHEN '' THEN 0 WHEN 'deleted' THEN 2 ELSE 1 END,
           $3::timestamptz, $3::timestamptz + interval '30 days',
           CASE WHEN $4 <> '' THEN $3::timestamptz + interval '5 seconds' END,
           CASE $4 WHEN 'rejected' THEN 'NO_ACCESS' END,
           CASE $4 WHEN 'rejected' THEN 'knot: 403 NO_ACCESS: this client may not delete users' END
    RETURNING id, received_at, completed_at
), calls AS (
    INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, error_code, result)
    SELECT id, 1, 'worker-a', received_at + interval '1 second', 1200, 500, 'http_500', 'retryable' FROM req WHERE $4 = 'deleted'
    UNION ALL
    SELECT id, 2, 'worker-b', received_at + interval '4 seconds', 42, 200, NULL, 'deleted' FROM req WHERE $4 = 'deleted'
    UNION ALL
    SELECT id, 1, 'worker-a', received_at + interval '4 seconds', 35, 403, 'NO_ACCESS', 'permanent' FROM req WHERE $4 = 'rejected'
)
INSERT INTO erasure_reports (request_id, connector, status, attempts, ready_at, delivered_at, last_result, last_http_status)
SELECT id, $5, CASE WHEN completed_at IS NULL THEN 'waiting' ELSE 'delivered' END,
       CASE WHEN completed_at IS NULL THEN 0 ELSE 1 END, completed_at, completed_at + interval '1 second',
       CASE WHEN completed_at IS NOT NULL THEN 'delivered' END, CASE WHEN completed_at IS NOT NULL THEN 200 END
FROM req WHERE $5 <> ''`, r.ref, r.userID, r.received, r.outcome, r.connector)
		if err != nil {
			t.Fatalf("insert %s: %v", r.ref, err)
		}
	}
}

// pseudonymise does what retention does to a finished request's id.
func (b *evidenceBundle) pseudonymise(t *testing.T, ref, pseudonym string) {
	t.Helper()
	tag, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET external_user_id = $2 WHERE request_ref = $1 AND completed_at IS NOT NULL`, ref, pseudonym)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("pseudonymise %s: %v (%d rows)", ref, err, tag.RowsAffected())
	}
}

func (b *evidenceBundle) run(t *testing.T, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	merged := map[string]string{}
	for k, v := range b.env {
		merged[k] = v
	}
	for k, v := range env {
		merged[k] = v
	}
	return runCLI(t, merged, stdin, append([]string{"evidence"}, args...)...)
}

// apiDocument is the document GET /v1/erasure-requests/{ref} answers for ref, decoded.
func (b *evidenceBundle) apiDocument(t *testing.T, ref string) any {
	t.Helper()
	rec, err := b.q.Lookup(b.ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return decodeJSON(t, mustMarshal(t, worker.RecordOf(rec)))
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func decodeJSON(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, s)
	}
	return v
}

// fieldOf is the value beside key in printRecord's first table (the text after the key and
// its padding), or "" when no line starts with key.
func fieldOf(out, key string) string {
	for line := range strings.Lines(out) {
		if rest, ok := strings.CutPrefix(line, key+"  "); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// hasRow reports whether a line of out holds exactly these whitespace-separated cells.
func hasRow(out string, cells ...string) bool {
	for line := range strings.Lines(out) {
		if reflect.DeepEqual(strings.Fields(line), cells) {
			return true
		}
	}
	return false
}

func TestEvidenceByRefPrintsTheRecordAndWithJSONTheAPIDocument(t *testing.T) {
	b := setupEvidence(t)
	received := time.Date(2026, 1, 31, 10, 0, 0, 0, time.UTC)
	b.insert(t,
		evidenceRow{ref: "ketch:3f0c8a52", userID: "alice-7f3a@example.com", received: received, outcome: "deleted", connector: "ketch"},
		evidenceRow{ref: "bad-1", userID: "bob-c41d", received: received, outcome: "rejected"},
		evidenceRow{ref: "open-1", userID: "carol-9e2b", received: received, connector: "webhook"},
	)

	r := b.run(t, "", nil, "--ref", "ketch:3f0c8a52")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for key, want := range map[string]string{
		"request_ref":     "ketch:3f0c8a52",
		"door":            "ketch",
		"received":        "2026-01-31T10:00:00.000Z",
		"due":             "2026-03-02T10:00:00.000Z",
		"status":          "succeeded",
		"outcome":         "deleted (Knot deleted the user)",
		"completed":       "2026-01-31T10:00:05.000Z",
		"attempts":        "2",
		"last error code": "-",
	} {
		if got := fieldOf(r.stdout, key); got != want {
			t.Errorf("%s: %q, want %q\n%s", key, got, want, r.stdout)
		}
	}
	for _, row := range [][]string{
		{"1", "2026-01-31T10:00:01.000Z", "worker-a", "500", "http_500", "retryable", "1.2s"},
		{"2", "2026-01-31T10:00:04.000Z", "worker-b", "200", "-", "deleted", "42ms"},
		{"ketch", "delivered", "1", "2026-01-31T10:00:06.000Z", "delivered"},
	} {
		if !hasRow(r.stdout, row...) {
			t.Errorf("no row %q in\n%s", row, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "alice") {
		t.Errorf("the record shows the external_user_id:\n%s", r.stdout)
	}

	r = b.run(t, "", nil, "--ref", "bad-1")
	if fieldOf(r.stdout, "last error code") != "NO_ACCESS" || !strings.Contains(fieldOf(r.stdout, "last error"), "403 NO_ACCESS") ||
		fieldOf(r.stdout, "door") != "not recorded (the table, enqueue, or a door that reports nothing back)" ||
		!hasRow(r.stdout, "1", "2026-01-31T10:00:04.000Z", "worker-a", "403", "NO_ACCESS", "permanent", "35ms") {
		t.Errorf("a failed request's record:\n%s", r.stdout)
	}
	r = b.run(t, "", nil, "--ref", "open-1")
	if fieldOf(r.stdout, "completed") != "not yet" || fieldOf(r.stdout, "door") != "api" ||
		!strings.Contains(r.stdout, "CALLS TO KNOT (0)") || !hasRow(r.stdout, "webhook", "waiting", "0", "-", "-") {
		t.Errorf("a pending request's record:\n%s", r.stdout)
	}

	for _, ref := range []string{"ketch:3f0c8a52", "bad-1", "open-1"} {
		r := b.run(t, "", nil, "--ref", ref, "--json")
		if r.code != exitOK {
			t.Fatalf("--json exit %d: %s", r.code, r.stderr)
		}
		if got, want := decodeJSON(t, r.stdout), b.apiDocument(t, ref); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: --json prints\n%s\nthe API answers\n%s", ref, r.stdout, mustMarshal(t, want))
		}
	}

	r = b.run(t, "", nil, "--ref", "no-such-ref")
	if r.code != exitFailure || !strings.Contains(r.stderr, `evidence: no request has request_ref "no-such-ref"`) || r.stdout != "" {
		t.Errorf("an unknown ref: %+v", r)
	}
}

func TestEvidenceByExternalUserIDFindsThePersonsRequestsThroughEveryKey(t *testing.T) {
	b := setupEvidence(t)
	const alice = "alice-7f3a@example.com"
	day := time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)
	b.insert(t,
		evidenceRow{ref: "erased-under-old-key", userID: alice, received: day, outcome: "deleted", connector: "webhook"},
		evidenceRow{ref: "erased-under-new-key", userID: alice, received: day.Add(24 * time.Hour), outcome: "deleted"},
		evidenceRow{ref: "erased-recently", userID: alice, received: day.Add(48 * time.Hour), outcome: "deleted"},
		evidenceRow{ref: "someone-else", userID: "bob-c41d", received: day, outcome: "deleted"},
	)
	// The first request was pseudonymised before the key was rotated, the second after it.
	b.pseudonymise(t, "erased-under-old-key", b.keys.oldOnly.Pseudonym(alice))
	b.pseudonymise(t, "erased-under-new-key", b.keys.newOnly.Pseudonym(alice))
	b.pseudonymise(t, "someone-else", b.keys.newOnly.Pseudonym("bob-c41d"))
	never := append([]string{alice, "bob-c41d"}, append(b.keys.both.Pseudonyms(alice), b.keys.both.Pseudonyms("bob-c41d")...)...)
	checkNoID := func(t *testing.T, r result) {
		t.Helper()
		for _, id := range never {
			if strings.Contains(r.stdout, id) || strings.Contains(r.stderr, id) {
				t.Errorf("the output shows an external_user_id %q:\n%s\n%s", id, r.stdout, r.stderr)
			}
		}
		if strings.Contains(r.stdout, worker.PseudonymPrefix) {
			t.Errorf("the output shows a pseudonym:\n%s", r.stdout)
		}
	}
	refsIn := func(out string) []string {
		var refs []string
		for line := range strings.Lines(out) {
			if ref, ok := strings.CutPrefix(line, "request_ref  "); ok {
				refs = append(refs, strings.TrimSpace(ref))
			}
		}
		return refs
	}

	t.Run("without the key file only the raw id matches, and the output says so", func(t *testing.T) {
		r := b.run(t, "", nil, "--external-user-id", alice)
		checkNoID(t, r)
		if r.code != exitOK || !reflect.DeepEqual(refsIn(r.stdout), []string{"erased-recently"}) ||
			!strings.Contains(r.stdout, "cannot be matched without IDENTIFIER_KEY_FILE") {
			t.Errorf("exit %d, refs %q:\n%s", r.code, refsIn(r.stdout), r.stdout)
		}
	})
	t.Run("with the key file every request of the person is found, under either key", func(t *testing.T) {
		r := b.run(t, "", map[string]string{"IDENTIFIER_KEY_FILE": b.keyFile}, "--external-user-id", alice)
		checkNoID(t, r)
		want := []string{"erased-under-old-key", "erased-under-new-key", "erased-recently"}
		if r.code != exitOK || !reflect.DeepEqual(refsIn(r.stdout), want) ||
			!strings.HasPrefix(r.stdout, "3 request(s) for this external_user_id, oldest first; matched by the raw external_user_id and by its pseudonym under each of the 2 key(s)") ||
			!strings.Contains(r.stdout, "REQUEST 3 OF 3") {
			t.Errorf("exit %d, refs %q, want %q:\n%s", r.code, refsIn(r.stdout), want, r.stdout)
		}
	})
	t.Run("a key dropped from the file loses what it pseudonymised", func(t *testing.T) {
		r := b.run(t, "", nil, "--identifier-key-file", b.newKeyFile, "--external-user-id", alice)
		checkNoID(t, r)
		if want := []string{"erased-under-new-key", "erased-recently"}; !reflect.DeepEqual(refsIn(r.stdout), want) {
			t.Errorf("refs %q, want %q:\n%s", refsIn(r.stdout), want, r.stdout)
		}
	})
	t.Run("--json prints the API's document of each request", func(t *testing.T) {
		r := b.run(t, "", map[string]string{"IDENTIFIER_KEY_FILE": b.keyFile}, "--external-user-id", alice, "--json")
		checkNoID(t, r)
		want := []any{b.apiDocument(t, "erased-under-old-key"), b.apiDocument(t, "erased-under-new-key"), b.apiDocument(t, "erased-recently")}
		if got := decodeJSON(t, r.stdout); r.code != exitOK || !reflect.DeepEqual(got, any(want)) {
			t.Errorf("exit %d:\n%s\nwant\n%s", r.code, r.stdout, mustMarshal(t, want))
		}
		r = b.run(t, "", nil, "--external-user-id", alice, "--json")
		if r.code != exitOK || !strings.Contains(r.stderr, "cannot be matched without IDENTIFIER_KEY_FILE") || len(decodeJSON(t, r.stdout).([]any)) != 1 {
			t.Errorf("--json without the key file: %+v", r)
		}
	})
	t.Run("the id may come from standard input, out of sight of ps", func(t *testing.T) {
		r := b.run(t, alice+"\n", map[string]string{"IDENTIFIER_KEY_FILE": b.keyFile}, "--external-user-id", "-")
		checkNoID(t, r)
		if r.code != exitOK || len(refsIn(r.stdout)) != 3 {
			t.Errorf("exit %d, refs %q: %s", r.code, refsIn(r.stdout), r.stderr)
		}
	})
	t.Run("nobody matching exits 1 without repeating the id", func(t *testing.T) {
		r := b.run(t, "", nil, "--external-user-id", "bob-c41d")
		checkNoID(t, r)
		if r.code != exitFailure || r.stdout != "" ||
			!strings.Contains(r.stderr, "evidence: no request for this external_user_id (matched by the raw external_user_id only") {
			t.Errorf("%+v", r)
		}
		r = b.run(t, "", map[string]string{"IDENTIFIER_KEY_FILE": b.keyFile}, "--external-user-id", "dave-0000")
		if r.code != exitFailure || !strings.Contains(r.stderr, "no request for this external_user_id (matched by the raw external_user_id and by its pseudonym") {
			t.Errorf("%+v", r)
		}
	})
}

func TestEvidenceExportsAPeriodAsJSONLinesWithoutAnyID(t *testing.T) {
	b := setupEvidence(t)
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	b.insert(t,
		evidenceRow{ref: "before", userID: "u-before", received: since.Add(-time.Microsecond), outcome: "deleted"},
		evidenceRow{ref: "ketch:at-since", userID: "u-ketch", received: since, outcome: "deleted", connector: "ketch"},
		evidenceRow{ref: "transcend:silo:r1", userID: "u-transcend", received: since.Add(time.Hour), outcome: "deleted", connector: "transcend"},
		evidenceRow{ref: "api-rejected", userID: "u-api", received: since.Add(48 * time.Hour), outcome: "rejected", connector: "webhook"},
		evidenceRow{ref: "table-pending", userID: "u-table", received: until.Add(-time.Microsecond)},
		evidenceRow{ref: "at-until", userID: "u-until", received: until, outcome: "deleted"},
	)
	b.pseudonymise(t, "ketch:at-since", b.keys.newOnly.Pseudonym("u-ketch"))
	b.pseudonymise(t, "transcend:silo:r1", b.keys.oldOnly.Pseudonym("u-transcend"))

	r := b.run(t, "", nil, "--since", "2026-01-01", "--until", "2026-02-01T00:00:00Z")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, id := range []string{"u-before", "u-ketch", "u-transcend", "u-api", "u-table", "u-until", worker.PseudonymPrefix} {
		if strings.Contains(r.stdout, id) {
			t.Errorf("the export shows an external_user_id or a pseudonym (%q):\n%s", id, r.stdout)
		}
	}
	if want := "erasure-worker: evidence: 4 request(s) received from 2026-01-01T00:00:00Z until 2026-02-01T00:00:00Z (exclusive)\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	wantDoors := map[string]any{"ketch:at-since": "ketch", "transcend:silo:r1": "transcend", "api-rejected": "api", "table-pending": nil}
	var refs []string
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		line, ok := decodeJSON(t, sc.Text()).(map[string]any)
		if !ok {
			t.Fatalf("a line is not a JSON object: %s", sc.Text())
		}
		ref, _ := line["request_ref"].(string)
		refs = append(refs, ref)
		if line["request_type"] != "erasure" || line["system"] != "knot" || line["door"] != wantDoors[ref] {
			t.Errorf("%s: request_type %v, system %v, door %v (want %v)", ref, line["request_type"], line["system"], line["door"], wantDoors[ref])
		}
		// Beside what was asked and the door, a line is the API's document of the request.
		delete(line, "request_type")
		delete(line, "system")
		delete(line, "door")
		if want := b.apiDocument(t, ref); !reflect.DeepEqual(any(line), want) {
			t.Errorf("%s: the export's record\n%s\nthe API's document\n%s", ref, mustMarshal(t, line), mustMarshal(t, want))
		}
		if ref == "api-rejected" && (line["last_error_code"] != "NO_ACCESS" || line["outcome"] != "rejected" || line["completed_at"] == nil) {
			t.Errorf("a failed request does not say why: %s", mustMarshal(t, line))
		}
	}
	if want := []string{"ketch:at-since", "transcend:silo:r1", "api-rejected", "table-pending"}; !reflect.DeepEqual(refs, want) {
		t.Errorf("exported %q, want %q (since is in, until is out)", refs, want)
	}

	// --until defaults to now; a period with nothing in it is an answer, not an error.
	r = b.run(t, "", nil, "--since", "2026-01-31T23:00:00Z")
	if r.code != exitOK || strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("--since alone: exit %d, %d lines, want the last two requests:\n%s%s", r.code, strings.Count(r.stdout, "\n"), r.stdout, r.stderr)
	}
	r = b.run(t, "", nil, "--since", "2020-01-01", "--until", "2020-02-01")
	if r.code != exitOK || r.stdout != "" || !strings.Contains(r.stderr, "evidence: 0 request(s) received from 2020-01-01") {
		t.Errorf("an empty period: %+v", r)
	}
}

func TestEvidenceRefusesBadFlagsNamingThem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	shortKey := filepath.Join(dir, "short")
	if err := os.WriteFile(shortKey, []byte("too-short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Nothing is reached: every one of these fails before connecting.
	env := map[string]string{"DATABASE_URL": "postgres://u@127.0.0.1:1/db"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "evidence: name what to show: --ref REQUEST_REF, --external-user-id ID, or --since DATE [--until DATE]"},
		{[]string{"--json"}, "evidence: name what to show"},
		{[]string{"--ref", "r1", "--external-user-id", "u1"}, "evidence: --ref and --external-user-id cannot be combined: use exactly one of --ref, --external-user-id, --since/--until"},
		{[]string{"--ref", "r1", "--since", "2026-01-01"}, "evidence: --ref and --since/--until cannot be combined"},
		{[]string{"--external-user-id", "u1", "--until", "2026-01-01"}, "evidence: --external-user-id and --since/--until cannot be combined"},
		{[]string{"--ref", " "}, "evidence: --ref is empty"},
		{[]string{"--external-user-id", ""}, "evidence: --external-user-id is empty"},
		{[]string{"--since", "2026-01-01", "--json"}, "evidence: --json applies to --ref and --external-user-id; --since/--until always prints JSON Lines"},
		{[]string{"--until", "2026-01-01"}, "evidence: --until needs --since, the start of the period"},
		{[]string{"--since", "last tuesday"}, `evidence: --since "last tuesday" is not a date (2026-01-31, midnight UTC) or an RFC 3339 time (2026-01-31T09:30:00Z)`},
		{[]string{"--since", "2026-01-01", "--until", "31/01/2026"}, `evidence: --until "31/01/2026" is not a date`},
		{[]string{"--since", "2026-02-01", "--until", "2026-01-01"}, "evidence: --until 2026-01-01T00:00:00Z is not after --since 2026-02-01T00:00:00Z"},
		{[]string{"--since", "2026-01-01", "--until", "2026-01-01"}, "evidence: --until 2026-01-01T00:00:00Z is not after --since 2026-01-01T00:00:00Z"},
		{[]string{"--ref", "r1", "extra"}, `evidence: unexpected argument "extra"`},
		{[]string{"--frobnicate"}, "evidence: flag provided but not defined: -frobnicate"},
		{[]string{"--external-user-id", "u1", "--identifier-key-file", shortKey}, "IDENTIFIER_KEY_FILE (--identifier-key-file): line 1: a key must be at least 32 bytes"},
		{[]string{"--external-user-id", "u1", "--identifier-key-file", filepath.Join(dir, "missing")}, "IDENTIFIER_KEY_FILE (--identifier-key-file): cannot read the key file"},
		{[]string{"--external-user-id", "-"}, "evidence: --external-user-id -: standard input holds no id on its first line"},
	} {
		r := runCLI(t, env, "", append([]string{"evidence"}, tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("evidence %q: exit %d, stderr %q, want exit 2 and %q", tc.args, r.code, r.stderr, tc.want)
		}
		if strings.Contains(r.stderr, "u1") {
			t.Errorf("evidence %q repeats the external_user_id: %s", tc.args, r.stderr)
		}
	}
	if r := runCLI(t, env, "", "evidence", "--help"); r.code != exitOK || !strings.Contains(r.stdout, "--identifier-key-file, IDENTIFIER_KEY_FILE") ||
		!strings.Contains(r.stdout, "--external-user-id ID") {
		t.Errorf("--help: %+v", r)
	}
}
