//go:build chaos

package main

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
)

// Bad input, through `enqueue` and through rows the privacy system INSERTs itself. What the
// table's constraints can refuse, they refuse; what reaches the worker and cannot be sent fails
// alone, with a readable last_error, and never reaches Knot; every valid neighbour is erased.
func TestChaosBadInput(t *testing.T) {
	t.Parallel()
	fake := knotfake.New(knotfake.Options{ClientID: "e2e-client", Secret: knotSecret})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	r := newRig(t, withKnot(srv.URL))

	valid := map[string]string{}   // request_ref -> external_user_id that must be erased
	invalid := map[string]string{} // request_ref -> external_user_id that must fail as invalid, unsent
	long := strings.Repeat("x", 10<<10)
	maxID := strings.Repeat("m", 1024)

	// --- enqueue, JSON Lines: one case a line; verdict insert, duplicate, or the reason it is
	// rejected.
	jsonl := []struct {
		line, verdict string
	}{
		{`{"request_ref":"j-ok","external_user_id":"j-ok-user"}`, "insert"},
		{`{"request_ref":"j-sql","external_user_id":"Robert'); DROP TABLE erasure_requests;--"}`, "insert"},
		{`{"request_ref":"j-quotes \"q\" 'q'","external_user_id":"o\"brien \\ 'x' ` + "`" + `y` + "`" + `"}`, "insert"},
		{`{"request_ref":"j-max","external_user_id":"` + maxID + `"}`, "insert"},
		{`{"request_ref":"j-past","external_user_id":"j-past-user","due_at":"2020-01-01"}`, "insert"},
		{`{"request_ref":"j-ok","external_user_id":"someone-else"}`, "duplicate"},
		{`{"request_ref":"j-empty","external_user_id":""}`, "external_user_id: empty"},
		{`{"request_ref":"j-blank","external_user_id":"   "}`, "only whitespace"},
		{`{"request_ref":"j-emspace","external_user_id":"\u2003\u2003"}`, "only whitespace"},
		{`{"request_ref":"j-long","external_user_id":"` + long + `"}`, "longer than 1024"},
		{"{\"request_ref\":\"j-utf8\",\"external_user_id\":\"caf\xe9\"}", "not valid UTF-8"},
		{`{"request_ref":"j-nul","external_user_id":"a\u0000b"}`, "control character U+0000"},
		{`{"request_ref":"j-ctl","external_user_id":"a\u0007b"}`, "control character U+0007"},
		{`{"request_ref":"j-nofield"}`, "external_user_id is missing"},
		{`{"external_user_id":"j-noref"}`, "request_ref is missing"},
		{`{"request_ref":"","external_user_id":"j-emptyref"}`, "request_ref is empty"},
		{`{"request_ref":"j-extra","external_user_id":"u","extra":1}`, "unknown field"},
		{`{"request_ref":"j-num","external_user_id":42}`, "must be a string"},
		{`{"request_ref":"j-broken","external_user_id":`, "not a JSON object"},
		{`["j-array","u"]`, "not a JSON object"},
		{`{"request_ref":"j-due","external_user_id":"u","due_at":"next tuesday"}`, "is not a time"},
	}
	var in strings.Builder
	for _, c := range jsonl {
		in.WriteString(c.line + "\n")
	}
	jsonValid := map[string]string{"j-ok": "j-ok-user", "j-sql": "Robert'); DROP TABLE erasure_requests;--",
		`j-quotes "q" 'q'`: "o\"brien \\ 'x' `y`", "j-max": maxID, "j-past": "j-past-user"}
	checkEnqueue(t, r, "jsonl", in.String(), len(jsonl), func(i int) string { return jsonl[i].verdict })
	for k, v := range jsonValid {
		valid[k] = v
	}

	// --- enqueue, CSV.
	csvLines := []struct {
		line, verdict string
	}{
		{`request_ref,external_user_id,due_at`, "skip"},
		{`c-ok,c-ok-user`, "insert"},
		{`c-quoted,"c ""quoted"", with, commas"`, "insert"},
		{`c-past,c-past-user,2001-02-03`, "insert"},
		{`c-ok,c-other-user`, "duplicate"},
		{`j-ok,c-collides-with-jsonl`, "duplicate"},
		{`c-unclosed,"unclosed`, "malformed CSV"},
		{`c-alone`, "want 2 or 3 fields"},
		{`c-four,u,2030-01-01,extra`, "want 2 or 3 fields"},
		{`c-empty-id,`, "external_user_id: empty"},
		{`c-due,c-due-user,31/12/2030`, "is not a time"},
		{"c-utf8,caf\xe9", "not valid UTF-8"},
	}
	in.Reset()
	for _, c := range csvLines {
		in.WriteString(c.line + "\r\n")
	}
	checkEnqueue(t, r, "csv", in.String(), len(csvLines), func(i int) string { return csvLines[i].verdict })
	valid["c-ok"], valid["c-quoted"], valid["c-past"] = "c-ok-user", `c "quoted", with, commas`, "c-past-user"

	// A byte order mark, as Excel's "CSV UTF-8" writes, is not part of the header line.
	if out, errOut, code := r.cli(t, "\ufeffrequest_ref,external_user_id\r\nc-bom,c-bom-user\r\n", "enqueue", "--format", "csv"); code != 0 || out != "inserted 1, duplicate 0, rejected 0\n" {
		t.Errorf("CSV with a byte order mark: exit %d, %q %s", code, out, errOut)
	}
	valid["c-bom"] = "c-bom-user"

	// --- rows INSERTed by the privacy system itself, as the table contract says.
	conn := r.db(t)
	ctx := context.Background()
	const contract = `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, $2) ON CONFLICT (request_ref) DO NOTHING`
	for _, c := range []struct {
		ref, id string
		state   string // SQLSTATE the table answers, or "" when it takes the row
	}{
		{"s-empty", "", "23514"},       // check_violation: external_user_id_present
		{"s-blank", " \t\n ", "23514"}, // blank
		{"s-long", long, "23514"},      // longer than 1024 bytes
		{"s-utf8", "caf\xe9", "22021"}, // character_not_in_repertoire: not UTF-8
		{"s-nul", "a\x00b", "22021"},   // PostgreSQL text cannot hold NUL
		{"", "s-emptyref", "23514"},    // request_ref_present
		{"   ", "s-blankref", "23514"}, // blank request_ref
		{strings.Repeat("r", 256), "s-longref", "23514"},
		{"s-ok", "s-ok-user", ""},
		{"s-sql", "x'); DELETE FROM erasure_requests; --", ""},
		{"s-padded", "  padded  ", ""}, // not blank: sent as is
		{"s-ref\nwith newline", "s-newline-ref-user", ""},
		{"s-max", strings.Repeat("n", 1024), ""},
		{"s-tab", "tab\there", ""},       // control characters pass the table's check...
		{"s-newline", "line\nbreak", ""}, // ...and must fail at the worker, unsent
		{"s-bell", "bell\x07", ""},
		{"s-del", "del\x7f", ""},
		{"s-esc", "\x1b[31mred\x1b[0m", ""},
	} {
		_, err := conn.Exec(ctx, contract, c.ref, c.id)
		var pgErr *pgconn.PgError
		switch {
		case c.state == "" && err != nil:
			t.Errorf("the table refused %q / %.40q: %v", c.ref, c.id, err)
		case c.state != "" && !errors.As(err, &pgErr):
			t.Errorf("the table took %.40q / %.40q (err %v); want SQLSTATE %s", c.ref, c.id, err, c.state)
		case c.state != "" && pgErr.Code != c.state:
			t.Errorf("the table refused %.40q / %.40q with %s (%s); want %s", c.ref, c.id, pgErr.Code, pgErr.Message, c.state)
		case c.state == "":
			if strings.ContainsFunc(c.id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				invalid[c.ref] = c.id
			} else {
				valid[c.ref] = c.id
			}
		}
	}
	// Unicode spaces only: whether the table's [[:space:]] sees them depends on the server's
	// locale; if it takes the row, the worker must refuse to send it.
	if _, err := conn.Exec(ctx, contract, "s-emspace", "\u2003\u00a0"); err == nil {
		invalid["s-emspace"] = "\u2003\u00a0"
	}
	// The contract's ON CONFLICT makes a repeated request_ref harmless; without it the unique
	// key refuses it; a missing id and an unreadable due_at are refused too.
	if tag, err := conn.Exec(ctx, contract, "s-ok", "s-ok-again"); err != nil || tag.RowsAffected() != 0 {
		t.Errorf("repeated request_ref with ON CONFLICT: %v, %d rows", err, tag.RowsAffected())
	}
	for stmt, state := range map[string]string{
		`INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('s-ok', 'again')`:              "23505",
		`INSERT INTO erasure_requests (request_ref) VALUES ('s-noid')`:                                       "23502",
		`INSERT INTO erasure_requests (request_ref, external_user_id, due_at) VALUES ('s-due', 'u', 'soon')`: "22007",
	} {
		_, err := conn.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != state {
			t.Errorf("%s: %v; want SQLSTATE %s", stmt, err, state)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO erasure_requests (request_ref, external_user_id, due_at) VALUES ('s-past', 's-past-user', '2001-01-01')`); err != nil {
		t.Errorf("a due_at in the past: %v", err)
	}
	valid["s-past"] = "s-past-user"

	total := int64(len(valid) + len(invalid))
	if got := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests`); got != total {
		t.Fatalf("the table holds %d rows; the test put in %d", got, total)
	}

	// --- the worker.
	w := r.startWorker(t, "worker", "RATE_LIMIT_RPS=200", "CONCURRENCY=8", "POLL_INTERVAL=200ms")
	c := r.drained(t, time.Minute)
	if c["succeeded/deleted"] != int64(len(valid)) || c["failed/invalid"] != int64(len(invalid)) {
		t.Errorf("final states %v; want %d succeeded/deleted and %d failed/invalid", c, len(valid), len(invalid))
	}
	var bad chaosRowErrors
	for _, row := range r.rows(t) {
		if id, ok := valid[row.RequestRef]; ok {
			if row.ExternalUserID != id || row.Status != "succeeded" || !fake.Deleted(id) {
				bad.add("valid request %.40q: %s/%s, deleted at Knot: %v", row.RequestRef, row.Status, row.Outcome, fake.Deleted(id))
			}
			continue
		}
		if _, ok := invalid[row.RequestRef]; !ok {
			bad.add("unexpected row %.40q", row.RequestRef)
			continue
		}
		if row.Status != "failed" || row.Outcome != "invalid" || row.LastErrorCode != "invalid_external_user_id" ||
			!strings.HasPrefix(row.LastError, "knot: invalid external_user_id: ") || row.Calls != 1 || row.Attempts != 1 {
			bad.add("bad request %q: %s/%s, %d attempts, %d recorded, last_error %s %q; want failed/invalid on its first attempt, with a reason",
				row.RequestRef, row.Status, row.Outcome, row.Attempts, row.Calls, row.LastErrorCode, row.LastError)
		}
		if strings.ContainsFunc(row.LastError, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			bad.add("last_error of %q holds a control character: %q", row.RequestRef, row.LastError)
		}
		if fake.Deleted(row.ExternalUserID) {
			bad.add("bad request %q reached Knot", row.RequestRef)
		}
	}
	bad.report(t)
	st := fake.Stats()
	if st.Calls != int64(len(valid)) || st.InvalidRequests != 0 {
		t.Errorf("Knot got %d calls (%d invalid); want one for each of the %d valid requests", st.Calls, st.InvalidRequests, len(valid))
	}
	if got := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_attempts WHERE result = 'invalid' AND http_status IS NULL`); got != int64(len(invalid)) {
		t.Errorf("erasure_attempts records %d refusals to call; want %d", got, len(invalid))
	}
	w.noPanic(t)
	if code, took := w.stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM (took %v)", code, took)
	}
}

// checkEnqueue runs `enqueue --format format` on input and checks, line by line, that each was
// inserted, counted as a duplicate, skipped, or rejected with its reason on stderr.
func checkEnqueue(t *testing.T, r *rig, format, input string, lines int, verdict func(int) string) {
	t.Helper()
	out, errOut, code := r.cli(t, input, "enqueue", "--format", format)
	var inserted, duplicate, rejected int
	for i := range lines {
		prefix := fmt.Sprintf("enqueue: line %d: ", i+1)
		var said string
		for _, l := range strings.Split(errOut, "\n") {
			if strings.HasPrefix(l, prefix) && !strings.Contains(l, "warning:") {
				said = l
			}
		}
		switch v := verdict(i); v {
		case "insert", "duplicate", "skip":
			if said != "" {
				t.Errorf("%s line %d rejected (%s); want %s", format, i+1, said, v)
			}
			if v == "insert" {
				inserted++
			} else if v == "duplicate" {
				duplicate++
			}
		default:
			rejected++
			if !strings.Contains(said, v) {
				t.Errorf("%s line %d: stderr says %q; want a rejection saying %q", format, i+1, said, v)
			}
		}
	}
	if want := fmt.Sprintf("inserted %d, duplicate %d, rejected %d\n", inserted, duplicate, rejected); out != want || code != exitFailure {
		t.Errorf("enqueue --format %s: exit %d, %q; want exit %d, %q\n%s", format, code, out, exitFailure, want, errOut)
	}
	if !strings.Contains(errOut, "is in the past; the request is accepted") {
		t.Errorf("enqueue --format %s did not warn about a due_at in the past:\n%s", format, errOut)
	}
}
