package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

// consoleBundle is a console started through run(), as main starts it, against a database of
// its own read through a role that may only SELECT.
type consoleBundle struct {
	base     string // http://127.0.0.1:PORT
	log      *syncBuffer
	admin    *pgx.Conn // the superuser, to seed rows
	keys     worker.IdentifierKeys
	user     string
	password string
}

const consoleKey = "console-test-key-0123456789abcdefghijklmnopqrstuvwxyz"

func setupConsole(t *testing.T) *consoleBundle {
	t.Helper()
	ctx := context.Background()
	dbURL := queuetest.URL(t)
	admin, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	b := &consoleBundle{log: &syncBuffer{}, admin: admin, keys: worker.NewIdentifierKeys([]byte(consoleKey)),
		user: "dpo", password: "correct horse battery staple"}

	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte(b.password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	writeFile(t, webConfig, fmt.Sprintf("basic_auth_users:\n  %s: %s\n", b.user, hash))
	keyFile := filepath.Join(dir, "keys")
	writeFile(t, keyFile, consoleKey+"\n")

	addr := freeAddr(t)
	b.base = "http://" + addr
	env := map[string]string{"DATABASE_URL": readOnlyRole(t, admin, dbURL), "CONSOLE_LISTEN_ADDR": addr,
		"CONSOLE_WEB_CONFIG_FILE": webConfig, "IDENTIFIER_KEY_FILE": keyFile}
	runCtx, cancel := context.WithCancel(context.Background())
	exited := make(chan int, 1)
	go func() {
		exited <- run(runCtx, []string{"console"}, func(k string) string { return env[k] }, strings.NewReader(""), io.Discard, b.log)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-exited:
			if code != exitOK {
				t.Errorf("console exited %d", code)
			}
		case <-time.After(15 * time.Second):
			t.Error("console did not return within 15s of its context ending")
		}
		if t.Failed() {
			t.Logf("--- console's log ---\n%s", b.log.String())
		}
	})
	queuetest.WaitFor(t, 20*time.Second, "the console to serve", func() bool {
		return strings.Contains(b.log.String(), "serving the console")
	})
	return b
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// readOnlyRole makes a login role that may only SELECT the tables of dbURL's database and
// returns its URL; it is dropped at the end of the test.
func readOnlyRole(t *testing.T, admin *pgx.Conn, dbURL string) string {
	t.Helper()
	ctx := context.Background()
	server, err := pgx.Connect(ctx, queuetest.ServerURL()) // roles are the cluster's: the superuser makes them
	if err != nil {
		t.Fatal(err)
	}
	role := fmt.Sprintf("console_ro_%d", time.Now().UnixNano())
	if _, err := server.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'ro-pass'`, role)); err != nil {
		t.Fatal(err)
	}
	// The tables' owner grants SELECT, and nothing else, on them.
	if _, err := admin.Exec(ctx, fmt.Sprintf(`GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s`, role)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = admin.Exec(ctx, "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "+role)
		if _, err := server.Exec(ctx, "DROP ROLE "+role); err != nil {
			t.Logf("drop role %s: %v", role, err)
		}
		server.Close(ctx)
	})
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "ro-pass")
	return u.String()
}

// seedConsole writes requests of every kind: pending, overdue, finished with calls and
// reports, pseudonymised, a ref with awkward characters, and a denial.
func (b *consoleBundle) seed(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := b.admin.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('plain-1', 'raw-user-alice@example.com')`)
	exec(`INSERT INTO erasure_requests (request_ref, external_user_id, due_at, received_at) VALUES ('late-1', 'raw-user-bob-7731', now() - interval '1 day', now() - interval '31 days')`)
	exec(`INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at)
	      VALUES ('ketch:done-1', 'raw-user-carol-5512', 'succeeded', 'deleted', 1, now())`)
	exec(`INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, result)
	      SELECT id, 1, 'w-1', now(), 42, 200, 'deleted' FROM erasure_requests WHERE request_ref = 'ketch:done-1'`)
	exec(`INSERT INTO erasure_reports (request_id, connector, status, attempts, ready_at, delivered_at, last_result, last_http_status)
	      SELECT id, 'ketch', 'delivered', 2, now(), now(), 'delivered', 204 FROM erasure_requests WHERE request_ref = 'ketch:done-1'`)
	exec(`INSERT INTO erasure_report_attempts (report_id, attempted_at, worker, duration_ms, http_status, result, error)
	      SELECT p.id, now() - interval '1 minute', 'w-1', 12, 503, 'retry', 'the receiver answered 503 marker-report-error'
	      FROM erasure_reports p JOIN erasure_requests r ON r.id = p.request_id WHERE r.request_ref = 'ketch:done-1'`)
	// Dave's first request was pseudonymised; his second still holds the raw id.
	exec(`INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at, pseudonymised_at, received_at)
	      VALUES ('old/dave ?#%', $1, 'succeeded', 'not_found', 1, now() - interval '10 days', now() - interval '3 days', now() - interval '11 days')`,
		b.keys.Pseudonym("raw-user-dave-4242"))
	exec(`INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts, completed_at, last_error_code, last_error)
	      VALUES ('dave-2', 'raw-user-dave-4242', 'failed', 'rejected', 1, now(), 'INVALID_FIELD', 'Knot refused')`)
	exec(`INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('x/../y', 'raw-user-erin-1'), ('a//b', 'raw-user-erin-2'), ('<i>é ü</i>', 'raw-user-erin-3')`)
	exec(`INSERT INTO erasure_denials (request_ref, door, reason, field) VALUES ('denied-1', 'api', 'invalid_id', 'external_user_id')`)
}

