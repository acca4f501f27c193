package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

const (
	testAPIToken   = "api-token-5f1c2a"
	testKetchValue = "Bearer ketch-secret-77ab"
	testKetchSpace = "account_id"
)

var testKeys = worker.NewIdentifierKeys([]byte("identifier-key-new-0123456789abcdef0123"), []byte("identifier-key-old-0123456789abcdef0123"))

type doorBundle struct {
	url  string
	pool *pgxpool.Pool
	q    *queue.Queue
	logs *syncBuffer
}

// setupDoors serves both HTTP doors, with outcome webhooks on, over a fresh database.
func setupDoors(t *testing.T) *doorBundle {
	t.Helper()
	t.Parallel()
	pool := queuetest.Pool(t)
	b := &doorBundle{pool: pool, q: queue.New(pool), logs: &syncBuffer{}}
	env := map[string]string{
		"API_LISTEN_ADDR": "unused", "API_TOKEN": testAPIToken,
		"REPORT_WEBHOOK_URL": "http://127.0.0.1:1/outcomes", "REPORT_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		"KETCH_AUTH_HEADER": "Authorization", "KETCH_AUTH_VALUE": testKetchValue, "KETCH_IDENTITY_SPACE": testKetchSpace,
		"KETCH_CALLBACK_ALLOW": "ketch.invalid", // the fake's callbacks below: plain http to a name that never resolves
	}
	s := settings.New("run", func(k string) string { return env[k] }, io.Discard)
	read := declareDoors(s)
	if _, err := s.Parse(nil); err != nil {
		t.Fatal(err)
	}
	cfg := read()
	if s.Err() != nil {
		t.Fatal(s.Err())
	}
	h, _ := doorsHandler(cfg, testKeys, b.q, slog.New(slog.NewJSONHandler(b.logs, nil)), newDoorMetrics(nil))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	b.url = srv.URL
	return b
}

type answer struct {
	status int
	body   map[string]any
	raw    string
}

