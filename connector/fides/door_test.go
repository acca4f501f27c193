package fides_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/fides"
	"github.com/erasure-worker/erasure-worker/connector/fides/fidesfake"
	"github.com/erasure-worker/erasure-worker/settings"
)

const testToken = "fides-door-token-8c2a"

// memIntake stores requests in memory, as intake would, without a database.
type memIntake struct {
	mu      sync.Mutex
	reqs    map[string]connector.Request
	records map[string]connector.Record
	refused []connector.Refusal
}

func (m *memIntake) Submit(_ context.Context, reqs ...connector.Request) ([]connector.Admitted, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []connector.Admitted
	for _, r := range reqs {
		old, seen := m.reqs[r.ID]
		switch {
		case !seen:
			m.reqs[r.ID] = r
			m.records[r.ID] = connector.Record{RequestRef: "fides:" + r.ID, Status: "pending"}
			out = append(out, connector.Admitted{Admission: connector.Inserted})
		case old.ExternalUserID != r.ExternalUserID:
			out = append(out, connector.Admitted{Admission: connector.Conflict})
		default:
			out = append(out, connector.Admitted{Admission: connector.Duplicate})
		}
	}
	return out, nil
}

func (m *memIntake) Lookup(_ context.Context, id string) (connector.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.records[id]
	if !ok {
		return rec, connector.ErrNotFound
	}
	return rec, nil
}

func (m *memIntake) Refused(r connector.Refusal, _ string) {
	m.mu.Lock()
	m.refused = append(m.refused, r)
	m.mu.Unlock()
}

func (m *memIntake) Denied(_ context.Context, _ string, r connector.Refusal, field string) error {
	m.Refused(r, field)
	return nil
}

// testBundle is a configured connector: its door served over HTTP, its deliverer, and a fake
// Fides both sending to the door and taking callbacks.
type testBundle struct {
	fake  *fidesfake.Server
	fides *httptest.Server // the fake, as FIDES_URL
	door  string
	in    *memIntake
	parts *connector.Parts
}

func setup(t *testing.T, delay string, opts fidesfake.Options) *testBundle {
	t.Helper()
	b := &testBundle{fake: fidesfake.New(opts), in: &memIntake{reqs: map[string]connector.Request{}, records: map[string]connector.Record{}}}
	b.fides = httptest.NewServer(b.fake)
	t.Cleanup(b.fides.Close)
	parts, err := configure(map[string]string{"FIDES_AUTH_TOKEN": testToken, "FIDES_URL": b.fides.URL + "/", "FIDES_CALLBACK_DELAY": delay})
	if err != nil {
		t.Fatal(err)
	}
	b.parts = parts
	mux := http.NewServeMux()
	for pattern, h := range parts.Door.Routes(b.in, slog.New(slog.DiscardHandler)) {
		mux.Handle(pattern, h)
	}
	door := httptest.NewServer(mux)
	t.Cleanup(door.Close)
	b.door = door.URL
	return b
}

func configure(env map[string]string) (*connector.Parts, error) {
	s := settings.New("run", func(k string) string { return env[k] }, io.Discard)
	read := fides.Connector{}.Declare(s)
	if _, err := s.Parse(nil); err != nil {
		return nil, err
	}
	parts := read()
	return parts, s.Err()
}

// push sends the privacy request id for user to the door as Fides would, and returns the answer.
func (b *testBundle) push(t *testing.T, id, user string, opts ...fidesfake.RequestOption) (int, string) {
	t.Helper()
	req, err := b.fake.ErasureRequest(b.door+"/v1/fides/erasures", testToken, id, user, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	return resp.StatusCode, string(body)
}

// report is the report intake would store for id, as the reporter hands it over.
func (b *testBundle) report(t *testing.T, id, outcome string) connector.Report {
	t.Helper()
	b.in.mu.Lock()
	defer b.in.mu.Unlock()
	r := b.in.reqs[id]
	if len(r.Reports) != 1 {
		t.Fatalf("request %s has %d reports, want 1", id, len(r.Reports))
	}
	return connector.Report{ID: 1, RequestRef: "fides:" + id, ExternalUserID: r.ExternalUserID, Outcome: outcome,
		Credentials: r.Reports[0].Credentials, CompletedAt: time.Now()}
}

func TestTheDoorTakesFidesRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, "45s", fidesfake.Options{})

	status, body := b.push(t, "pri_1", "person-1@example.com")
	if status != http.StatusAccepted || strings.TrimSpace(body) != `{"correlation_id":"pri_1"}` {
		t.Fatalf("a new request: %d %s, want 202 with the privacy request id as correlation_id", status, body)
	}
	if status, body = b.push(t, "pri_1", "person-1@example.com"); status != http.StatusOK || !strings.Contains(body, `"pri_1"`) {
		t.Fatalf("its repeat: %d %s, want 200 with the same correlation_id", status, body)
	}
	if status, body = b.push(t, "pri_1", "person-2@example.com"); status != http.StatusConflict || !strings.Contains(body, `"field":"privacy_request_id"`) {
		t.Fatalf("its id for another person: %d %s, want 409 naming privacy_request_id", status, body)
	}
	r := b.in.reqs["pri_1"]
	if r.ExternalUserID != "person-1@example.com" || len(r.Reports) != 1 || r.Reports[0].Hold != 45*time.Second {
		t.Fatalf("stored %v with %d reports, want the first person and one report held FIDES_CALLBACK_DELAY", r.ExternalUserID, len(r.Reports))
	}
	var creds map[string]any
	_ = json.Unmarshal(r.Reports[0].Credentials, &creds)
	task, _ := b.fake.Task("pri_1")
	if creds["reply_to"] != fidesfake.CallbackPath || creds["token"] != task.Token {
		t.Errorf("the report keeps %v, want the reply-to path and token Fides sent", creds)
	}

	// A SaaS config with the polling strategy sends no reply-to headers: nothing to call back.
	if status, _ = b.push(t, "pri_2", "person-3@example.com", fidesfake.Polling()); status != http.StatusAccepted {
		t.Fatalf("a polled request: %d", status)
	}
	if n := len(b.in.reqs["pri_2"].Reports); n != 0 {
		t.Errorf("a polled request got %d reports, want none", n)
	}
}

