// Package connectortest is the conformance suite that every connector passes with its fake, as
// River's riverdrivertest is for its drivers: a connector that passes it is done on the wire.
//
// The suite runs the connector as `run` does (its settings, its door or puller, its deliverer)
// against a real PostgreSQL (queue/queuetest) and the connector's fake, and checks what a user
// relies on: the door authenticates before it reads a body; a bad input is answered naming its
// field, and nothing of it is stored; intake is idempotent (a repeat is 200, the same id for
// another person 409); every outcome reaches the receiver exactly once as the receiver counts
// it, through 5xx, 429 with Retry-After, timeouts and lost answers, and no sooner than a
// Retry-After allows; a delivered report keeps no credential; and no secret, credential or
// external_user_id is ever in a log line.
package connectortest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Fake is a connector's fake privacy request system, as the suite drives it.
type Fake interface {
	http.Handler
	// Settings are the connector's settings that turn it on against the fake serving at url.
	Settings(url string) map[string]string
	// SetFaults makes the receiver answer reports with these shares of faults.
	SetFaults(Faults)
	// Finals is how many final outcomes the receiver counted for each request it knows, by the
	// request's id (connector.Request.ID), and how it counts them: a repeat it recognises as one
	// (a webhook-id seen before) is not counted again.
	Finals() map[string]int
	// Secrets are the credentials in play: ours in Settings, and those the requests carry.
	Secrets() []string
}

// Faults are the shares of reports a receiver answers with a fault.
type Faults struct {
	ErrorRate      float64       // 5xx
	RateLimitRate  float64       // 429 with RetryAfter
	RetryAfter     time.Duration // whole seconds
	HangRate       float64       // no answer until the sender gives up
	LostAnswerRate float64       // taken, then the connection dropped without an answer
}

// Pusher is the fake of a system that pushes requests to the connector's door.
type Pusher interface {
	Fake
	// Request submits the request id for the person user to the door at base.
	Request(base, id, user string) *http.Request
	// Unauthenticated is that request with a missing or wrong credential.
	Unauthenticated(base, id, user string) *http.Request
	// BadInputs are requests that the door must refuse, each for one field.
	BadInputs(base string) []BadInput
	// Field reads the field a refusal names.
	Field(status int, body []byte) string
	// Accepted is the status of a request taken for the first time (202, or 200 where the wire has no 202).
	Accepted() int
}

// Untold is a Fake whose system is never told of some outcomes: Fides has no failure callback.
// Unreported says which outcomes (deleted, not_found, rejected). Their reports must end failed
// with a reason, for the operator to see, and the receiver must count none of them.
type Untold interface {
	Unreported(outcome string) bool
}

// Puller is the fake of a system the connector pulls requests from.
type Puller interface {
	Fake
	// AddPending makes the request id for the person user pending at the system.
	AddPending(id, user string)
	// BadPending are pending requests the connector must leave pending, each for one field.
	BadPending() []BadInput
}

// BadInput is one input that must be refused for Field.
type BadInput struct {
	Name    string
	Field   string
	Request *http.Request // Pusher
	Add     func()        // Puller: makes it pending
}

