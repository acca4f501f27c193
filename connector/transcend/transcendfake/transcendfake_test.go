package transcendfake

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	apiKey    = "test-api-key"
	sombraKey = "test-sombra-key"
	silo      = "9d5a7a41-f102-435c-b80d-38c2b378ecac"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type testBundle struct {
	srv   *httptest.Server
	fake  *Server
	clock *clock
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func setup(t *testing.T, opts Options) (*Server, *testBundle) {
	t.Helper()
	if opts.APIKey == "" {
		opts.APIKey = apiKey
	}
	if opts.DataSiloID == "" {
		opts.DataSiloID = silo
	}
	clk := &clock{now: t0}
	if opts.Now == nil {
		opts.Now = clk.Now
	}
	fake := New(opts)
	srv := httptest.NewUnstartedServer(fake)
	// Hung calls end with the base context, so that Close never waits for them.
	base, release := context.WithCancel(context.Background())
	srv.Config.BaseContext = func(net.Listener) context.Context { return base }
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(release)
	return fake, &testBundle{srv: srv, fake: fake, clock: clk}
}

type reply struct {
	status int
	header http.Header
	body   string
}

// call sends one request with the given headers ("" values are left out).
func (b *testBundle) call(t *testing.T, method, path, body string, header map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(rb)}
}

func pendingPath(query string) string {
	return "/v1/data-silo/" + silo + "/pending-requests/ERASURE" + query
}

func (b *testBundle) pull(t *testing.T, query string) []wireItem {
	t.Helper()
	r := b.call(t, "GET", pendingPath(query), "", map[string]string{"Authorization": "Bearer " + apiKey})
	if r.status != 200 {
		t.Fatalf("pull %s: %d %s", query, r.status, r.body)
	}
	var page struct{ Items []wireItem }
	if err := json.Unmarshal([]byte(r.body), &page); err != nil {
		t.Fatalf("pull %s: %v in %s", query, err, r.body)
	}
	return page.Items
}

func (b *testBundle) report(t *testing.T, nonce, body string) reply {
	t.Helper()
	return b.call(t, "PUT", "/v1/data-silo", body, map[string]string{
		"Authorization": "Bearer " + apiKey, "X-Transcend-Nonce": nonce, "Content-Type": "application/json",
	})
}

func ids(items []wireItem) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.RequestID)
	}
	return out
}