var rawIDs = []string{"raw-user-alice@example.com", "raw-user-bob-7731", "raw-user-carol-5512", "raw-user-dave-4242",
	"raw-user-erin-1", "raw-user-erin-2", "raw-user-erin-3"}

func (b *consoleBundle) do(t *testing.T, req *http.Request, auth bool) (*http.Response, string) {
	t.Helper()
	if auth {
		req.SetBasicAuth(b.user, b.password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func (b *consoleBundle) get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b.do(t, req, true)
}

func (b *consoleBundle) lookUp(t *testing.T, id string, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.base+"/people", strings.NewReader(url.Values{"external_user_id": {id}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return b.do(t, req, true)
}

var hrefRE = regexp.MustCompile(`href="([^"]*)"`)

// checkPage asserts what every HTML page must be: secure headers, the shared nav, and no
// external_user_id, raw or pseudonymised, anywhere in it or in a link.
func checkPage(t *testing.T, path string, resp *http.Response, body string) {
	t.Helper()
	for h, want := range map[string]string{
		"Content-Security-Policy": "default-src 'none'; style-src 'self'",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
	} {
		if got := resp.Header.Get(h); !strings.Contains(got, want) {
			t.Errorf("%s: %s = %q, want it to hold %q", path, h, got, want)
		}
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		for _, want := range []string{`<html lang="en">`, `name="viewport"`, `href="#main"`, `<nav aria-label="Console">`, `href="/people"`} {
			if !strings.Contains(body, want) {
				t.Errorf("%s: the page lacks %s", path, want)
			}
		}
	}
	for _, id := range rawIDs {
		if strings.Contains(body, id) || strings.Contains(body, url.QueryEscape(id)) || strings.Contains(body, url.PathEscape(id)) {
			t.Errorf("%s: the page shows the raw external_user_id %q", path, id)
		}
	}
	if strings.Contains(body, "hmac-sha256:") {
		t.Errorf("%s: the page shows a pseudonym", path)
	}
	for _, m := range hrefRE.FindAllStringSubmatch(body, -1) {
		for _, id := range rawIDs {
			if u, err := url.PathUnescape(m[1]); err == nil && strings.Contains(u, id) {
				t.Errorf("%s: a link holds the raw external_user_id: %s", path, m[1])
			}
		}
	}
}

// Every page renders, through the real exporter-toolkit server and a role with only SELECT,
// for the user who passed basic auth; nobody else gets in; no page shows an external_user_id.
func TestConsoleServesEveryPageReadOnlyBehindBasicAuth(t *testing.T) {
	t.Parallel()
	b := setupConsole(t)
	b.seed(t)

	// Nobody without the password.
	for name, req := range map[string]func() *http.Request{
		"no credentials": func() *http.Request { r, _ := http.NewRequest(http.MethodGet, b.base+"/", nil); return r },
		"wrong password": func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, b.base+"/requests", nil)
			r.SetBasicAuth(b.user, "wrong")
			return r
		},
		"unknown user": func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, b.base+"/metrics", nil)
			r.SetBasicAuth("mallory", b.password)
			return r
		},
	} {
		resp, _ := b.do(t, req(), false)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, resp.StatusCode)
		}
	}

	pages := map[string]string{ // path: what it must show
		"/":                           "Open (pending)",
		"/requests":                   "ketch:done-1",
		"/requests?status=failed":     "dave-2",
		"/requests?outcome=not_found": "old/dave ?#%",
		"/requests?due=overdue":       "late-1",
		"/requests?source=ketch":      "ketch:done-1",
		"/requests?source=-api":       "plain-1",
		"/requests/ketch:done-1":      "marker-report-error",
		"/requests/" + url.PathEscape("old/dave ?#%"): "not_found",
		"/requests/denied-1":                          "invalid_id",
		"/people":                                     "external_user_id",
		"/people?external_user_id=raw-user-alice@example.com": "external_user_id",
		"/evidence": "Download CSV",
	}
	for path, want := range pages {
		resp, body := b.get(t, path)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d, want 200\n%s", path, resp.StatusCode, body)
			continue
		}
		if !strings.Contains(body, template(want)) {
			t.Errorf("%s: the page does not show %q", path, want)
		}
		checkPage(t, path, resp, body)
	}
	// Every link to a request's page leads to it, whatever the ref's characters.
	_, list := b.get(t, "/requests")
	links := 0
	for _, m := range hrefRE.FindAllStringSubmatch(list, -1) {
		if !strings.HasPrefix(m[1], "/requests/") {
			continue
		}
		ref, _ := url.PathUnescape(strings.TrimPrefix(m[1], "/requests/"))
		resp, body := b.get(t, m[1])
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "<h1>Request <code>"+template(ref)+"</code></h1>") {
			t.Errorf("the link %s: %d, want the page of %q\n%s", m[1], resp.StatusCode, ref, body)
		}
		links++
	}
	if links != 8 {
		t.Errorf("/requests links %d requests, want 8", links)
	}
	if !strings.Contains(list, `href="/requests/old%2Fdave%20%3F%23%25"`) {
		t.Errorf("the ref old/dave ?#%% is not escaped as one path segment in its link")
	}

	// The overview counts one overdue, one failed and two pending. Its chart is computed in the
	// background from the console's start: a reload shows it once that is done.
	_, overview := b.get(t, "/")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(overview, `<svg role="img"`) && time.Now().Before(deadline); {
		if !strings.Contains(overview, "The chart's figures are being computed") {
			t.Fatalf("the overview shows neither the chart nor that it is being computed:\n%s", overview)
		}
		time.Sleep(20 * time.Millisecond)
		_, overview = b.get(t, "/")
	}
	for _, want := range []string{`<svg role="img"`, "<title id=\"chart-title\">", "<desc id=\"chart-desc\">", `<th scope="col">Day</th>`, "Oldest pending request waiting for"} {
		if !strings.Contains(overview, want) {
			t.Errorf("the overview lacks %s", want)
		}
	}

	// An unknown ref is a 404 page.
	resp, body := b.get(t, "/requests/no-such-ref")
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "no-such-ref") {
		t.Errorf("unknown ref: %d, want 404 naming it", resp.StatusCode)
	}
	checkPage(t, "/requests/no-such-ref", resp, body)

	// A person is found by POST, pseudonymised requests included; the answer is not cached.
	resp, body = b.lookUp(t, "raw-user-dave-4242", map[string]string{"Origin": b.base})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /people: %d\n%s", resp.StatusCode, body)
	}
	if !strings.Contains(body, "old/dave ?#%") || !strings.Contains(body, "dave-2") {
		t.Errorf("POST /people did not find both of dave's requests, the pseudonymised one included:\n%s", body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("POST /people: Cache-Control %q, want no-store", cc)
	}
	checkPage(t, "POST /people", resp, body)
	// A look-up from another site is refused.
	resp, body = b.lookUp(t, "raw-user-dave-4242", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"})
	if resp.StatusCode != http.StatusForbidden || strings.Contains(body, "dave-2") {
		t.Errorf("a cross-site POST /people: %d, want 403 without the answer", resp.StatusCode)
	}

	// The export: CSV, an attachment, every request of the period, no id.
	today := time.Now().UTC().Format(time.DateOnly)
	from := time.Now().UTC().AddDate(0, 0, -40).Format(time.DateOnly)
	resp, body = b.get(t, "/evidence.csv?from="+from+"&to="+today)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("/evidence.csv: %d %q", resp.StatusCode, resp.Header.Get("Content-Disposition"))
	}
	if !strings.HasPrefix(body, "request_type,system,door,request_ref,") || strings.Count(body, "\n") != 9 {
		t.Errorf("/evidence.csv: want a header and 8 requests:\n%s", body)
	}
	if !strings.Contains(body, "erasure,knot,ketch,ketch:done-1,succeeded,deleted,1,") {
		t.Errorf("/evidence.csv lacks ketch:done-1's record:\n%s", body)
	}
	checkPage(t, "/evidence.csv", resp, body)
	for _, q := range []string{"", "?from=" + from, "?from=2026-13-01&to=" + today, "?from=" + today + "&to=2020-01-01"} {
		resp, body := b.get(t, "/evidence.csv"+q)
		param := "from"
		if strings.Contains(q, "from=") && !strings.Contains(q, "13-01") {
			param = "to"
		}
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "parameter "+param) {
			t.Errorf("/evidence.csv%s: %d %q, want 400 naming %s", q, resp.StatusCode, body, param)
		}
	}

	// Nothing changes anything.
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		req, _ := http.NewRequest(m, b.base+"/requests/ketch:done-1", nil)
		if resp, _ := b.do(t, req, true); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s: %d, want 405", m, resp.StatusCode)
		}
	}

	// The look-up and the export are accounted for, by user, without the id.
	_, metrics := b.get(t, "/metrics")
	for _, want := range []string{`erasure_console_lookups_total{kind="person"} 1`, `erasure_console_lookups_total{kind="export"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	logs := b.log.String()
	if !regexp.MustCompile(`"msg":"console: person look-up","user":"dpo","matched":2`).MatchString(logs) {
		t.Errorf("no accountable log line of the person look-up:\n%s", logs)
	}
	if !regexp.MustCompile(`"msg":"console: evidence export","user":"dpo","from":"` + from + `","to":"` + today + `","rows":8`).MatchString(logs) {
		t.Errorf("no accountable log line of the export:\n%s", logs)
	}
	for _, id := range rawIDs {
		if strings.Contains(logs, id) {
			t.Errorf("the log holds the raw external_user_id %q", id)
		}
	}
}

// template escapes s as html/template shows text.
func template(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;", "+", "&#43;")
	return r.Replace(s)
}

// The console refuses to start without authentication, and serves without it only on a
// loopback address when asked to.
func TestConsoleRefusesToStartWithoutAuthentication(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"no web config", []string{"console"}, map[string]string{},
			[]string{"CONSOLE_WEB_CONFIG_FILE (--console-web-config-file): is required", "htpasswd -nbBC 10", "--insecure-loopback"}},
		{"insecure on every address", []string{"console", "--insecure-loopback"}, map[string]string{},
			[]string{`CONSOLE_LISTEN_ADDR (--console-listen-addr): ":8080" is not a loopback address`}},
		{"insecure on a public address", []string{"console", "--insecure-loopback"}, map[string]string{"CONSOLE_LISTEN_ADDR": "0.0.0.0:8080"},
			[]string{`CONSOLE_LISTEN_ADDR (--console-listen-addr): "0.0.0.0:8080" is not a loopback address`}},
		{"a web config that is not one", []string{"console"}, map[string]string{"CONSOLE_WEB_CONFIG_FILE": "/no/such/web.yml"},
			[]string{"CONSOLE_WEB_CONFIG_FILE (--console-web-config-file):"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}
			for k, v := range tc.env {
				env[k] = v
			}
			var stderr strings.Builder
			code := run(context.Background(), tc.args, func(k string) string { return env[k] }, strings.NewReader(""), io.Discard, &stderr)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}
	for _, addr := range []string{"127.0.0.1:8080", "[::1]:8080", "localhost:8080"} {
		if !isLoopback(addr) {
			t.Errorf("%s is loopback", addr)
		}
	}
	for _, addr := range []string{":8080", "0.0.0.0:8080", "[::]:8080", "10.0.0.1:8080", "localhost.evil.example:8080"} {
		if isLoopback(addr) {
			t.Errorf("%s is not loopback", addr)
		}
	}
}

// --insecure-loopback serves a local demo without a password, and its logs name no one.
func TestConsoleInsecureLoopbackServesWithoutAuthentication(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	log := &syncBuffer{}
	env := map[string]string{"DATABASE_URL": queuetest.URL(t), "CONSOLE_LISTEN_ADDR": addr}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"console", "--insecure-loopback"}, func(k string) string { return env[k] }, strings.NewReader(""), io.Discard, log)
	}()
	defer func() {
		cancel()
		if code := <-exited; code != exitOK {
			t.Errorf("exit %d\n%s", code, log.String())
		}
	}()
	queuetest.WaitFor(t, 20*time.Second, "the console to serve", func() bool { return strings.Contains(log.String(), "serving the console") })
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.SetBasicAuth("someone", "anything")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
	// The page's log line is written once its handler returns, which a client may see after
	// the page's first bytes.
	queuetest.WaitFor(t, 10*time.Second, "the page's log line", func() bool { return strings.Contains(log.String(), `"path":"/"`) })
	if !strings.Contains(log.String(), `"user":"-"`) || strings.Contains(log.String(), `"user":"someone"`) {
		t.Errorf("without authentication the log must name the user -:\n%s", log.String())
	}
}

// --help tells every setting with its default.
func TestConsoleHelpListsItsSettings(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	if code := run(context.Background(), []string{"console", "--help"}, func(string) string { return "" }, strings.NewReader(""), &out, io.Discard); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"DATABASE_URL (environment only; required, or DATABASE_URL_FILE)", "--console-listen-addr, CONSOLE_LISTEN_ADDR (default :8080)",
		"--console-web-config-file, CONSOLE_WEB_CONFIG_FILE (not set)", "--identifier-key-file, IDENTIFIER_KEY_FILE (not set)",
		"--evidence-retention, EVIDENCE_RETENTION (default 730d)", "--insecure-loopback"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, out.String())
		}
	}
}
