package knotfake

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

const (
	clientID = "test-client"
	secret   = "test-secret"
)

type testBundle struct {
	srv  *httptest.Server
	fake *Server
}

func setup(t *testing.T, opts Options) (*Server, *testBundle) {
	t.Helper()
	if opts.ClientID == "" {
		opts.ClientID, opts.Secret = clientID, secret
	}
	fake := New(opts)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, &testBundle{srv: srv, fake: fake}
}

type reply struct {
	status int
	header http.Header
	body   string
}

// call sends one request. body "" sends no body; auth false sends none.
func (b *testBundle) call(t *testing.T, method, path, body string, user, pass string) reply {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if user != "" || pass != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(rb)}
}

func (b *testBundle) delete(t *testing.T, id string) reply {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"external_user_id": id})
	return b.call(t, http.MethodPost, "/user/delete", string(body), clientID, secret)
}

const (
	wantSuccess      = `{"message":"Success"}`
	wantInvalidField = `{"error_type":"INVALID_REQUEST","error_code":"INVALID_FIELD","error_message":"The external user id field is required."}`
	wantUserNotFound = `{"error_type":"USER_ERROR","error_code":"USER_NOT_FOUND","error_message":"The user was not found. Please check the external_user_id provided."}`
	wantInvalidKeys  = `{"error_type":"INVALID_INPUT","error_code":"INVALID_API_KEYS","error_message":"Invalid client_id or secret provided."}`
	wantServerError  = `{"message":"Server Error"}`
	wantTooMany      = `{"message":"Too Many Attempts."}`
)

func TestSpecAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		user, pass  string
		wantStatus  int
		wantBody    string
	}{
		{"success", "POST", "/user/delete", "application/json", `{"external_user_id":"abc123"}`, clientID, secret, 200, wantSuccess},
		{"extra fields ignored", "POST", "/user/delete", "application/json; charset=utf-8", `{"external_user_id":"abc124","x":1}`, clientID, secret, 200, wantSuccess},
		{"never existed", "POST", "/user/delete", "application/json", `{"external_user_id":"ghost"}`, clientID, secret, 400, wantUserNotFound},
		{"wrong secret", "POST", "/user/delete", "application/json", `{"external_user_id":"abc125"}`, clientID, "nope", 401, wantInvalidKeys},
		{"wrong client id", "POST", "/user/delete", "application/json", `{"external_user_id":"abc125"}`, "nope", secret, 401, wantInvalidKeys},
		{"no auth", "POST", "/user/delete", "application/json", `{"external_user_id":"abc125"}`, "", "", 401, wantInvalidKeys},
		{"no body", "POST", "/user/delete", "application/json", ``, clientID, secret, 400, wantInvalidField},
		{"empty object", "POST", "/user/delete", "application/json", `{}`, clientID, secret, 400, wantInvalidField},
		{"empty id", "POST", "/user/delete", "application/json", `{"external_user_id":""}`, clientID, secret, 400, wantInvalidField},
		{"blank id", "POST", "/user/delete", "application/json", `{"external_user_id":"  "}`, clientID, secret, 400, wantInvalidField},
		{"null id", "POST", "/user/delete", "application/json", `{"external_user_id":null}`, clientID, secret, 400, wantInvalidField},
		{"number id", "POST", "/user/delete", "application/json", `{"external_user_id":123}`, clientID, secret, 400, wantInvalidField},
		{"not json", "POST", "/user/delete", "application/json", `external_user_id=abc`, clientID, secret, 400, wantInvalidField},
		{"json array", "POST", "/user/delete", "application/json", `["abc"]`, clientID, secret, 400, wantInvalidField},
		{"form content type", "POST", "/user/delete", "application/x-www-form-urlencoded", `{"external_user_id":"abc126"}`, clientID, secret, 400, wantInvalidField},
		{"GET", "GET", "/user/delete", "", ``, clientID, secret, 405, `{"message":"Method Not Allowed"}`},
		{"unknown path", "POST", "/user/remove", "application/json", `{"external_user_id":"abc"}`, clientID, secret, 404, `{"message":"Not Found"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, b := setup(t, Options{Exists: func(id string) bool { return id != "ghost" }})
			req, _ := http.NewRequest(tt.method, b.srv.URL+tt.path, strings.NewReader(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			if tt.user != "" || tt.pass != "" {
				req.SetBasicAuth(tt.user, tt.pass)
			}
			resp, err := b.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || string(body) != tt.wantBody {
				t.Fatalf("got %d %s, want %d %s", resp.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if tt.wantStatus == 405 && resp.Header.Get("Allow") != "POST" {
				t.Errorf("Allow = %q", resp.Header.Get("Allow"))
			}
			st := fake.Stats()
			wantCalls := int64(1)
			if tt.path != "/user/delete" {
				wantCalls = 0
			}
			if st.Calls != wantCalls {
				t.Errorf("Calls = %d, want %d", st.Calls, wantCalls)
			}
		})
	}
}

func TestDeleteCounters(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{Exists: func(id string) bool { return id != "ghost" }})

	if r := b.delete(t, "u1"); r.status != 200 {
		t.Fatalf("first delete: %d %s", r.status, r.body)
	}
	if !fake.Deleted("u1") || fake.Deleted("u2") {
		t.Fatalf("Deleted(u1)=%v Deleted(u2)=%v", fake.Deleted("u1"), fake.Deleted("u2"))
	}
	if r := b.delete(t, "u1"); r.status != 400 || r.body != wantUserNotFound {
		t.Fatalf("second delete: %d %s, want USER_NOT_FOUND", r.status, r.body)
	}
	b.delete(t, "ghost")
	b.delete(t, "ghost")
	b.call(t, "POST", "/user/delete", `{"external_user_id":"u3"}`, clientID, "wrong")
	b.call(t, "POST", "/user/delete", `{}`, clientID, secret)

	st := fake.Stats()
	want := Stats{Calls: 6, Deleted: 1, DuplicateDeletes: 1, NotFound: 2, BadCredentials: 1, InvalidRequests: 1}
	if st.Calls != want.Calls || st.Deleted != want.Deleted || st.DuplicateDeletes != want.DuplicateDeletes ||
		st.NotFound != want.NotFound || st.BadCredentials != want.BadCredentials || st.InvalidRequests != want.InvalidRequests {
		t.Errorf("stats = %+v", st)
	}
	if st.ByStatus["200"] != 1 || st.ByStatus["400"] != 4 || st.ByStatus["401"] != 1 {
		t.Errorf("ByStatus = %v", st.ByStatus)
	}
	if len(st.Faulted) != 0 {
		t.Errorf("Faulted = %v, want none", st.Faulted)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		faults      Faults
		user, pass  string
		wantStatus  int
		wantBody    string
		wantCT      string
		wantFault   string
		wantHeaders map[string]string
	}{
		{name: "error", faults: Faults{ErrorRate: 1}, wantStatus: 500, wantBody: wantServerError, wantCT: "application/json", wantFault: "error"},
		{name: "rate limit default retry-after", faults: Faults{RateLimitRate: 1}, wantStatus: 429, wantBody: wantTooMany, wantCT: "application/json", wantFault: "rate_limit", wantHeaders: map[string]string{"Retry-After": "1"}},
		{name: "rate limit rounds up", faults: Faults{RateLimitRate: 1, RetryAfter: Duration(2100 * time.Millisecond)}, wantStatus: 429, wantBody: wantTooMany, wantCT: "application/json", wantFault: "rate_limit", wantHeaders: map[string]string{"Retry-After": "3"}},
		{name: "outage", faults: Faults{OutageUntil: time.Now().Add(time.Hour)}, wantStatus: 500, wantBody: wantServerError, wantCT: "application/json", wantFault: "outage"},
		{name: "outage over", faults: Faults{OutageUntil: time.Now().Add(-time.Second)}, wantStatus: 200, wantBody: wantSuccess, wantCT: "application/json"},
		{name: "reject credentials", faults: Faults{RejectCredentials: true}, wantStatus: 401, wantBody: wantInvalidKeys, wantCT: "application/json", wantFault: "reject_credentials"},
		{name: "bad gateway", faults: Faults{BadGatewayRate: 1}, wantStatus: 502, wantBody: badGatewayHTML, wantCT: "text/html", wantFault: "bad_gateway"},
		{name: "truncated", faults: Faults{TruncatedRate: 1}, wantStatus: 200, wantBody: `{"message":"Succ`, wantCT: "application/json", wantFault: "truncated"},
		{name: "empty ok", faults: Faults{EmptyOKRate: 1}, wantStatus: 200, wantBody: "", wantCT: "application/json", wantFault: "empty_ok"},
		{name: "bad credentials beat random faults", faults: Faults{ErrorRate: 1}, pass: "wrong", wantStatus: 401, wantBody: wantInvalidKeys, wantCT: "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, b := setup(t, Options{Faults: tt.faults})
			user, pass := clientID, secret
			if tt.pass != "" {
				pass = tt.pass
			}
			r := b.call(t, "POST", "/user/delete", `{"external_user_id":"u1"}`, user, pass)
			if r.status != tt.wantStatus || r.body != tt.wantBody {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tt.wantStatus, tt.wantBody)
			}
			if ct := r.header.Get("Content-Type"); ct != tt.wantCT {
				t.Errorf("Content-Type = %q, want %q", ct, tt.wantCT)
			}
			for k, v := range tt.wantHeaders {
				if got := r.header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			st := fake.Stats()
			if tt.wantFault != "" && st.Faulted[tt.wantFault] != 1 {
				t.Errorf("Faulted = %v, want %s=1", st.Faulted, tt.wantFault)
			}
			if tt.wantFault != "" && (fake.Deleted("u1") || st.Deleted != 0) {
				t.Errorf("a faulted call deleted the user")
			}
			if got := st.ByStatus[strconv.Itoa(tt.wantStatus)]; got != 1 {
				t.Errorf("ByStatus = %v, want %d counted once", st.ByStatus, tt.wantStatus)
			}
		})
	}
}

