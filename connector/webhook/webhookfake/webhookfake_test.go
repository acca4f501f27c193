package webhookfake

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
)

var (
	testSecret  = "whsec_" + base64.StdEncoding.EncodeToString([]byte("webhookfake-test-key-32-bytes!!!"))
	otherSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("another-key-of-thirty-two-bytes!"))
	completed   = time.Date(2026, 12, 2, 9, 59, 0, 0, time.UTC)
)

type testBundle struct {
	srv    *httptest.Server
	fake   *Server
	sender *webhook.Sender
}

func setup(t *testing.T, opts Options) (*Server, *testBundle) {
	t.Helper()
	if opts.Secret == "" {
		opts.Secret = testSecret
	}
	fake, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	sender, err := webhook.NewSender(srv.URL+"/hooks", testSecret, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return fake, &testBundle{srv: srv, fake: fake, sender: sender}
}

func (b *testBundle) send(t *testing.T, id string, o webhook.Outcome) connector.Delivery {
	t.Helper()
	return b.sender.Send(context.Background(), id, o, time.Now())
}

// sign makes Standard Webhooks headers by hand, independently of connector/webhook.
func sign(secret, id string, ts time.Time, body string) http.Header {
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	m := hmac.New(sha256.New, key)
	fmtTS := strconv.FormatInt(ts.Unix(), 10)
	m.Write([]byte(id + "." + fmtTS + "." + body))
	h := http.Header{}
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", fmtTS)
	h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
	h.Set("Content-Type", "application/json")
	return h
}

type reply struct {
	status int
	header http.Header
	body   string
}

func (b *testBundle) post(t *testing.T, method string, h http.Header, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+"/hooks", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(rb)}
}

const goodBody = `{"type":"erasure.succeeded","timestamp":"2026-12-02T09:59:00.000000Z","data":{"request_ref":"r-1","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T09:59:00.000000Z"}}`

func TestAcceptsEveryOutcomeTheSenderSends(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{})
	outcomes := []webhook.Outcome{
		{RequestRef: "r-deleted", Outcome: "deleted", CompletedAt: completed},
		{RequestRef: "r-not-found", Outcome: "not_found", ErrorCode: "USER_NOT_FOUND", CompletedAt: completed},
		{RequestRef: "r-rejected", Outcome: "rejected", ErrorCode: "INVALID_FIELD", CompletedAt: completed},
		{RequestRef: "r-invalid", Outcome: "invalid", ErrorCode: "invalid_external_user_id", CompletedAt: completed},
		{RequestRef: "r-exhausted", Outcome: "exhausted", CompletedAt: completed},
	}
	for i, o := range outcomes {
		if d := b.send(t, "msg_"+strconv.Itoa(i), o); d.Result != connector.Delivered || d.HTTPStatus != 204 {
			t.Fatalf("%s: %+v", o.Outcome, d)
		}
	}
	st := fake.Stats()
	if st.Messages != 5 || st.RequestRefs != 5 || st.DuplicateWebhookIDs != 0 {
		t.Errorf("stats = %+v", st)
	}
	if st.ByType[webhook.EventSucceeded] != 2 || st.ByType[webhook.EventFailed] != 3 {
		t.Errorf("by_type = %v", st.ByType)
	}
	for _, o := range outcomes {
		if st.ByOutcome[o.Outcome] != 1 {
			t.Errorf("by_outcome = %v", st.ByOutcome)
		}
	}

	evs := fake.Events("r-not-found")
	if len(evs) != 1 {
		t.Fatalf("events = %+v", evs)
	}
	e := evs[0]
	if e.WebhookID != "msg_1" || e.Type != webhook.EventSucceeded || e.Outcome != "not_found" || e.ErrorCode != "USER_NOT_FOUND" ||
		!e.CompletedAt.Equal(completed) || e.ReceivedAt.IsZero() || e.Repeat {
		t.Errorf("event = %+v", e)
	}
}