// Run runs the suite against c and its fake.
func Run(t *testing.T, c connector.Connector, fake Fake) {
	t.Helper()
	t.Run("Door", func(t *testing.T) {
		p, ok := fake.(Pusher)
		if !ok {
			t.Skip("the connector has no door")
		}
		h := newHarness(t, c, fake)
		if h.parts.Door == nil {
			t.Fatal("a Pusher's settings did not turn the door on")
		}
		t.Run("AuthenticatesBeforeReadingTheBody", func(t *testing.T) { h.authenticatesFirst(t, p) })
		t.Run("RefusesBadInputNamingTheFieldAndStoresNothing", func(t *testing.T) { h.refusesBadInput(t, p) })
		t.Run("IntakeIsIdempotent", func(t *testing.T) { h.idempotent(t, p) })
		h.noSecretsLogged(t)
	})
	t.Run("Pull", func(t *testing.T) {
		p, ok := fake.(Puller)
		if !ok {
			t.Skip("the connector does not pull")
		}
		h := newHarness(t, c, fake)
		if h.parts.Puller == nil {
			t.Fatal("a Puller's settings did not turn the puller on")
		}
		h.pullLeavesBadInputAndIsIdempotent(t, p)
		h.noSecretsLogged(t)
	})
	t.Run("DeliversEveryOutcomeExactlyOnce", func(t *testing.T) {
		h := newHarness(t, c, fake)
		// A deliverer has no logger: what it might log goes to the default one.
		defer slog.SetDefault(slog.Default())
		slog.SetDefault(h.log)
		if h.parts.Deliverer == nil {
			t.Fatal("the settings did not turn the reports on")
		}
		h.deliversExactlyOnce(t)
		h.noSecretsLogged(t)
	})
}

type harness struct {
	c     connector.Connector
	info  connector.Info
	fake  Fake
	parts *connector.Parts
	q     *queue.Queue
	pool  *pgxpool.Pool
	in    connector.Intake
	// refusals counts what the door said it refused (Intake.Refused), by door and reason.
	refusals *prometheus.CounterVec
	door     string // the door's URL
	logs     *syncBuffer
	log      *slog.Logger
	ctx      context.Context
	users    []string // external_user_ids used: none may be logged
	mu       sync.Mutex
}

func newHarness(t *testing.T, c connector.Connector, fake Fake) *harness {
	t.Helper()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	env := fake.Settings(srv.URL)
	s := settings.New("run", func(k string) string { return env[k] }, io.Discard)
	read := c.Declare(s)
	if _, err := s.Parse(nil); err != nil {
		t.Fatal(err)
	}
	parts := read()
	if s.Err() != nil {
		t.Fatalf("the fake's settings: %v", s.Err())
	}
	if parts == nil {
		t.Fatal("the fake's settings leave the connector off")
	}
	pool := queuetest.Pool(t)
	h := &harness{c: c, info: c.Info(), fake: fake, parts: parts, q: queue.New(pool), pool: pool,
		logs: &syncBuffer{}, ctx: context.Background()}
	h.log = slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.refusals = worker.NewRefusalMetric(nil)
	h.in = worker.NewIntake(h.q, worker.IntakeConfig{Info: h.info, Prefixes: []string{h.info.RefPrefix, "other:"},
		Refusals: h.refusals, Logger: h.log})
	if parts.Door != nil {
		mux := http.NewServeMux()
		for pattern, handler := range parts.Door.Routes(h.in, h.log) {
			mux.Handle(pattern, handler)
		}
		door := httptest.NewServer(mux)
		t.Cleanup(door.Close)
		h.door = door.URL
	}
	return h
}

// refused is how many refusals of reason the connector has said; every reason when "".
func (h *harness) refused(reason connector.Refusal) float64 {
	var n float64
	for _, r := range connector.Refusals {
		if reason == "" || r == reason {
			n += testutil.ToFloat64(h.refusals.WithLabelValues(h.info.DoorName(), string(r)))
		}
	}
	return n
}

// user is a new external_user_id that looks like what it stands for: personal data.
func (h *harness) user(i int) string {
	u := fmt.Sprintf("person-%d-%d@example.com", time.Now().UnixNano()%1e9, i)
	h.mu.Lock()
	h.users = append(h.users, u)
	h.mu.Unlock()
	return u
}

