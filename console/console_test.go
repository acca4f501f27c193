package console_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/console"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/jackc/pgx/v5/pgxpool"
)

func setup(t *testing.T) *console.Console {
	t.Helper()
	c, err := console.New(console.Config{Queue: queue.New(queuetest.Pool(t)),
		Doors: []console.Door{{Name: "ketch", Connector: "ketch", Prefix: "ketch:"}, {Name: "api", Connector: "webhook"}}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// bare returns a console with no doors over a database of its own, and its pool and queue.
func bare(t *testing.T) (*pgxpool.Pool, *queue.Queue, *console.Console) {
	t.Helper()
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	c, err := console.New(console.Config{Queue: q})
	if err != nil {
		t.Fatal(err)
	}
	return pool, q, c
}

func serve(c *console.Console, method, target string, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	w := httptest.NewRecorder()
	c.ServeHTTP(w, req)
	return w
}

func TestMethodsHeadersAndAnEmptyDatabase(t *testing.T) {
	t.Parallel()
	c := setup(t)
	for _, tc := range []struct {
		method, target string
		want           int
		allow          string
	}{
		{http.MethodGet, "/", http.StatusOK, ""},
		{http.MethodHead, "/", http.StatusOK, ""},
		{http.MethodGet, "/requests?status=failed&due=overdue", http.StatusOK, ""},
		{http.MethodGet, "/requests?status=gone", http.StatusBadRequest, ""},
		{http.MethodGet, "/requests?after=abc", http.StatusBadRequest, ""},
		{http.MethodGet, "/requests?source=nowhere", http.StatusBadRequest, ""},
		{http.MethodGet, "/style.css", http.StatusOK, ""},
		{http.MethodGet, "/nowhere", http.StatusNotFound, ""},
		{http.MethodGet, "/requests/", http.StatusNotFound, ""},
		{http.MethodPost, "/requests", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodPut, "/people", http.StatusMethodNotAllowed, "GET, HEAD, POST"},
		{http.MethodDelete, "/", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodOptions, "/", http.StatusMethodNotAllowed, "GET, HEAD"},
	} {
		w := serve(c, tc.method, tc.target, "")
		if w.Code != tc.want {
			t.Errorf("%s %s: %d, want %d\n%s", tc.method, tc.target, w.Code, tc.want, w.Body)
		}
		if got := w.Header().Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.target, got, tc.allow)
		}
		for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"} {
			if w.Header().Get(h) == "" {
				t.Errorf("%s %s: no %s", tc.method, tc.target, h)
			}
		}
		if tc.method == http.MethodHead && w.Body.Len() != 0 {
			t.Errorf("HEAD %s sent a body", tc.target)
		}
	}
	body := serve(c, http.MethodGet, "/", "").Body.String()
	if !strings.Contains(body, "no worker has run against this database yet") {
		t.Errorf("an empty database's rate limit is not said to be unknown:\n%s", body)
	}
	if !strings.Contains(body, "No request is waiting to be claimed.") || strings.Contains(body, "Oldest pending request") {
		t.Errorf("an empty queue is not said to have nothing waiting:\n%s", body)
	}
}

// An id in a URL reaches histories and logs: GET /people shows the empty form whatever its
// query says, and a look-up without keys says what it cannot find.
func TestPeopleNeverTakesTheIDFromAURL(t *testing.T) {
	t.Parallel()
	c := setup(t)
	w := serve(c, http.MethodGet, "/people?external_user_id=secret-person-77", "")
	if w.Code != http.StatusOK || strings.Contains(w.Body.String(), "secret-person-77") || strings.Contains(w.Body.String(), "Requests found") {
		t.Errorf("GET /people with a query: %d\n%s", w.Code, w.Body)
	}
	w = serve(c, http.MethodPost, "/people", url.Values{"external_user_id": {"secret-person-77"}}.Encode())
	body := w.Body.String()
	if w.Code != http.StatusOK || strings.Contains(body, "secret-person-77") || !strings.Contains(body, "No request for this id") ||
		!strings.Contains(body, "No IDENTIFIER_KEY_FILE is set") {
		t.Errorf("POST /people: %d\n%s", w.Code, body)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("POST /people: Cache-Control %q", w.Header().Get("Cache-Control"))
	}
	if w := serve(c, http.MethodPost, "/people", "external_user_id=%20"); w.Code != http.StatusBadRequest {
		t.Errorf("a blank id: %d, want 400", w.Code)
	}
}