func TestRefusesWhatBreaksTheContract(t *testing.T) {
	t.Parallel()
	withData := func(data string) string {
		return `{"type":"erasure.succeeded","timestamp":"2026-12-02T09:59:00Z","data":` + data + `}`
	}
	tests := []struct {
		name    string
		method  string
		header  func() http.Header
		body    string
		status  int
		counter func(Stats) int64
		reason  string // what the answer says: the field at fault
	}{
		{"wrong secret", "POST", func() http.Header { return sign(otherSecret, "msg_1", time.Now(), goodBody) }, goodBody,
			401, func(s Stats) int64 { return s.BadSignatures }, "webhook-signature"},
		{"no signature header", "POST", func() http.Header {
			h := sign(testSecret, "msg_1", time.Now(), goodBody)
			h.Del("webhook-signature")
			return h
		}, goodBody, 401, func(s Stats) int64 { return s.BadSignatures }, "webhook-signature"},
		{"body changed after signing", "POST", func() http.Header { return sign(testSecret, "msg_1", time.Now(), goodBody) },
			strings.Replace(goodBody, "deleted", "not_found", 1), 401, func(s Stats) int64 { return s.BadSignatures }, "webhook-signature"},
		{"six minutes old", "POST", func() http.Header { return sign(testSecret, "msg_1", time.Now().Add(-6*time.Minute), goodBody) }, goodBody,
			401, func(s Stats) int64 { return s.StaleTimestamps }, "old"},
		{"six minutes ahead", "POST", func() http.Header { return sign(testSecret, "msg_1", time.Now().Add(6*time.Minute), goodBody) }, goodBody,
			401, func(s Stats) int64 { return s.StaleTimestamps }, "in the future"},
		{"external_user_id beside the data", "POST", nil,
			withData(`{"request_ref":"r","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T09:59:00Z","external_user_id":"u-1"}`),
			400, func(s Stats) int64 { return s.Violations }, "data.external_user_id: looks like a user id"},
		{"userId at the top", "POST", nil,
			`{"type":"erasure.succeeded","userId":"u-1","timestamp":"2026-12-02T09:59:00Z","data":{"request_ref":"r","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T09:59:00Z"}}`,
			400, func(s Stats) int64 { return s.Violations }, "userId: looks like a user id"},
		{"an email in a list", "POST", nil,
			withData(`{"request_ref":"r","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T09:59:00Z","x":[{"Email":"a@b"}]}`),
			400, func(s Stats) int64 { return s.Violations }, "data.x[0].Email: looks like a user id"},
		{"type does not match", "POST", nil,
			withData(`{"request_ref":"r","outcome":"exhausted","error_code":null,"completed_at":"2026-12-02T09:59:00Z"}`),
			400, func(s Stats) int64 { return s.Malformed }, "type: must be erasure.failed for data.outcome exhausted"},
		{"unknown outcome", "POST", nil,
			withData(`{"request_ref":"r","outcome":"done","error_code":null,"completed_at":"2026-12-02T09:59:00Z"}`),
			400, func(s Stats) int64 { return s.Malformed }, "data.outcome: not deleted, not_found, rejected, invalid or exhausted"},
		{"error_code left out", "POST", nil,
			withData(`{"request_ref":"r","outcome":"deleted","completed_at":"2026-12-02T09:59:00Z"}`),
			400, func(s Stats) int64 { return s.Malformed }, "data.error_code: missing (null when there is none)"},
		{"error_code empty", "POST", nil,
			withData(`{"request_ref":"r","outcome":"deleted","error_code":"","completed_at":"2026-12-02T09:59:00Z"}`),
			400, func(s Stats) int64 { return s.Malformed }, "data.error_code: not a non-empty string or null"},
		{"error_code a number", "POST", nil,
			withData(`{"request_ref":"r","outcome":"deleted","error_code":7,"completed_at":"2026-12-02T09:59:00Z"}`),
			400, func(s Stats) int64 { return s.Malformed }, "error_code"},
		{"no request_ref", "POST", nil,
			withData(`{"request_ref":"","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T09:59:00Z"}`),
			400, func(s Stats) int64 { return s.Malformed }, "data.request_ref: missing or empty"},
		{"no data", "POST", nil, `{"type":"erasure.succeeded","timestamp":"2026-12-02T09:59:00Z"}`,
			400, func(s Stats) int64 { return s.Malformed }, "data.request_ref: missing or empty"},
		{"completed_at as Unix seconds", "POST", nil,
			withData(`{"request_ref":"r","outcome":"deleted","error_code":null,"completed_at":"1796205540"}`),
			400, func(s Stats) int64 { return s.Malformed }, "data.completed_at: missing or not an RFC 3339 timestamp"},
		{"no timestamp", "POST", nil,
			`{"type":"erasure.succeeded","data":{"request_ref":"r","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T09:59:00Z"}}`,
			400, func(s Stats) int64 { return s.Malformed }, "timestamp: missing or not an RFC 3339 timestamp"},
		{"an extra field", "POST", nil,
			withData(`{"request_ref":"r","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T09:59:00Z","attempts":3}`),
			400, func(s Stats) int64 { return s.Malformed }, `data: json: unknown field \"attempts\"`},
		{"trailing data", "POST", nil, goodBody + ` {}`,
			400, func(s Stats) int64 { return s.Malformed }, "body: not a JSON object"},
		{"not JSON", "POST", nil, `type=erasure.succeeded`,
			400, func(s Stats) int64 { return s.Malformed }, "body: not a JSON object"},
		{"over 64 KiB", "POST", nil, `{"pad":"` + strings.Repeat("x", 64<<10) + `"}`,
			413, func(s Stats) int64 { return s.Malformed }, "body: unreadable or over 64 KiB"},
		{"GET", "GET", nil, ``,
			405, func(s Stats) int64 { return s.Malformed }, "method: must be POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, b := setup(t, Options{})
			h := sign(testSecret, "msg_1", time.Now(), tt.body)
			if tt.header != nil {
				h = tt.header()
			}
			r := b.post(t, tt.method, h, tt.body)
			if r.status != tt.status || !strings.Contains(r.body, tt.reason) {
				t.Errorf("answer %d %s, want %d with %q", r.status, r.body, tt.status, tt.reason)
			}
			st := fake.Stats()
			if tt.counter(st) != 1 || st.Messages != 1 || st.RequestRefs != 0 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

func TestCountsRepeatsPerWebhookIDAndRequestRef(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{})
	o := webhook.Outcome{RequestRef: "r-1", Outcome: "deleted", CompletedAt: completed}
	b.send(t, "msg_1", o)
	b.send(t, "msg_1", o) // a retry after a lost answer: legitimate
	st := fake.Stats()
	if st.DuplicateWebhookIDs != 1 || st.RequestRefs != 1 || st.RequestRefsSeveralIDs != 0 || st.ConflictingWebhookIDs != 0 ||
		st.ByOutcome["deleted"] != 1 {
		t.Errorf("after a retry: %+v", st)
	}
	if evs := fake.Events("r-1"); len(evs) != 2 || evs[0].Repeat || !evs[1].Repeat {
		t.Errorf("events = %+v", evs)
	}

	b.send(t, "msg_2", o) // a second report for one request
	if st := fake.Stats(); st.RequestRefsSeveralIDs != 1 || st.DuplicateWebhookIDs != 1 || st.ConflictingOutcomes != 0 {
		t.Errorf("after a second id: %+v", st)
	}
	b.send(t, "msg_1", webhook.Outcome{RequestRef: "r-1", Outcome: "exhausted", CompletedAt: completed})
	if st := fake.Stats(); st.ConflictingWebhookIDs != 1 || st.ConflictingOutcomes != 1 || st.ByOutcome["exhausted"] != 0 {
		t.Errorf("after another outcome under the same id: %+v", st)
	}
}

func TestFaultsAsTheSenderSeesThem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		faults   Faults
		want     connector.Result
		status   int
		wait     time.Duration
		kind     string
		accepted int64
	}{
		{"error", Faults{ErrorRate: 1}, connector.Retry, 500, 0, "error", 0},
		{"rate limit", Faults{RateLimitRate: 1, RetryAfter: Duration(2500 * time.Millisecond)}, connector.RateLimited, 429, 3 * time.Second, "rate_limit", 0},
		{"conflict", Faults{ConflictRate: 1}, connector.Rejected, 409, 0, "conflict", 0},
		{"reject signatures", Faults{RejectSignatures: true}, connector.Unauthorized, 401, 0, "reject_signatures", 0},
		{"outage", Faults{OutageUntil: time.Now().Add(time.Minute)}, connector.Retry, 500, 0, "outage", 0},
		{"lost answer", Faults{LostAnswerRate: 1}, connector.Retry, 0, 0, "lost_answer", 1},
		{"outage over", Faults{OutageUntil: time.Now().Add(-time.Second)}, connector.Delivered, 204, 0, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, b := setup(t, Options{Faults: tt.faults})
			d := b.send(t, "msg_1", webhook.Outcome{RequestRef: "r-1", Outcome: "deleted", CompletedAt: completed})
			if d.Result != tt.want || d.HTTPStatus != tt.status || d.RetryAfter != tt.wait {
				t.Errorf("delivery = %+v, want %s %d after %s", d, tt.want, tt.status, tt.wait)
			}
			st := fake.Stats()
			if tt.kind != "" && st.Faulted[tt.kind] != 1 {
				t.Errorf("faulted = %v, want one %s", st.Faulted, tt.kind)
			}
			if got := int64(len(fake.Events("r-1"))); got != tt.accepted || st.RequestRefs != tt.accepted {
				t.Errorf("events %d, stats %+v, want %d accepted", got, st, tt.accepted)
			}
		})
	}
}