func TestPullServesPendingItemsPageByPage(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{})
	added := fake.Add(
		Item{RequestID: "r1", Identifier: "u1", DaysUntilOverdue: 30},
		Item{RequestID: "r2", Identifier: "u2", Type: "email", DaysUntilOverdue: -1},
		Item{RequestID: "r3"}, Item{RequestID: "r4"}, Item{RequestID: "r5"},
	)
	if a := added[2]; a.Identifier != "user-000001" || !strings.HasPrefix(a.Nonce, "eyJ") || a.Type != "userId" {
		t.Errorf("Add filled in %+v", a)
	}
	if added[3].Nonce == added[2].Nonce {
		t.Errorf("Add generated the same nonce twice: %+v", added[2:4])
	}
	b.clock.advance(12 * time.Hour)

	pages := [][]string{}
	for _, q := range []string{"?limit=2&offset=0", "?limit=2&offset=2", "?limit=2&offset=4", "?limit=2&offset=6"} {
		pages = append(pages, ids(b.pull(t, q)))
	}
	want := fmt.Sprint([][]string{{"r1", "r2"}, {"r3", "r4"}, {"r5"}, nil})
	if fmt.Sprint(pages) != want {
		t.Errorf("pages = %v, want %v", pages, want)
	}

	first := b.pull(t, "")
	if len(first) != 5 {
		t.Fatalf("default limit served %d items", len(first))
	}
	w := first[1]
	if w.Identifier != "u2" || w.Type != "email" || w.DataSiloID != silo || w.Nonce != added[1].Nonce ||
		w.CoreIdentifier != "u2" || w.Attributes == nil || w.DaysUntilOverdue != -1.5 {
		t.Errorf("wire item = %+v", w)
	}
	if first[0].DaysUntilOverdue != 29.5 {
		t.Errorf("daysUntilOverdue after half a day = %v, want 29.5", first[0].DaysUntilOverdue)
	}

	// Other DSR types are valid and empty: the fake holds erasures only.
	r := b.call(t, "GET", "/v1/data-silo/"+silo+"/pending-requests/ACCESS", "", map[string]string{"Authorization": "Bearer " + apiKey})
	if r.status != 200 || r.body != `{"items":[]}` {
		t.Errorf("ACCESS: %d %s", r.status, r.body)
	}
	if st := fake.Stats(); st.ItemsPending != 5 || st.ItemsReported != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestPullRefusesWhatTheReferenceRefuses(t *testing.T) {
	t.Parallel()
	auth := map[string]string{"Authorization": "Bearer " + apiKey, "X-Sombra-Authorization": "Bearer " + sombraKey}
	tests := []struct {
		name        string
		method      string
		path        string
		header      map[string]string
		wantStatus  int
		wantMessage string // in the body's message
		badKeys     int64  // Stats.BadCredentials
	}{
		{"no key", "GET", pendingPath(""), map[string]string{"X-Sombra-Authorization": "Bearer " + sombraKey}, 401, "Unauthorized", 1},
		{"wrong key", "GET", pendingPath(""), map[string]string{"Authorization": "Bearer nope", "X-Sombra-Authorization": "Bearer " + sombraKey}, 401, "Unauthorized", 1},
		{"key without Bearer", "GET", pendingPath(""), map[string]string{"Authorization": apiKey, "X-Sombra-Authorization": "Bearer " + sombraKey}, 401, "Unauthorized", 1},
		{"no sombra key", "GET", pendingPath(""), map[string]string{"Authorization": "Bearer " + apiKey}, 401, "Unauthorized", 1},
		{"unknown data silo", "GET", "/v1/data-silo/other/pending-requests/ERASURE", auth, 401, "Unauthorized", 0},
		{"unknown type", "GET", "/v1/data-silo/" + silo + "/pending-requests/DELETE", auth, 400, "type must be", 0},
		{"limit 0", "GET", pendingPath("?limit=0"), auth, 400, "limit must be", 0},
		{"limit 101", "GET", pendingPath("?limit=101"), auth, 400, "limit must be", 0},
		{"limit not a number", "GET", pendingPath("?limit=ten"), auth, 400, "limit must be", 0},
		{"fractional limit", "GET", pendingPath("?limit=2.5"), auth, 400, "limit must be", 0},
		{"limit twice", "GET", pendingPath("?limit=2&limit=3"), auth, 400, "limit must be", 0},
		{"negative offset", "GET", pendingPath("?offset=-1"), auth, 400, "offset must be", 0},
		{"POST", "POST", pendingPath(""), auth, 405, "Method Not Allowed", 0},
		{"other path", "GET", "/v1/data-silo/" + silo + "/pending", auth, 404, "Not Found", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, b := setup(t, Options{SombraKey: sombraKey})
			fake.Add(Item{})
			r := b.call(t, tt.method, tt.path, "", tt.header)
			if r.status != tt.wantStatus || !strings.HasPrefix(r.body, `{"message":"`+tt.wantMessage) {
				t.Fatalf("got %d %s, want %d with %q", r.status, r.body, tt.wantStatus, tt.wantMessage)
			}
			if got := fake.Stats().BadCredentials; got != tt.badKeys {
				t.Errorf("bad credentials counted %d times, want %d", got, tt.badKeys)
			}
		})
	}
}