func (h *harness) stored(t *testing.T) int {
	t.Helper()
	var n int
	if err := h.pool.QueryRow(h.ctx, `SELECT count(*) FROM erasure_requests`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func send(t *testing.T, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// authenticatesFirst sends a request without its credential whose body never comes: a door
// that reads the body before it checks the credential never answers.
func (h *harness) authenticatesFirst(t *testing.T, p Pusher) {
	req := p.Unauthenticated(h.door, "auth-first", h.user(0))
	conn, err := net.Dial("tcp", req.URL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var head bytes.Buffer
	fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 60000\r\n", req.Method, req.URL.RequestURI(), req.URL.Host)
	for k, vs := range req.Header {
		for _, v := range vs {
			fmt.Fprintf(&head, "%s: %s\r\n", k, v)
		}
	}
	head.WriteString("\r\n{")
	if _, err := conn.Write(head.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatalf("no answer to a request without its credential whose body never came (%v): the door reads the body before it authenticates", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a request without its credential: %d, want 401 or 403", resp.StatusCode)
	}
	before := h.refused(connector.RefusedUnauthenticated)
	status, _ := send(t, p.Unauthenticated(h.door, "auth-first", h.user(1)))
	if status != http.StatusUnauthorized && status != http.StatusForbidden {
		t.Fatalf("a request without its credential: %d, want 401 or 403", status)
	}
	if h.refused(connector.RefusedUnauthenticated) != before+1 {
		t.Fatal("the door did not say it refused a request without its credential (Intake.Refused)")
	}
	if n := h.stored(t); n != 0 {
		t.Fatalf("%d requests stored from unauthenticated requests", n)
	}
}

func (h *harness) refusesBadInput(t *testing.T, p Pusher) {
	before := h.stored(t)
	for _, bad := range p.BadInputs(h.door) {
		said := h.refused("")
		status, body := send(t, bad.Request)
		if h.refused("") != said+1 {
			t.Errorf("%s: the door did not say it refused it, once (Intake.Refused)", bad.Name)
		}
		if status < 400 || status > 499 {
			t.Errorf("%s: answered %d, want a 4xx naming %s", bad.Name, status, bad.Field)
			continue
		}
		if got := p.Field(status, body); got != bad.Field {
			t.Errorf("%s: the refusal names %q, want %q (%s)", bad.Name, got, bad.Field, body)
		}
		if n := h.stored(t); n != before {
			t.Fatalf("%s: refused, yet %d requests stored", bad.Name, n-before)
		}
	}
}

func (h *harness) idempotent(t *testing.T, p Pusher) {
	before := h.stored(t)
	user, other := h.user(10), h.user(11)
	if status, body := send(t, p.Request(h.door, "repeat-1", user)); status != p.Accepted() {
		t.Fatalf("a new request: %d %s, want %d", status, body, p.Accepted())
	}
	if status, body := send(t, p.Request(h.door, "repeat-1", user)); status != http.StatusOK {
		t.Fatalf("its repeat: %d %s, want 200", status, body)
	}
	if status, body := send(t, p.Request(h.door, "repeat-1", other)); status != http.StatusConflict {
		t.Fatalf("its id for another person: %d %s, want 409", status, body)
	}
	if h.refused(connector.RefusedConflict) != 1 {
		t.Error("the conflict was not counted as a refusal")
	}
	if n := h.stored(t) - before; n != 1 {
		t.Fatalf("%d requests stored from one request, its repeat and a conflict", n)
	}
	rec, err := h.q.Lookup(h.ctx, h.info.RefPrefix+"repeat-1")
	if err != nil || rec.ExternalUserID != user {
		t.Fatalf("the stored request is not the first one (%v)", err)
	}
}

func (h *harness) pullLeavesBadInputAndIsIdempotent(t *testing.T, p Puller) {
	bads := p.BadPending()
	for _, bad := range bads {
		bad.Add()
	}
	user := h.user(20)
	p.AddPending("pulled-1", user)
	for range 2 {
		if err := h.parts.Puller.Pull(h.ctx, h.in, h.log); err != nil {
			t.Fatal(err)
		}
	}
	if n := h.stored(t); n != 1 {
		t.Fatalf("%d requests stored from one valid pending request pulled twice beside %d bad ones", n, len(bads))
	}
	if _, err := h.in.Lookup(h.ctx, h.pulledID("pulled-1")); err != nil {
		t.Fatalf("the valid pending request: %v", err)
	}
	logs := h.logs.String()
	for _, bad := range bads {
		if !strings.Contains(logs, bad.Field) {
			t.Errorf("%s: no log line names %s", bad.Name, bad.Field)
		}
	}
	// Each pull sees every bad item again, and says so each time.
	if got, want := h.refused(""), float64(2*len(bads)); got != want {
		t.Errorf("%v refusals said over two pulls of %d bad items, want %v", got, len(bads), want)
	}
}

// deliversExactlyOnce finishes requests with every outcome and delivers their reports through
// a receiver that fails, limits, hangs and loses answers.
func (h *harness) deliversExactlyOnce(t *testing.T) {
	const n = 30
	ids := make([]string, n)
	switch p := h.fake.(type) {
	case Pusher:
		for i := range ids {
			ids[i] = fmt.Sprintf("out-%d", i)
			if status, body := send(t, p.Request(h.door, ids[i], h.user(100+i))); status != p.Accepted() {
				t.Fatalf("request %d: %d %s", i, status, body)
			}
		}
	case Puller:
		for i := range ids {
			ids[i] = fmt.Sprintf("out-%d", i)
			p.AddPending(ids[i], h.user(100+i))
		}
		if err := h.parts.Puller.Pull(h.ctx, h.in, h.log); err != nil {
			t.Fatal(err)
		}
	}
	// Their request_refs, as the receiver's ids are stored.
	var refs []string
	for _, id := range ids {
		rec, err := h.in.Lookup(h.ctx, h.pulledID(id))
		if err != nil {
			t.Fatalf("request %s was not stored: %v", id, err)
		}
		refs = append(refs, rec.RequestRef)
	}
	h.finish(t, h.stored(t))
	// The outcomes whose reports end failed, never told.
	untold := []string{}
	if u, ok := h.fake.(Untold); ok {
		for _, o := range []string{queue.OutcomeDeleted, queue.OutcomeNotFound, queue.OutcomeRejected} {
			if u.Unreported(o) {
				untold = append(untold, o)
			}
		}
	}

	const retryAfter = time.Second
	h.fake.SetFaults(Faults{ErrorRate: 0.15, RateLimitRate: 0.15, RetryAfter: retryAfter, HangRate: 0.05, LostAnswerRate: 0.15})
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	rep := worker.NewReporter(h.q, worker.ReporterConfig{
		ID: "conformance", Deliverers: map[string]connector.Deliverer{h.info.Name: h.parts.Deliverer},
		PollInterval: 20 * time.Millisecond, Timeout: 500 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: h.log,
	})
	done := make(chan struct{})
	go func() { rep.Run(ctx); close(done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var open int
		var last string
		_ = h.pool.QueryRow(h.ctx, `
SELECT count(*), coalesce(max(rep.status || ' ' || coalesce(rep.last_result, '') || ' ' || coalesce(rep.last_error, '')), '')
FROM erasure_reports rep JOIN erasure_requests r ON r.id = rep.request_id
WHERE NOT (rep.status = 'delivered' OR (rep.status = 'failed' AND r.outcome = ANY($1) AND rep.last_error <> ''))`,
			untold).Scan(&open, &last)
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reports undelivered after 60s; one: %s", open, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done

	finals := h.fake.Finals()
	recs, err := h.q.LookupRefs(h.ctx, refs)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		want := 1
		if slices.Contains(untold, recs[refs[i]].Outcome) {
			want = 0
		}
		if got := finals[id]; got != want {
			t.Errorf("request %s (%s, %s): the receiver counted %d final outcomes, want exactly %d", id, refs[i], recs[refs[i]].Outcome, got, want)
		}
	}
	h.noEarlyRetries(t, retryAfter)
	h.noCredentialsLeft(t)
}

// pulledID is how a pulled request's id is looked up: the fake's id may be qualified by the
// connector (with its data silo, say).
func (h *harness) pulledID(id string) string {
	if q, ok := h.fake.(interface{ StoredID(string) string }); ok {
		return q.StoredID(id)
	}
	return id
}

// finish carries out the n stored requests: deleted, not found at Knot, and refused.
func (h *harness) finish(t *testing.T, n int) {
	t.Helper()
	jobs, err := h.q.Claim(h.ctx, "conformance", n, time.Minute)
	if err != nil || len(jobs) != n {
		t.Fatalf("claim: %d of %d, %v", len(jobs), n, err)
	}
	results := make([]queue.Result, n)
	for i, j := range jobs {
		results[i] = j.Result()
		switch i % 3 {
		case 0:
			results[i].Transition, results[i].Outcome = queue.Succeed, queue.OutcomeDeleted
		case 1:
			results[i].Transition, results[i].Outcome = queue.Succeed, queue.OutcomeNotFound
		default:
			results[i].Transition, results[i].Outcome, results[i].ErrorCode = queue.Fail, queue.OutcomeRejected, "NO_ACCESS"
		}
	}
	if _, err := h.q.Finish(h.ctx, "conformance", results); err != nil {
		t.Fatal(err)
	}
}

// noEarlyRetries checks that no report was sent again before its receiver's Retry-After.
func (h *harness) noEarlyRetries(t *testing.T, retryAfter time.Duration) {
	t.Helper()
	var early, limited int
	err := h.pool.QueryRow(h.ctx, `
SELECT count(*) FILTER (WHERE next_at < attempted_at + duration_ms * interval '1 millisecond' + $1 * interval '1 millisecond'),
       count(*)
FROM (SELECT result, attempted_at, duration_ms,
             lead(attempted_at) OVER (PARTITION BY report_id ORDER BY attempted_at) AS next_at
      FROM erasure_report_attempts) a
WHERE result = 'rate_limited' AND next_at IS NOT NULL`, retryAfter.Milliseconds()).Scan(&early, &limited)
	if err != nil {
		t.Fatal(err)
	}
	if limited == 0 {
		t.Error("the receiver limited no report: the fault never ran")
	}
	if early > 0 {
		t.Errorf("%d of %d reports told to wait %s were sent again sooner", early, limited, retryAfter)
	}
}

// noCredentialsLeft checks that no credential of a delivered report is left in the database.
func (h *harness) noCredentialsLeft(t *testing.T) {
	t.Helper()
	var kept int
	if err := h.pool.QueryRow(h.ctx, `SELECT count(*) FROM erasure_reports WHERE status = 'delivered' AND credentials IS NOT NULL`).Scan(&kept); err != nil {
		t.Fatal(err)
	}
	if kept > 0 {
		t.Errorf("%d delivered reports keep their credentials", kept)
	}
	// A failed report keeps its credentials for `reports requeue`; only an Untold connector's
	// reports may end failed here.
	for _, secret := range h.fake.Secrets() {
		var n int
		err := h.pool.QueryRow(h.ctx, `
SELECT (SELECT count(*) FROM erasure_reports
        WHERE strpos(CASE WHEN status = 'delivered' THEN coalesce(credentials::text, '') ELSE '' END || coalesce(last_error, ''), $1) > 0)
     + (SELECT count(*) FROM erasure_report_attempts WHERE strpos(coalesce(error, ''), $1) > 0)`, secret).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			t.Errorf("a credential is in %d rows' errors, or kept by a delivered report", n)
		}
	}
}

// noSecretsLogged checks every log line of the subtest for the fake's secrets and the people's
// ids.
func (h *harness) noSecretsLogged(t *testing.T) {
	t.Helper()
	logs := h.logs.String()
	if logs == "" {
		return
	}
	for _, s := range h.fake.Secrets() {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("a secret or credential is in the logs")
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, u := range h.users {
		if strings.Contains(logs, u) {
			t.Errorf("an external_user_id is in the logs")
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