func TestHangHoldsUntilTheSenderGivesUp(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{Faults: Faults{HangRate: 1}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	d := b.sender.Send(ctx, "msg_1", webhook.Outcome{RequestRef: "r", Outcome: "deleted", CompletedAt: completed}, time.Now())
	// The fake held the request until the sender's own deadline ended it: no answer came first.
	if d.Result != connector.Retry || d.HTTPStatus != 0 || ctx.Err() == nil {
		t.Errorf("delivery = %+v after %s, the sender's deadline not yet passed", d, time.Since(start))
	}
	if st := fake.Stats(); st.Faulted["hang"] != 1 || st.RequestRefs != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestFaultsValidateNamesTheField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		f    Faults
		want string
	}{
		{Faults{ErrorRate: 1.5}, "error_rate must be between 0 and 1"},
		{Faults{RateLimitRate: -0.1}, "rate_limit_rate must be between 0 and 1"},
		{Faults{ConflictRate: 2}, "conflict_rate must be between 0 and 1"},
		{Faults{HangRate: 0.6, LostAnswerRate: 0.6}, "must not exceed 1"},
		{Faults{RetryAfter: Duration(-time.Second)}, "retry_after must not be negative"},
	}
	for _, tt := range tests {
		if err := tt.f.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.f, err, tt.want)
		}
	}
	if err := (Faults{ErrorRate: 0.5, HangRate: 0.5}).Validate(); err != nil {
		t.Errorf("rates summing to 1: %v", err)
	}
	if _, err := New(Options{Secret: testSecret, Faults: Faults{HangRate: 7}}); err == nil || !strings.Contains(err.Error(), "hang_rate") {
		t.Errorf("New with bad faults: %v", err)
	}
	for _, secret := range []string{"", "whsec_c2hvcnQ=", strings.TrimPrefix(testSecret, "whsec_")} {
		_, err := New(Options{Secret: secret})
		if err == nil || (len(secret) > 8 && strings.Contains(err.Error(), secret[6:12])) {
			t.Errorf("New with secret %q: %v", secret, err)
		}
	}
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{})
	b.send(t, "msg_1", webhook.Outcome{RequestRef: "r 1&x", Outcome: "deleted", CompletedAt: completed})

	do := func(method, path, body string) reply {
		t.Helper()
		req, _ := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
		resp, err := b.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		return reply{resp.StatusCode, resp.Header, string(rb)}
	}

	r := do("GET", "/_fake/stats", "")
	var st map[string]any
	if err := json.Unmarshal([]byte(r.body), &st); err != nil || r.status != 200 {
		t.Fatalf("stats: %d %s", r.status, r.body)
	}
	for _, k := range []string{"messages", "bad_signatures", "stale_timestamps", "malformed", "violations", "by_type", "by_outcome",
		"request_refs", "request_refs_several_ids", "conflicting_outcomes", "duplicate_webhook_ids", "conflicting_webhook_ids", "faulted"} {
		if _, ok := st[k]; !ok {
			t.Errorf("stats has no %q: %s", k, r.body)
		}
	}

	r = do("GET", "/_fake/events?request_ref=r+1%26x", "")
	var evs struct {
		RequestRef string  `json:"request_ref"`
		Events     []Event `json:"events"`
	}
	if err := json.Unmarshal([]byte(r.body), &evs); err != nil || evs.RequestRef != "r 1&x" || len(evs.Events) != 1 || evs.Events[0].WebhookID != "msg_1" {
		t.Errorf("events: %d %s", r.status, r.body)
	}
	if r := do("GET", "/_fake/events?request_ref=nobody", ""); r.status != 200 || !strings.Contains(r.body, `"events":[]`) {
		t.Errorf("events of nobody: %d %s", r.status, r.body)
	}
	if r := do("GET", "/_fake/events", ""); r.status != 400 || !strings.Contains(r.body, "request_ref") {
		t.Errorf("events without a ref: %d %s", r.status, r.body)
	}

	before := time.Now()
	if r := do("PUT", "/_fake/faults", `{"error_rate":0.25,"retry_after":"2s","outage_for":"1m"}`); r.status != 200 {
		t.Errorf("put faults: %d %s", r.status, r.body)
	}
	if f := fake.Faults(); f.ErrorRate != 0.25 || f.RetryAfter != Duration(2*time.Second) ||
		f.OutageUntil.Before(before.Add(time.Minute)) || f.OutageUntil.After(time.Now().Add(time.Minute)) {
		t.Errorf("faults = %+v", f)
	}
	if r := do("GET", "/_fake/faults", ""); !strings.Contains(r.body, `"retry_after":"2s"`) {
		t.Errorf("get faults: %s", r.body)
	}
	for body, want := range map[string]string{
		`{"eror_rate":1}`:                    `unknown field \"eror_rate\"`,
		`{"conflict_rate":3}`:                "conflict_rate must be between 0 and 1",
		`{"outage_for":"-1s"}`:               "outage_for must not be negative",
		`{"retry_after":5}`:                  "duration must be a string",
		`{"error_rate":0.1} {}`:              "trailing data",
		`{"hang_rate":0.9,"error_rate":0.9}`: "must not exceed 1",
	} {
		if r := do("PUT", "/_fake/faults", body); r.status != 400 || !strings.Contains(r.body, want) {
			t.Errorf("put %s: %d %s, want 400 with %q", body, r.status, r.body, want)
		}
	}
	if f := fake.Faults(); f.ErrorRate != 0.25 {
		t.Errorf("a refused PUT changed the faults: %+v", f)
	}

	if r := do("POST", "/_fake/stats", ""); r.status != 405 || r.header.Get("Allow") != "GET" {
		t.Errorf("POST stats: %d %v", r.status, r.header)
	}
	if r := do("GET", "/_fake/nope", ""); r.status != 404 {
		t.Errorf("unknown admin path: %d", r.status)
	}
	if r := do("POST", "/_fake/reset", ""); r.status != 200 {
		t.Errorf("reset: %d", r.status)
	}
	if st := fake.Stats(); st.Messages != 0 || st.RequestRefs != 0 || len(fake.Events("r 1&x")) != 0 || fake.Faults().ErrorRate != 0.25 {
		t.Errorf("after reset: %+v, faults %+v", st, fake.Faults())
	}
}

// Many senders at once: every message is counted once, and the race detector has its say.
func TestConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	fake, b := setup(t, Options{Faults: Faults{ErrorRate: 0.3}})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			o := webhook.Outcome{RequestRef: "r-" + strconv.Itoa(i%20), Outcome: "deleted", CompletedAt: completed}
			for range 5 {
				if b.sender.Send(context.Background(), "msg_"+strconv.Itoa(i%20), o, time.Now()).Result.Done() {
					return
				}
			}
		})
	}
	wg.Wait()
	st := fake.Stats()
	var accepted int64
	for i := range 20 {
		accepted += int64(len(fake.Events("r-" + strconv.Itoa(i))))
	}
	if st.Messages != accepted+st.Faulted["error"] || st.RequestRefsSeveralIDs != 0 || st.ConflictingWebhookIDs != 0 {
		t.Errorf("stats = %+v, %d accepted", st, accepted)
	}
	if st.ByOutcome["deleted"] != st.RequestRefs || accepted-st.DuplicateWebhookIDs != st.RequestRefs {
		t.Errorf("unique deliveries do not match request_refs: %+v", st)
	}
}