func TestReportAnswersAsTheReferenceSays(t *testing.T) {
	t.Parallel()
	profile := func(id string) string { return `{"profiles":[{"profileId":"` + id + `"}]` }
	tests := []struct {
		name        string
		nonce       string // "" sends none; "item" the item's
		contentType string
		body        string
		wantStatus  int
		wantState   string // the item's state afterwards
		wantEff     string // the profile's state when accepted (Stats.ReportsByProfileStatus)
		counter     func(Stats) int64
	}{
		{"deleted", "item", "application/json", profile("u1") + `}`, 200, stateReported, "RESOLVED", func(s Stats) int64 { return s.Reports }},
		{"not found", "item", "application/json", profile("u1") + `,"profileStatus":"SKIPPED"}`, 200, stateReported, "SKIPPED", func(s Stats) int64 { return s.ReportsByProfileStatus["SKIPPED"] }},
		{"failed", "item", "application/json; charset=utf-8", profile("u1") + `,"profileStatus":"ERROR","message":"Knot erasure failed: exhausted"}`, 200, stateReported, "ERROR", func(s Stats) int64 { return s.ReportsByProfileStatus["ERROR"] }},
		{"status RESOLVED", "item", "application/json", `{"status":"RESOLVED"}`, 200, stateReported, "RESOLVED", func(s Stats) int64 { return s.ReportsByProfileStatus["RESOLVED"] }},
		{"empty body", "item", "", ``, 200, stateReported, "RESOLVED", func(s Stats) int64 { return s.Reports }},
		{"waiting keeps it pending", "item", "application/json", `{"profileStatus":"WAITING"}`, 200, statePending, "WAITING", func(s Stats) int64 { return s.ReportsByProfileStatus["WAITING"] }},
		{"no nonce", "", "application/json", profile("u1") + `}`, 400, statePending, "", func(s Stats) int64 { return s.BadNonces }},
		{"unknown nonce", "forged", "application/json", profile("u1") + `}`, 400, statePending, "", func(s Stats) int64 { return s.BadNonces }},
		{"someone else's profileId", "item", "application/json", profile("u2") + `}`, 400, statePending, "", func(s Stats) int64 { return s.MismatchedProfileIDs }},
		{"misspelt field", "item", "application/json", profile("u1") + `,"profile_status":"SKIPPED"}`, 400, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
		{"field in another case", "item", "application/json", `{"ProfileStatus":"SKIPPED"}`, 400, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
		{"undocumented status", "item", "application/json", `{"profileStatus":"DONE"}`, 400, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
		{"profileId not a string", "item", "application/json", `{"profiles":[{"profileId":7}]}`, 400, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
		{"profile with data", "item", "application/json", `{"profiles":[{"profileId":"u1","profileData":{}}]}`, 400, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
		{"not JSON", "item", "application/json", `profileId=u1`, 400, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
		{"not declared JSON", "item", "text/plain", profile("u1") + `}`, 400, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
		{"too large", "item", "application/json", `{"message":"` + strings.Repeat("x", maxReportBody) + `"}`, 413, statePending, "", func(s Stats) int64 { return s.MalformedReports }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, b := setup(t, Options{})
			it := fake.Add(Item{RequestID: "r1", Identifier: "u1"}, Item{RequestID: "r2", Identifier: "u2"})[0]
			nonce := tt.nonce
			if nonce == "item" {
				nonce = it.Nonce
			}
			r := b.call(t, "PUT", "/v1/data-silo", tt.body, map[string]string{
				"Authorization": "Bearer " + apiKey, "X-Transcend-Nonce": nonce, "Content-Type": tt.contentType,
			})
			if r.status != tt.wantStatus {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tt.wantStatus)
			}
			st := fake.Stats()
			if tt.counter(st) != 1 {
				t.Errorf("counter not 1: %+v", st)
			}
			if pending := st.ItemsPending == 2; pending != (tt.wantState == statePending) {
				t.Errorf("%d pending after the report, want state %s", st.ItemsPending, tt.wantState)
			}
			reps := fake.Reports()["r1"]
			if tt.wantEff == "" {
				if len(reps) != 0 || len(st.ReportsByProfileStatus) != 0 {
					t.Errorf("a refused report was recorded: %+v", reps)
				}
				return
			}
			if len(reps) != 1 || st.ReportsByProfileStatus[tt.wantEff] != 1 {
				t.Errorf("recorded %+v (%v), want one %s", reps, st.ReportsByProfileStatus, tt.wantEff)
			}
		})
	}
}

func TestReportTwiceIsAConflict(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{})
	it := fake.Add(Item{Identifier: "u1"})[0]
	// Many replicas race to report the same item: one wins, the rest hear 409.
	var wg sync.WaitGroup
	statuses := make(chan int, 20)
	for range 20 {
		wg.Go(func() { statuses <- b.report(t, it.Nonce, `{"profiles":[{"profileId":"u1"}]}`).status })
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[200] != 1 || count[409] != 19 {
		t.Errorf("answers = %v, want one 200 and 19 409s", count)
	}
	st := fake.Stats()
	if st.Reports != 1 || st.DuplicateReports != 19 || st.ItemsReported != 1 || st.ItemsPending != 0 {
		t.Errorf("stats = %+v", st)
	}
	if items := b.pull(t, ""); len(items) != 0 {
		t.Errorf("a reported item is still served: %v", ids(items))
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		faults     Faults
		door       string // "pull" or "report"
		wantStatus int
		wantFault  string
		wantHeader map[string]string
		wantBody   string
		wantState  string
	}{
		{name: "pull error", faults: Faults{Pull: FaultSet{ErrorRate: 1}}, door: "pull", wantStatus: 500, wantFault: "pull_error"},
		{name: "pull rate limit", faults: Faults{Pull: FaultSet{RateLimitRate: 1, RetryAfter: Duration(2100 * time.Millisecond)}}, door: "pull", wantStatus: 429, wantFault: "pull_rate_limit", wantHeader: map[string]string{"Retry-After": "3"}},
		{name: "pull outage", faults: Faults{Pull: FaultSet{OutageUntil: t0.Add(time.Minute)}}, door: "pull", wantStatus: 500, wantFault: "pull_outage"},
		{name: "pull outage over", faults: Faults{Pull: FaultSet{OutageUntil: t0.Add(-time.Second)}}, door: "pull", wantStatus: 200},
		{name: "pull rejects credentials", faults: Faults{Pull: FaultSet{RejectCredentials: true}}, door: "pull", wantStatus: 401, wantFault: "pull_reject_credentials"},
		{name: "pull truncated", faults: Faults{Pull: FaultSet{TruncatedRate: 1}}, door: "pull", wantStatus: 200, wantFault: "pull_truncated", wantBody: `{"items":[{"identifier":"`},
		{name: "report faults leave pulls alone", faults: Faults{Report: FaultSet{ErrorRate: 1}}, door: "pull", wantStatus: 200},
		{name: "report error", faults: Faults{Report: FaultSet{ErrorRate: 1}}, door: "report", wantStatus: 500, wantFault: "report_error", wantState: statePending},
		{name: "report rate limit", faults: Faults{Report: FaultSet{RateLimitRate: 1}}, door: "report", wantStatus: 429, wantFault: "report_rate_limit", wantHeader: map[string]string{"Retry-After": "1"}, wantState: statePending},
		{name: "report outage", faults: Faults{Report: FaultSet{OutageUntil: t0.Add(time.Minute)}}, door: "report", wantStatus: 500, wantFault: "report_outage", wantState: statePending},
		{name: "report rejects credentials", faults: Faults{Report: FaultSet{RejectCredentials: true}}, door: "report", wantStatus: 401, wantFault: "report_reject_credentials", wantState: statePending},
		{name: "report conflict revokes", faults: Faults{Report: FaultSet{ConflictRate: 1}}, door: "report", wantStatus: 409, wantFault: "report_conflict", wantState: stateRevoked},
		{name: "pull faults leave reports alone", faults: Faults{Pull: FaultSet{ErrorRate: 1}}, door: "report", wantStatus: 200, wantState: stateReported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, b := setup(t, Options{Faults: tt.faults})
			it := fake.Add(Item{Identifier: "u1"})[0]
			var r reply
			if tt.door == "pull" {
				r = b.call(t, "GET", pendingPath(""), "", map[string]string{"Authorization": "Bearer " + apiKey})
			} else {
				r = b.report(t, it.Nonce, `{"profiles":[{"profileId":"u1"}]}`)
			}
			if r.status != tt.wantStatus {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tt.wantStatus)
			}
			if tt.wantBody != "" && r.body != tt.wantBody {
				t.Errorf("body = %q, want %q", r.body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := r.header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			st := fake.Stats()
			if tt.wantFault != "" && (st.Faulted[tt.wantFault] != 1 || len(st.Faulted) != 1) {
				t.Errorf("faulted = %v, want %s once", st.Faulted, tt.wantFault)
			}
			if tt.wantFault == "" && len(st.Faulted) != 0 {
				t.Errorf("faulted = %v, want none", st.Faulted)
			}
			states := map[string]int64{statePending: st.ItemsPending, stateReported: st.ItemsReported, stateRevoked: st.ItemsRevoked}
			if tt.wantState != "" && states[tt.wantState] != 1 {
				t.Errorf("item not %s: %+v", tt.wantState, st)
			}
		})
	}
}

func TestHangsUntilTheClientGivesUp(t *testing.T) {
	t.Parallel()
	for _, door := range []string{"pull", "report"} {
		fake, b := setup(t, Options{Faults: Faults{Pull: FaultSet{HangRate: 1}, Report: FaultSet{HangRate: 1}}})
		it := fake.Add(Item{Identifier: "u1"})[0]
		method, path := "GET", pendingPath("")
		if door == "report" {
			method, path = "PUT", "/v1/data-silo"
		}
		req, _ := http.NewRequest(method, b.srv.URL+path, strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+apiKey)
		req.Header.Set("X-Transcend-Nonce", it.Nonce)
		client := &http.Client{Timeout: 100 * time.Millisecond}
		if _, err := client.Do(req); err == nil {
			t.Fatalf("%s: a hung call answered", door)
		}
		if got := fake.Stats().Faulted[door+"_hang"]; got != 1 {
			t.Errorf("%s: hang counted %d times", door, got)
		}
		if fake.Stats().ItemsPending != 1 {
			t.Errorf("%s: a hung report closed the item", door)
		}
	}
}

func TestLostAnswerRecordsTheReportAndDropsTheConnection(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{Faults: Faults{Report: FaultSet{LostAnswerRate: 1}}})
	it := fake.Add(Item{Identifier: "u1"})[0]
	req, _ := http.NewRequest("PUT", b.srv.URL+"/v1/data-silo", strings.NewReader(`{"profiles":[{"profileId":"u1"}]}`))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("X-Transcend-Nonce", it.Nonce)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := b.srv.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a lost answer answered %d", resp.StatusCode)
	}
	st := fake.Stats()
	if st.Reports != 1 || st.ItemsReported != 1 || st.Faulted["report_lost_answer"] != 1 || len(fake.Reports()[it.RequestID]) != 1 {
		t.Errorf("stats = %+v, want the report recorded once and the fault counted once", st)
	}
	// The client's retry is a second report of the item: Transcend's 409.
	fake.SetFaults(Faults{})
	if r := b.report(t, it.Nonce, `{"profiles":[{"profileId":"u1"}]}`); r.status != 409 {
		t.Errorf("the retry: %d %s, want 409", r.status, r.body)
	}
	if st := fake.Stats(); st.Reports != 1 || st.DuplicateReports != 1 || st.Faulted["report_lost_answer"] != 1 {
		t.Errorf("after the retry: %+v", st)
	}
}

func TestFaultsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		f       Faults
		wantErr string
	}{
		{Faults{Pull: FaultSet{ErrorRate: 1.5}}, "pull.error_rate must be between 0 and 1"},
		{Faults{Report: FaultSet{HangRate: -0.1}}, "report.hang_rate must be between 0 and 1"},
		{Faults{Report: FaultSet{ErrorRate: 0.6, RateLimitRate: 0.6}}, "report: fault rates add up to"},
		{Faults{Pull: FaultSet{ConflictRate: 0.1}}, "pull.conflict_rate: only reports can conflict"},
		{Faults{Report: FaultSet{TruncatedRate: 0.1}}, "report.truncated_rate: only pulls"},
		{Faults{Pull: FaultSet{LostAnswerRate: 0.1}}, "pull.lost_answer_rate: only reports"},
		{Faults{Pull: FaultSet{Latency: Duration(-time.Second)}}, "pull.latency must not be negative"},
		{Faults{Pull: FaultSet{ErrorRate: 0.5, RateLimitRate: 0.5}, Report: FaultSet{ConflictRate: 1}}, ""},
	}
	for _, tt := range tests {
		err := tt.f.Validate()
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("%+v: %v", tt.f, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%+v: %v, want %q", tt.f, err, tt.wantErr)
		}
	}
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{})
	items := fake.Add(Item{Identifier: "u1"}, Item{Identifier: "u2"}, Item{Identifier: "u3"})
	if len(items[0].RequestID) != 36 || items[0].RequestID == items[1].RequestID {
		t.Errorf("generated request ids %q, %q: not unique or not UUIDs", items[0].RequestID, items[1].RequestID)
	}
	b.report(t, items[0].Nonce, `{}`)
	b.pull(t, "")

	r := b.call(t, "GET", "/_fake/items", "", nil)
	var views []entry
	if err := json.Unmarshal([]byte(r.body), &views); err != nil || len(views) != 3 || views[0].State != stateReported ||
		len(views[0].Reports) != 1 || views[1].State != statePending || views[1].Nonce != items[1].Nonce {
		t.Errorf("GET items: %v %s", err, r.body)
	}

	r = b.call(t, "PUT", "/_fake/faults", `{"pull":{"error_rate":0.5,"outage_for":"1m"},"report":{"conflict_rate":0.25,"retry_after":"2s"}}`, nil)
	if r.status != 200 {
		t.Fatalf("PUT faults: %d %s", r.status, r.body)
	}
	f := fake.Faults()
	if f.Pull.ErrorRate != 0.5 || !f.Pull.OutageUntil.Equal(t0.Add(time.Minute)) || f.Report.ConflictRate != 0.25 ||
		f.Report.RetryAfter != Duration(2*time.Second) || !f.Report.OutageUntil.IsZero() {
		t.Errorf("faults = %+v", f)
	}
	if r := b.call(t, "GET", "/_fake/faults", "", nil); !strings.Contains(r.body, `"conflict_rate":0.25`) {
		t.Errorf("GET faults: %s", r.body)
	}
	for _, bad := range []string{`{"pull":{"eror_rate":1}}`, `{"pull":{"error_rate":2}}`, `{"report":{"outage_for":"-1s"}}`, `{"pull":{"retry_after":3}}`, `{"timeout":1}`} {
		if r := b.call(t, "PUT", "/_fake/faults", bad, nil); r.status != 400 {
			t.Errorf("PUT faults %s: %d %s", bad, r.status, r.body)
		}
	}
	if f2 := fake.Faults(); f2 != f {
		t.Errorf("a refused PUT changed the faults: %+v", f2)
	}

	r = b.call(t, "GET", "/_fake/stats", "", nil)
	var st Stats
	if err := json.Unmarshal([]byte(r.body), &st); err != nil || st.Reports != 1 || st.ItemsPending != 2 || st.ItemsReported != 1 {
		t.Errorf("GET stats: %v %s", err, r.body)
	}

	if r := b.call(t, "POST", "/_fake/reset", "", nil); r.status != 200 {
		t.Fatalf("reset: %d", r.status)
	}
	if st := fake.Stats(); st.Reports != 0 || st.ItemsPending+st.ItemsReported != 0 || len(st.ReportsByProfileStatus) != 0 {
		t.Errorf("stats after reset = %+v", st)
	}
	if r := b.call(t, "GET", "/_fake/items", "", nil); r.body != "[]" {
		t.Errorf("items after reset: %s", r.body)
	}
	if fake.Faults() != f {
		t.Errorf("reset changed the faults")
	}
	if r := b.call(t, "DELETE", "/_fake/stats", "", nil); r.status != 405 || r.header.Get("Allow") != "GET" {
		t.Errorf("DELETE stats: %d Allow %q", r.status, r.header.Get("Allow"))
	}
	if r := b.call(t, "GET", "/_fake/nope", "", nil); r.status != 404 {
		t.Errorf("unknown admin path: %d", r.status)
	}
}