func TestHangBlocksUntilClientLeaves(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{Faults: Faults{HangRate: 1}})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", b.srv.URL+"/user/delete", strings.NewReader(`{"external_user_id":"u1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(clientID, secret)
	start := time.Now()
	resp, err := b.srv.Client().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("hung call answered %d", resp.StatusCode)
	}
	if time.Since(start) < 150*time.Millisecond {
		t.Fatalf("returned after %v, before the client gave up", time.Since(start))
	}
	// The handler returns once the client is gone; wait for its count.
	deadline := time.Now().Add(2 * time.Second)
	for fake.Stats().Faulted["hang"] != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := fake.Stats(); st.Faulted["hang"] != 1 || fake.Deleted("u1") || len(st.ByStatus) != 0 {
		t.Errorf("stats after hang = %+v", st)
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	_, b := setup(t, Options{Faults: Faults{Latency: Duration(100 * time.Millisecond), LatencyJitter: Duration(50 * time.Millisecond)}})
	start := time.Now()
	if r := b.delete(t, "u1"); r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("answered after %v, want >= 100ms", took)
	}
}

func TestFaultRatesAreShares(t *testing.T) {
	t.Parallel()
	f := Faults{HangRate: 0.1, BadGatewayRate: 0.1, RateLimitRate: 0.2, ErrorRate: 0.2, TruncatedRate: 0.1, EmptyOKRate: 0.1}
	counts := map[string]int{}
	const n = 1000
	for i := range n {
		counts[fakekit.Roll(fakekit.RatesOf(f), (float64(i)+0.5)/n)]++
	}
	want := map[string]int{"hang": 100, "bad_gateway": 100, "rate_limit": 200, "error": 200, "truncated": 100, "empty_ok": 100, "": 200}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("roll: %q got %d of %d, want %d", k, counts[k], n, v)
		}
	}
}