// A page filtered by source that found less than a page in its window of ids says so and links
// past the window; the page after it finds the older request.
func TestASourcePageLinksPastItsWindow(t *testing.T) {
	t.Parallel()
	pool := queuetest.Pool(t)
	if _, err := pool.Exec(t.Context(), `INSERT INTO erasure_requests (id, request_ref, external_user_id) OVERRIDING SYSTEM VALUE
	    VALUES (1, 'ketch:old', 'u'), (500000, 'ketch:new', 'u')`); err != nil {
		t.Fatal(err)
	}
	c, err := console.New(console.Config{Queue: queue.New(pool), Doors: []console.Door{{Name: "ketch", Connector: "ketch", Prefix: "ketch:"}}})
	if err != nil {
		t.Fatal(err)
	}
	body := serve(c, http.MethodGet, "/requests?source=ketch", "").Body.String()
	if !strings.Contains(body, "ketch:new") || strings.Contains(body, "ketch:old") || !strings.Contains(body, "down to id 300001") ||
		!strings.Contains(body, `href="/requests?after=300001&amp;source=ketch" rel="next"`) {
		t.Fatalf("the first page:\n%s", body)
	}
	body = serve(c, http.MethodGet, "/requests?after=300001&source=ketch", "").Body.String()
	if !strings.Contains(body, "None matches") || !strings.Contains(body, "after=100001") {
		t.Fatalf("the second page:\n%s", body)
	}
	body = serve(c, http.MethodGet, "/requests?after=100001&source=ketch", "").Body.String()
	if !strings.Contains(body, "ketch:old") || !strings.Contains(body, "No older requests") {
		t.Fatalf("the third page:\n%s", body)
	}
}

// The overview names the live replicas that paused on Knot's rejection of their credentials,
// and says how many do not tell (a release before the heartbeat told it).
func TestTheOverviewSaysWhichReplicasArePaused(t *testing.T) {
	t.Parallel()
	pool, q, c := bare(t)
	beat := func(id string, paused bool) {
		t.Helper()
		if _, err := q.Beat(t.Context(), queue.Heartbeat{ID: id, Busy: true, CeilingRPS: 10, TTL: time.Minute, IdleWeight: 0.01, Paused: paused}); err != nil {
			t.Fatal(err)
		}
	}
	beat("replica-a", false)
	if body := serve(c, http.MethodGet, "/", "").Body.String(); !strings.Contains(body, "<dt>Paused on rejected Knot credentials</dt><dd>no</dd>") {
		t.Errorf("one working replica: the overview does not say none is paused:\n%s", body)
	}
	beat("replica-b", true)
	if _, err := pool.Exec(t.Context(), `INSERT INTO erasure_workers (id, busy, share_rps, expires_at, ceiling_rps) VALUES ('replica-old', true, 1, now() + interval '1 minute', 10)`); err != nil {
		t.Fatal(err)
	}
	body := serve(c, http.MethodGet, "/", "").Body.String()
	for _, want := range []string{"yes: 1 of 3 live replicas (<code>replica-b</code>)", "not told by 1 live replica of an earlier release"} {
		if !strings.Contains(body, want) {
			t.Errorf("the overview does not say %q:\n%s", want, body)
		}
	}
}

// The rate used is the calls recorded in the last minute against the deployment's limit; a
// limit lowered after 429s is said to be lowered, and a hold after a 429 to hold.
func TestTheOverviewShowsTheRateUsedAgainstTheLimit(t *testing.T) {
	t.Parallel()
	pool, q, c := bare(t)
	if _, err := q.Beat(t.Context(), queue.Heartbeat{ID: "replica-a", Busy: true, CeilingRPS: 2, TTL: time.Minute, IdleWeight: 0.01}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), `
INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ('r', 'u');
INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, result)
SELECT (SELECT id FROM erasure_requests), n, 'w', now() - n * interval '1 second', 100, 200, 'deleted' FROM generate_series(1, 30) AS n;
UPDATE erasure_rate_limit SET current_rps = 1, burst = 3, hold_until = now() + interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	body := serve(c, http.MethodGet, "/", "").Body.String()
	for _, want := range []string{"0.5 over the last minute (calls recorded: 30), 25% of the deployment's limit of 2</dd>",
		"<dt>Limit in force, calls a second</dt><dd>1 <span class=\"bad\">(lowered after Knot answered 429", "stop)</span>, burst 3</dd>",
		"<dt>Held after a 429</dt><dd><span class=\"bad\">yes, no call to Knot until"} {
		if !strings.Contains(body, want) {
			t.Errorf("the overview does not say %q:\n%s", want, body)
		}
	}
}