func TestTheDoorRefusesWithoutTheBearerToken(t *testing.T) {
	t.Parallel()
	b := setup(t, "30s", fidesfake.Options{})
	for _, auth := range []string{"", "wrong", testToken + "x"} {
		req, _ := b.fake.ErasureRequest(b.door+"/v1/fides/erasures", auth, "pri_x", "person@example.com")
		if status, body := do(t, req); status != http.StatusUnauthorized || strings.Contains(body, testToken) {
			t.Errorf("bearer %q: %d %s, want 401", auth, status, body)
		}
		req, _ = http.NewRequest("GET", b.door+"/v1/fides/erasures/pri_x", nil)
		req.Header.Set("Authorization", "Bearer "+auth)
		if status, _ := do(t, req); status != http.StatusUnauthorized {
			t.Errorf("status with bearer %q: %d, want 401", auth, status)
		}
	}
	if len(b.in.reqs) != 0 {
		t.Fatal("an unauthenticated request was stored")
	}
}

func TestTheStatusEndpointIsWhatFidesPolls(t *testing.T) {
	t.Parallel()
	b := setup(t, "30s", fidesfake.Options{})
	done := time.Now()
	b.in.records["pri_p"] = connector.Record{Status: "running"}
	b.in.records["pri_d"] = connector.Record{Status: "succeeded", Outcome: "deleted", CompletedAt: &done}
	b.in.records["pri_n"] = connector.Record{Status: "succeeded", Outcome: "not_found", CompletedAt: &done}
	b.in.records["pri_f"] = connector.Record{Status: "failed", Outcome: "rejected", LastErrorCode: "NO_ACCESS", CompletedAt: &done}
	tests := []struct {
		id     string
		status int
		body   string
	}{
		{"pri_p", 200, `{"status":"pending"}`},
		{"pri_d", 200, `{"status":"completed","outcome":"deleted"}`},
		{"pri_n", 200, `{"status":"completed","outcome":"not_found"}`},
		{"pri_f", 422, `{"status":"failed","reason":"the Knot erasure failed: rejected (NO_ACCESS)"}`},
		{"pri_unknown", 404, `{"error":{"field":"correlation_id","message":"no request has this correlation_id"}}`},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", b.door+"/v1/fides/erasures/"+tt.id, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		if status, body := do(t, req); status != tt.status || strings.TrimSpace(body) != tt.body {
			t.Errorf("GET %s: %d %s, want %d %s", tt.id, status, body, tt.status, tt.body)
		}
	}
}

func TestSettingsAreCheckedNamingTheSetting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  map[string]string
		want string // in the error; "" for none
		on   bool
	}{
		{map[string]string{}, "", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t"}, "FIDES_URL", false},
		{map[string]string{"FIDES_URL": "https://fides.example"}, "FIDES_URL (--fides-url): is set but FIDES_AUTH_TOKEN is not", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t", "FIDES_URL": "fides.example"}, "FIDES_URL (--fides-url): must be an absolute http or https URL", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t", "FIDES_URL": "ftp://fides.example"}, "FIDES_URL", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t", "FIDES_URL": "https://fides.example/?x=1"}, "FIDES_URL (--fides-url): must hold no query", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t", "FIDES_URL": "https://u:p@fides.example"}, "FIDES_URL", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t", "FIDES_URL": "https://fides.example", "FIDES_CALLBACK_DELAY": "soon"}, "FIDES_CALLBACK_DELAY", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t", "FIDES_URL": "https://fides.example", "FIDES_CALLBACK_DELAY": "2h"}, "FIDES_CALLBACK_DELAY (--fides-callback-delay): must be at most 1h", false},
		{map[string]string{"FIDES_AUTH_TOKEN": "t", "FIDES_URL": "https://fides.example/fides"}, "", true},
	}
	for _, tt := range tests {
		parts, err := configure(tt.env)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%v: %v", tt.env, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%v: %v, want an error with %q", tt.env, err, tt.want)
		case (parts != nil) != tt.on:
			t.Errorf("%v: parts %v, want on %t", tt.env, parts, tt.on)
		}
	}
}