func TestEarlyRetries(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	fake, b := setup(t, Options{Now: clock, Faults: Faults{RateLimitRate: 1, RetryAfter: Duration(10 * time.Second)}})
	if r := b.delete(t, "u1"); r.status != 429 || r.header.Get("Retry-After") != "10" {
		t.Fatalf("got %d Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	fake.SetFaults(Faults{})
	advance(5 * time.Second)
	b.delete(t, "u2")                            // another id: not a retry
	if r := b.delete(t, "u1"); r.status != 200 { // too early, but the fault is off
		t.Fatalf("status %d", r.status)
	}
	advance(5 * time.Second)
	b.delete(t, "u1") // on time
	b.delete(t, "u1") // and no longer tracked
	if got := fake.Stats().EarlyRetries; got != 1 {
		t.Errorf("EarlyRetries = %d, want 1", got)
	}
}

func TestBusiestSecondAndPerSecond(t *testing.T) {
	t.Parallel()
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms ...int) []time.Time {
		var ts []time.Time
		for _, m := range ms {
			ts = append(ts, base.Add(time.Duration(m)*time.Millisecond))
		}
		return ts
	}
	tests := []struct {
		name      string
		arrivals  []time.Time
		busiest   int64
		perSecond []int64
	}{
		{"none", nil, 0, []int64{}},
		{"one", at(0), 1, []int64{1}},
		// Whole seconds see 2 and 2, the window [900ms,1900ms) sees 4.
		{"straddles a second boundary", at(0, 900, 950, 1050, 1800, 2500), 4, []int64{3, 2, 1}},
		// Exactly one second apart: the window is half-open.
		{"half-open window", at(0, 1000, 2000), 1, []int64{1, 1, 1}},
		{"out of order", at(1500, 0, 999, 1), 3, []int64{3, 1}},
		{"gap", at(0, 3500), 1, []int64{1, 0, 0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			i := 0
			var mu sync.Mutex
			clock := func() time.Time {
				mu.Lock()
				defer mu.Unlock()
				// Each call reads the clock at arrival and again after
				// latency; hand out each arrival time twice.
				ts := tt.arrivals[i/2]
				i++
				return ts
			}
			fake, b := setup(t, Options{Now: clock})
			for range tt.arrivals {
				b.delete(t, "u")
			}
			st := fake.Stats()
			if st.BusiestSecond != tt.busiest {
				t.Errorf("BusiestSecond = %d, want %d", st.BusiestSecond, tt.busiest)
			}
			if !equal(st.PerSecond, tt.perSecond) {
				t.Errorf("PerSecond = %v, want %v", st.PerSecond, tt.perSecond)
			}
			if len(tt.arrivals) > 0 && !st.FirstCall.Equal(base) {
				t.Errorf("FirstCall=%v", st.FirstCall)
			}
			want := slices.SortedFunc(slices.Values(tt.arrivals), func(a, b time.Time) int { return a.Compare(b) })
			if got := fake.Arrivals(); !slices.EqualFunc(got, want, time.Time.Equal) {
				t.Errorf("Arrivals() = %v, want %v", got, want)
			}
		})
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	fake, b := setup(t, Options{Now: func() time.Time { return now }})

	put := `{"error_rate":0.25,"rate_limit_rate":0.1,"retry_after":"2s","latency":"0s","latency_jitter":"0s","reject_credentials":false,"hang_rate":0,"bad_gateway_rate":0.05,"truncated_rate":0,"empty_ok_rate":0.01,"outage_for":"30s"}`
	r := b.call(t, "PUT", "/_fake/faults", put, "", "")
	if r.status != 200 {
		t.Fatalf("PUT faults: %d %s", r.status, r.body)
	}
	want := Faults{ErrorRate: 0.25, RateLimitRate: 0.1, RetryAfter: Duration(2 * time.Second), BadGatewayRate: 0.05, EmptyOKRate: 0.01, OutageUntil: now.Add(30 * time.Second)}
	if got := fake.Faults(); got != want {
		t.Fatalf("Faults() = %+v, want %+v", got, want)
	}
	r = b.call(t, "GET", "/_fake/faults", "", "", "")
	var got Faults
	if err := json.Unmarshal([]byte(r.body), &got); err != nil || got != want {
		t.Fatalf("GET faults = %s (%v), want %+v", r.body, err, want)
	}
	if !strings.Contains(r.body, `"retry_after":"2s"`) {
		t.Errorf("durations not written as strings: %s", r.body)
	}

	// PUT replaces everything: fields left out are zero.
	if r := b.call(t, "PUT", "/_fake/faults", `{"error_rate":0.5}`, "", ""); r.status != 200 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	if got := fake.Faults(); got != (Faults{ErrorRate: 0.5}) {
		t.Fatalf("after second PUT: %+v", got)
	}

	for _, bad := range []string{`{"eror_rate":0.5}`, `{"error_rate":2}`, `{"error_rate":0.6,"hang_rate":0.6}`, `{"latency":100}`, `{"latency":"-1s"}`, `not json`, `{"outage_for":"-5s"}`} {
		if r := b.call(t, "PUT", "/_fake/faults", bad, "", ""); r.status != 400 {
			t.Errorf("PUT %s: %d, want 400", bad, r.status)
		}
	}
	if got := fake.Faults(); got != (Faults{ErrorRate: 0.5}) {
		t.Fatalf("a rejected PUT changed faults: %+v", got)
	}

	fake.SetFaults(Faults{})
	b.delete(t, "u1")
	b.delete(t, "u1")
	r = b.call(t, "GET", "/_fake/stats", "", "", "")
	var st Stats
	if err := json.Unmarshal([]byte(r.body), &st); err != nil {
		t.Fatalf("stats %s: %v", r.body, err)
	}
	if st.Calls != 2 || st.Deleted != 1 || st.DuplicateDeletes != 1 || st.ByStatus["200"] != 1 || !st.FirstCall.Equal(now) {
		t.Errorf("stats = %s", r.body)
	}
	for _, key := range []string{`"calls"`, `"by_status"`, `"duplicate_deletes"`, `"busiest_second"`, `"per_second"`, `"first_call"`, `"early_retries"`} {
		if !strings.Contains(r.body, key) {
			t.Errorf("stats JSON lacks %s: %s", key, r.body)
		}
	}

	r = b.call(t, "GET", "/_fake/arrivals", "", "", "")
	var arrivals []time.Time
	if err := json.Unmarshal([]byte(r.body), &arrivals); err != nil || r.status != 200 {
		t.Fatalf("arrivals: %d %s (%v)", r.status, r.body, err)
	}
	if len(arrivals) != 2 || !arrivals[0].Equal(now) || !arrivals[1].Equal(now) {
		t.Errorf("arrivals = %s, want two calls at %v", r.body, now)
	}

	fake.SetFaults(Faults{ErrorRate: 0.3})
	if r := b.call(t, "POST", "/_fake/reset", "", "", ""); r.status != 200 {
		t.Fatalf("reset: %d", r.status)
	}
	if st := fake.Stats(); st.Calls != 0 || fake.Deleted("u1") || len(st.PerSecond) != 0 || len(fake.Arrivals()) != 0 {
		t.Errorf("after reset: %+v deleted=%v", st, fake.Deleted("u1"))
	}
	if fake.Faults().ErrorRate != 0.3 {
		t.Errorf("reset dropped faults")
	}

	if r := b.call(t, "DELETE", "/_fake/stats", "", "", ""); r.status != 405 {
		t.Errorf("DELETE stats: %d, want 405", r.status)
	}
	if r := b.call(t, "GET", "/_fake/nope", "", "", ""); r.status != 404 {
		t.Errorf("GET /_fake/nope: %d, want 404", r.status)
	}
}

func TestMissingShare(t *testing.T) {
	t.Parallel()
	exists := MissingShare(0.1)
	missing := 0
	const n = 20000
	for i := range n {
		id := "user-" + strconv.Itoa(i)
		if exists(id) != exists(id) {
			t.Fatalf("not deterministic for %s", id)
		}
		if !exists(id) {
			missing++
		}
	}
	if share := float64(missing) / n; share < 0.09 || share > 0.11 {
		t.Errorf("missing share = %v, want about 0.1", share)
	}
	if !MissingShare(0)("x") || MissingShare(1)("x") {
		t.Errorf("edge shares wrong")
	}
}

func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{Faults: Faults{ErrorRate: 0.2}})
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			b.delete(t, "u"+strconv.Itoa(i%10))
			fake.Stats()
		})
	}
	wg.Wait()
	st := fake.Stats()
	if st.Calls != 50 || st.Deleted > 10 || st.Deleted+st.DuplicateDeletes+st.Faulted["error"] != 50 {
		t.Errorf("stats = %+v", st)
	}
	var perSecond int64
	for _, n := range st.PerSecond {
		perSecond += n
	}
	if perSecond != 50 || st.BusiestSecond < 1 || st.BusiestSecond > 50 {
		t.Errorf("PerSecond sums to %d, BusiestSecond %d", perSecond, st.BusiestSecond)
	}
}

func TestDurationJSON(t *testing.T) {
	t.Parallel()
	b, _ := json.Marshal(Duration(1500 * time.Millisecond))
	if string(b) != `"1.5s"` {
		t.Errorf("marshal = %s", b)
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"250ms"`), &d); err != nil || d != Duration(250*time.Millisecond) {
		t.Errorf("unmarshal = %v, %v", d, err)
	}
	if err := json.Unmarshal([]byte(`250`), &d); err == nil {
		t.Errorf("unmarshal of a number succeeded")
	}
}