func (b *doorBundle) do(t *testing.T, method, path string, header map[string]string, body []byte) answer {
	t.Helper()
	req, err := http.NewRequest(method, b.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func (b *doorBundle) submit(t *testing.T, token, contentType, body string) answer {
	t.Helper()
	h := map[string]string{"Content-Type": contentType}
	if token != "" {
		h["Authorization"] = "Bearer " + token
	}
	return b.do(t, "POST", "/v1/erasure-requests", h, []byte(body))
}

func (b *doorBundle) stored(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM erasure_requests`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func errorField(a answer) (field, message string) {
	e, _ := a.body["error"].(map[string]any)
	field, _ = e["field"].(string)
	message, _ = e["message"].(string)
	return field, message
}

func TestTheAPIAnswersEveryBadInputAndStoresNothingOfIt(t *testing.T) {
	b := setupDoors(t)
	const js = "application/json"
	valid := `{"request_ref":"in-house-1","external_user_id":"person-1"}`
	cases := []struct {
		name        string
		token, ct   string
		body        string
		status      int
		field, text string
	}{
		{name: "no token", ct: js, body: valid, status: 401},
		{name: "wrong token", token: "nope", ct: js, body: valid, status: 401},
		{name: "token of another length", token: testAPIToken + "x", ct: js, body: valid, status: 401},
		{name: "not JSON", token: testAPIToken, ct: "text/plain", body: valid, status: 415},
		{name: "malformed JSON", token: testAPIToken, ct: js, body: `{"request_ref":`, status: 400},
		{name: "an array", token: testAPIToken, ct: js, body: `[` + valid + `]`, status: 400},
		{name: "no external_user_id", token: testAPIToken, ct: js, body: `{"request_ref":"r"}`, status: 400, field: "external_user_id"},
		{name: "blank external_user_id", token: testAPIToken, ct: js, body: `{"request_ref":"r","external_user_id":"  "}`, status: 400, field: "external_user_id"},
		{name: "no request_ref", token: testAPIToken, ct: js, body: `{"external_user_id":"p"}`, status: 400, field: "request_ref"},
		{name: "an unknown field", token: testAPIToken, ct: js, body: `{"request_ref":"r","external_user_id":"p","email":"x@y"}`, status: 400, field: "email"},
		{name: "a bad due_at", token: testAPIToken, ct: js, body: `{"request_ref":"r","external_user_id":"p","due_at":"tomorrow"}`, status: 400, field: "due_at"},
		{name: "a connector's prefix", token: testAPIToken, ct: js, body: `{"request_ref":"ketch:abc","external_user_id":"p"}`, status: 400, field: "request_ref"},
		{name: "over 64 KiB", token: testAPIToken, ct: js, body: `{"request_ref":"r","external_user_id":"` + strings.Repeat("a", 70<<10) + `"}`, status: 413},
	}
	for _, c := range cases {
		a := b.submit(t, c.token, c.ct, c.body)
		field, msg := errorField(a)
		if a.status != c.status || field != c.field || msg == "" {
			t.Errorf("%s: %d %s, want %d naming field %q", c.name, a.status, a.raw, c.status, c.field)
		}
		if strings.Contains(a.raw, "person-1") || strings.Contains(a.raw, testAPIToken) {
			t.Errorf("%s: the answer %s repeats the id or the token", c.name, a.raw)
		}
	}
	if n := b.stored(t); n != 0 {
		t.Fatalf("%d requests stored from bad input", n)
	}

	// The valid one, its repeat, and a reuse of its ref for someone else.
	if a := b.submit(t, testAPIToken, js, valid); a.status != 202 || a.body["status"] != "pending" || a.body["request_ref"] != "in-house-1" {
		t.Fatalf("a valid request: %d %s, want 202 pending", a.status, a.raw)
	}
	if a := b.submit(t, testAPIToken, "application/json; charset=utf-8", valid); a.status != 200 || a.body["status"] != "pending" {
		t.Fatalf("a repeat: %d %s, want 200 with the current state", a.status, a.raw)
	}
	a := b.submit(t, testAPIToken, js, `{"request_ref":"in-house-1","external_user_id":"person-2"}`)
	if field, _ := errorField(a); a.status != 409 || field != "request_ref" || strings.Contains(a.raw, "person") {
		t.Fatalf("a reuse with another id: %d %s, want 409 naming request_ref without either id", a.status, a.raw)
	}
	if n := b.stored(t); n != 1 {
		t.Fatalf("%d requests stored, want the valid one", n)
	}
	var reports int
	if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM erasure_reports WHERE connector = 'webhook' AND status = 'waiting'`).Scan(&reports); err != nil || reports != 1 {
		t.Fatalf("%d webhook reports waiting (%v), want the valid request's", reports, err)
	}

	// The look-up.
	get := func(token, ref string) answer {
		return b.do(t, "GET", "/v1/erasure-requests/"+ref, map[string]string{"Authorization": "Bearer " + token}, nil)
	}
	if a := get("nope", "in-house-1"); a.status != 401 {
		t.Fatalf("GET with a wrong token: %d", a.status)
	}
	if a := get(testAPIToken, "unknown"); a.status != 404 {
		t.Fatalf("GET of an unknown ref: %d %s", a.status, a.raw)
	}
	got := get(testAPIToken, "in-house-1")
	if got.status != 200 || got.body["status"] != "pending" || got.body["due_at"] == nil || got.body["calls"] == nil ||
		strings.Contains(got.raw, "person-1") {
		t.Fatalf("GET: %d %s, want the state without the id", got.status, got.raw)
	}
	if strings.Contains(b.logs.String(), "person-") || strings.Contains(b.logs.String(), testAPIToken) {
		t.Fatalf("the logs hold an id or the token:\n%s", b.logs.String())
	}
}

func TestTheAPILosesNothingValidBesideBadInput(t *testing.T) {
	b := setupDoors(t)
	const n = 60
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"request_ref":"mix-%d","external_user_id":"person-%d"}`, i, i)
			if a := b.submit(t, testAPIToken, "application/json", body); a.status != 202 {
				t.Errorf("valid request %d: %d %s", i, a.status, a.raw)
			}
			_ = b.submit(t, testAPIToken, "application/json", `{"request_ref":"bad-`+fmt.Sprint(i)+`","external_user_id":""}`)
			_ = b.submit(t, "", "application/json", body)
		})
	}
	wg.Wait()
	if got := b.stored(t); got != n {
		t.Fatalf("%d requests stored, want the %d valid ones", got, n)
	}
}

func TestTheKetchDoorSpeaksTheForwarderProtocol(t *testing.T) {
	b := setupDoors(t)
	fake := ketchfake.New(ketchfake.Options{CallbackBaseURL: "http://ketch.invalid", IdentitySpace: testKetchSpace})
	post := func(header string, body []byte) answer {
		h := map[string]string{"Content-Type": "application/json"}
		if header != "" {
			h["Authorization"] = header
		}
		return b.do(t, "POST", "/v1/ketch", h, body)
	}
	kindOf := func(a answer) string { k, _ := a.body["kind"].(string); return k }
	response := func(a answer) (status, reason, id string) {
		r, _ := a.body["response"].(map[string]any)
		status, _ = r["status"].(string)
		reason, _ = r["reason"].(string)
		id, _ = r["requestID"].(string)
		return
	}
	good := fake.DeleteRequest("3f0c8a52-8c1e-4a57-9d0c-2f3a1c9f5e01", "acct-1")

	if a := post("", good); a.status != 401 || kindOf(a) != "Error" {
		t.Fatalf("no credential: %d %s, want a 401 Ketch Error", a.status, a.raw)
	}
	if a := post("Bearer wrong", good); a.status != 401 || kindOf(a) != "Error" {
		t.Fatalf("a wrong credential: %d %s", a.status, a.raw)
	}
	if a := post(testKetchValue, []byte(`{"apiVersion":"dsr/v1",`)); a.status != 400 || kindOf(a) != "Error" {
		t.Fatalf("malformed: %d %s, want a 400 Ketch Error", a.status, a.raw)
	}
	if a := post(testKetchValue, fake.DeleteRequest("1b1f0e9e-0000-4000-8000-000000000001", "acct-2", ketchfake.Kind("AccessRequest"))); a.status != 400 || kindOf(a) != "Error" {
		t.Fatalf("another kind: %d %s, want a 400 Ketch Error", a.status, a.raw)
	}
	if a := post(testKetchValue, fake.DeleteRequest("1b1f0e9e-0000-4000-8000-000000000002", "acct-3", ketchfake.WithoutIdentity())); a.status != 200 {
		t.Fatalf("no identity: %d %s", a.status, a.raw)
	} else if st, reason, _ := response(a); kindOf(a) != "DeleteResponse" || st != "denied" || reason != "insufficient_identification" {
		t.Fatalf("no identity answered %s, want denied/insufficient_identification", a.raw)
	}
	if a := post(testKetchValue, append(good[:len(good)-1:len(good)-1], []byte(`,"pad":"`+strings.Repeat("x", 70<<10)+`"}`)...)); a.status != 413 || kindOf(a) != "Error" {
		t.Fatalf("over 64 KiB: %d %.200s", a.status, a.raw)
	}
	if n := b.stored(t); n != 0 {
		t.Fatalf("%d requests stored from refused Ketch requests", n)
	}

	a := post(testKetchValue, good)
	if st, _, id := response(a); a.status != 200 || st != "in_progress" || id == "" {
		t.Fatalf("a valid request: %d %s, want in_progress with our requestID", a.status, a.raw)
	}
	if again := post(testKetchValue, good); again.status != 200 {
		t.Fatalf("a repeat: %d %s", again.status, again.raw)
	} else if st, _, id := response(again); st != "in_progress" || id != func() string { _, _, id := response(a); return id }() {
		t.Fatalf("a repeat answered %s, want the same request", again.raw)
	}
	if a := post(testKetchValue, fake.DeleteRequest("3f0c8a52-8c1e-4a57-9d0c-2f3a1c9f5e01", "acct-9")); a.status != 409 || kindOf(a) != "Error" {
		t.Fatalf("a reused uid for another identity: %d %s, want a 409 Ketch Error", a.status, a.raw)
	}
	rec, err := b.q.Lookup(context.Background(), "ketch:3f0c8a52-8c1e-4a57-9d0c-2f3a1c9f5e01")
	if err != nil || rec.ExternalUserID != "acct-1" || len(rec.Reports) != 2 {
		t.Fatalf("stored %+v (%v), want acct-1 with a report per callback", rec, err)
	}
	// Nothing of the subject, and no other identity, is kept anywhere.
	var dump string
	if err := b.pool.QueryRow(context.Background(), `
SELECT (SELECT string_agg(r::text, ' ') FROM erasure_requests r) || (SELECT string_agg(p::text, ' ') FROM erasure_reports p)`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{"@example.invalid", "Main St", "Anytown", "Subject-"} {
		if strings.Contains(dump, leak) {
			t.Fatalf("the database keeps the subject (%q): %s", leak, dump)
		}
	}
	if strings.Contains(b.logs.String(), "acct-") || strings.Contains(b.logs.String(), "ketch-secret") {
		t.Fatalf("the logs hold an identity or the credential:\n%s", b.logs.String())
	}
}

func TestARepeatOfARequestWhoseIDWasPseudonymisedIsStillARepeat(t *testing.T) {
	b := setupDoors(t)
	const js = "application/json"
	if a := b.submit(t, testAPIToken, js, `{"request_ref":"old-1","external_user_id":"person-1"}`); a.status != 202 {
		t.Fatalf("submit: %d %s", a.status, a.raw)
	}
	// The request finished long ago and its id was pseudonymised, under the key now second.
	old := worker.NewIdentifierKeys([]byte("identifier-key-old-0123456789abcdef0123")).Pseudonym("person-1")
	if _, err := b.pool.Exec(context.Background(), `UPDATE erasure_requests SET status = 'succeeded', outcome = 'deleted',
		completed_at = now(), external_user_id = $1, pseudonymised_at = now() WHERE request_ref = 'old-1'`, old); err != nil {
		t.Fatal(err)
	}
	if a := b.submit(t, testAPIToken, js, `{"request_ref":"old-1","external_user_id":"person-1"}`); a.status != 200 || a.body["status"] != "succeeded" {
		t.Fatalf("a repeat after pseudonymisation: %d %s, want 200 with the state", a.status, a.raw)
	}
	if a := b.submit(t, testAPIToken, js, `{"request_ref":"old-1","external_user_id":"person-2"}`); a.status != 409 {
		t.Fatalf("another id for that ref after pseudonymisation: %d %s, want 409", a.status, a.raw)
	}
}
