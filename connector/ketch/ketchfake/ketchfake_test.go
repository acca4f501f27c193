package ketchfake

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

const (
	testSpace     = "account_id"
	testAuthValue = "Bearer ketch-endpoint-secret-77ad"
)

type testBundle struct {
	ts *httptest.Server
}

// setup starts a fake whose callbacks point at itself.
func setup(t *testing.T, opts Options) (*Server, *testBundle) {
	t.Helper()
	fake := New(opts)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	fake.SetCallbackBaseURL(ts.URL)
	return fake, &testBundle{ts: ts}
}

// forwarder is a minimal Ketch door built on package ketch, as the worker's is: it checks the
// configured header, parses, answers, and keeps the parsed requests for a later Notify.
type forwarder struct {
	ts   *httptest.Server
	mu   sync.Mutex
	reqs map[string]ketch.Request
}

func newForwarder(t *testing.T) *forwarder {
	f := &forwarder{reqs: map[string]ketch.Request{}}
	f.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(testAuthValue)) != 1 {
			w.WriteHeader(401)
			w.Write(ketch.ErrorBody(nil, 401, ketch.ErrorForbidden, "unauthorized"))
			return
		}
		body, _ := io.ReadAll(r.Body)
		req, err := ketch.ParseDeleteRequest(body, testSpace)
		var re *ketch.RequestError
		if errors.As(err, &re) {
			code, b := re.Answer(time.Now())
			w.WriteHeader(code)
			w.Write(b)
			return
		}
		f.mu.Lock()
		f.reqs[req.Metadata.UID] = req
		f.mu.Unlock()
		w.Write(ketch.DeleteResponseBody(req.Metadata, ketch.StatusInProgress, "", "req-"+req.Metadata.UID[:8], req.DueAt))
	}))
	t.Cleanup(f.ts.Close)
	return f
}

func (f *forwarder) request(t *testing.T, uid string) ketch.Request {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.reqs[uid]
	if !ok {
		t.Fatalf("the forwarder has no request %s", uid)
	}
	return r
}

// notifyAll sends the event to every callback of the request, as the reporter does.
func notifyAll(t *testing.T, r ketch.Request, st ketch.Status, reason ketch.Reason) []connector.Delivery {
	t.Helper()
	var ds []connector.Delivery
	for _, cb := range r.Callbacks {
		ds = append(ds, ketch.Notify(context.Background(), nil, cb, r.Metadata, ketch.Event{Status: st, Reason: reason, RequestID: "req-1"}))
	}
	return ds
}

func TestDeleteRequestIsWhatKetchSends(t *testing.T) {
	now := time.Now()
	fake, b := setup(t, Options{})
	uid := fakekit.NewUUID()
	body := fake.DeleteRequest(uid, "user-42")

	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	if m["apiVersion"] != "dsr/v1" || m["kind"] != "DeleteRequest" {
		t.Errorf("apiVersion %v kind %v", m["apiVersion"], m["kind"])
	}
	if md := m["metadata"].(map[string]any); md["uid"] != uid || md["tenant"] != "ketchfake" {
		t.Errorf("metadata %v", md)
	}
	r := m["request"].(map[string]any)
	for _, k := range []string{"controller", "property", "environment", "regulation", "jurisdiction", "claims"} {
		if r[k] == nil || r[k] == "" {
			t.Errorf("request.%s missing", k)
		}
	}
	if sub := r["submittedTimestamp"].(float64) - float64(now.Unix()); sub < 0 || sub > 2 || r["dueTimestamp"] != r["submittedTimestamp"].(float64)+30*24*3600 {
		t.Errorf("timestamps %v %v", r["submittedTimestamp"], r["dueTimestamp"])
	}
	spaces := map[string]string{}
	for _, id := range r["identities"].([]any) {
		id := id.(map[string]any)
		spaces[id["identitySpace"].(string)] = id["identityValue"].(string)
	}
	if len(spaces) < 3 || spaces[testSpace] != "user-42" {
		t.Errorf("identities %v", spaces)
	}
	subj := r["subject"].(map[string]any)
	for _, k := range []string{"email", "firstName", "lastName"} {
		if subj[k] == nil || subj[k] == "" {
			t.Errorf("subject.%s missing", k)
		}
	}
	cbs := r["callbacks"].([]any)
	if len(cbs) != 2 {
		t.Fatalf("%d callbacks", len(cbs))
	}
	for i, want := range []string{b.ts.URL + "/callbacks/cb1", b.ts.URL + "/callbacks/cb2"} {
		if got := cbs[i].(map[string]any)["url"]; got != want {
			t.Errorf("callback %d url %v, want %s", i, got, want)
		}
	}
	if h := cbs[0].(map[string]any)["headers"].(map[string]any); !strings.HasPrefix(h["Authorization"].(string), "Bearer cb-") {
		t.Errorf("callback 0 headers %v", h)
	}
	if h := cbs[1].(map[string]any)["headers"].(map[string]any); !strings.HasPrefix(h["X-Ketch-Callback-Token"].(string), "cb-") {
		t.Errorf("callback 1 headers %v", h)
	}

	// Our own parser reads it as the erasure of user-42.
	got, err := ketch.ParseDeleteRequest(body, testSpace)
	if err != nil {
		t.Fatal(err)
	}
	if got.ExternalUserID != "user-42" || got.Metadata.UID != uid || len(got.Callbacks) != 2 || got.DueAt.Unix() != int64(r["dueTimestamp"].(float64)) {
		t.Errorf("parsed %v %q", got, got.ExternalUserID)
	}
}

func TestCredentialsArePerRequestAndStable(t *testing.T) {
	fake, _ := setup(t, Options{})
	cred := func(body []byte) []string {
		r, err := ketch.ParseDeleteRequest(body, testSpace)
		if err != nil {
			t.Fatal(err)
		}
		return []string{r.Callbacks[0].Headers["Authorization"], r.Callbacks[1].Headers["X-Ketch-Callback-Token"]}
	}
	a1 := cred(fake.DeleteRequest("uid-a", "u1"))
	b := cred(fake.DeleteRequest("uid-b", "u2"))
	a2 := cred(fake.DeleteRequest("uid-a", "u1"))
	if a1[0] == b[0] || a1[1] == b[1] || a1[0] == "Bearer "+a1[1] {
		t.Errorf("credentials shared: %v %v", a1, b)
	}
	if a1[0] != a2[0] || a1[1] != a2[1] {
		t.Errorf("a rebuilt request got new credentials: %v %v", a1, a2)
	}
	rec, _ := fake.Request("uid-a")
	if rec.Callbacks[0].Credential != a1[0] || rec.Callbacks[1].Credential != a1[1] {
		t.Errorf("record credentials %v, want %v", rec.Callbacks, a1)
	}
}

func TestRequestOptions(t *testing.T) {
	fake, _ := setup(t, Options{})
	tests := []struct {
		name  string
		opts  []RequestOption
		check func(t *testing.T, r ketch.Request, err error)
	}{
		{"without identity", []RequestOption{WithoutIdentity()}, func(t *testing.T, r ketch.Request, err error) {
			var re *ketch.RequestError
			if !errors.As(err, &re) || re.Kind != ketch.Unidentified {
				t.Errorf("err = %v", err)
			}
		}},
		{"in another space", []RequestOption{InSpace("customer_no")}, func(t *testing.T, r ketch.Request, err error) {
			var re *ketch.RequestError
			if !errors.As(err, &re) || re.Kind != ketch.Unidentified {
				t.Errorf("err = %v", err)
			}
		}},
		{"another kind", []RequestOption{Kind("AccessRequest")}, func(t *testing.T, r ketch.Request, err error) {
			var re *ketch.RequestError
			if !errors.As(err, &re) || re.Kind != ketch.Invalid || re.Field != "kind" {
				t.Errorf("err = %v", err)
			}
		}},
		{"no callbacks", []RequestOption{NoCallbacks()}, func(t *testing.T, r ketch.Request, err error) {
			if err != nil || len(r.Callbacks) != 0 {
				t.Errorf("err = %v, callbacks %d", err, len(r.Callbacks))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ketch.ParseDeleteRequest(fake.DeleteRequest(fakekit.NewUUID(), "user-1", tt.opts...), testSpace)
			tt.check(t, r, err)
		})
	}
}

func TestFinalEventsAreCounted(t *testing.T) {
	fake, _ := setup(t, Options{})
	fwd := newForwarder(t)
	res, err := fake.Push(context.Background(), PushSpec{Target: fwd.ts.URL, AuthValue: testAuthValue, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	done, twice, waiting := res.UIDs[0], res.UIDs[1], res.UIDs[2]

	for _, d := range notifyAll(t, fwd.request(t, done), ketch.StatusCompleted, ketch.ReasonExecuted) {
		if d.Result != connector.Delivered || d.HTTPStatus != 204 {
			t.Errorf("delivery %+v", d)
		}
	}
	notifyAll(t, fwd.request(t, twice), ketch.StatusInProgress, "")
	notifyAll(t, fwd.request(t, twice), ketch.StatusCompleted, ketch.ReasonNoMatch)
	for _, d := range notifyAll(t, fwd.request(t, twice), ketch.StatusDenied, ketch.ReasonUnknown) {
		// Ketch says it accepts no event after a final one, not how it answers: counted, 204.
		if d.Result != connector.Delivered {
			t.Errorf("delivery %+v", d)
		}
	}
	// Only one of the two callbacks of the third request hears of it.
	r := fwd.request(t, waiting)
	ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted})

	st := fake.Stats()
	want := Stats{Events: 9, FinalEvents: 7, DuplicateFinals: 2, EventsAfterFinal: 2,
		UIDsOneFinal: 1, UIDsMultipleFinals: 1, UIDsAwaitingFinal: 1}
	if st.Events != want.Events ||
		st.FinalEvents != want.FinalEvents || st.DuplicateFinals != want.DuplicateFinals || st.EventsAfterFinal != want.EventsAfterFinal ||
		st.UIDsOneFinal != want.UIDsOneFinal || st.UIDsMultipleFinals != want.UIDsMultipleFinals || st.UIDsAwaitingFinal != want.UIDsAwaitingFinal {
		t.Errorf("stats\n got %+v\nwant %+v", st, want)
	}
	if st.EventsByPair["completed/executed"] != 3 || st.EventsByPair["completed/no_match"] != 2 ||
		st.EventsByPair["denied/unknown"] != 2 || st.EventsByPair["in_progress"] != 2 {
		t.Errorf("events by pair %v", st.EventsByPair)
	}
	rec, _ := fake.Request(twice)
	if rec.Response == nil || rec.Response.Status != "in_progress" || rec.Callbacks[1].Finals != 2 || rec.Callbacks[1].Pairs["denied/unknown"] != 1 {
		t.Errorf("record %+v", rec)
	}
}

func TestEventsForARequestAnsweredFinal(t *testing.T) {
	fake, _ := setup(t, Options{})
	fwd := newForwarder(t)
	res, _ := fake.Push(context.Background(), PushSpec{Target: fwd.ts.URL, AuthValue: testAuthValue, Count: 1, IdentitySpace: "email_only"})
	if res.Answers["denied/insufficient_identification"] != 1 {
		t.Fatalf("answers %v", res.Answers)
	}
	// A forwarder that sent an event anyway, with the credential from the body.
	body := fake.DeleteRequest(res.UIDs[0], "user-1")
	var m struct {
		Request struct{ Callbacks []ketch.Callback } `json:"request"`
	}
	json.Unmarshal(body, &m)
	ketch.Notify(context.Background(), nil, m.Request.Callbacks[0], ketch.Metadata{UID: res.UIDs[0], Tenant: "ketchfake"},
		ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted})
	if st := fake.Stats(); st.EventsAfterFinal != 1 || st.UIDsAwaitingFinal+st.UIDsOneFinal != 0 {
		t.Errorf("stats %+v", st)
	}
}

// post sends a raw callback to the fake.
func post(t *testing.T, url string, header http.Header, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func eventJSON(uid, tenant, status, reason string) string {
	return `{"apiVersion":"dsr/v1","kind":"DeleteStatusEvent","metadata":{"uid":"` + uid + `","tenant":"` + tenant +
		`"},"event":{"status":"` + status + `","reason":"` + reason + `","expectedCompletionTimestamp":1767225600,"requestID":"r1"}}`
}

func TestCallbackCredentials(t *testing.T) {
	fake, b := setup(t, Options{})
	a, other := fakekit.NewUUID(), fakekit.NewUUID()
	fake.DeleteRequest(a, "user-a")
	fake.DeleteRequest(other, "user-b")
	recA, _ := fake.Request(a)
	recB, _ := fake.Request(other)
	hdr := func(k, v string) http.Header {
		h := http.Header{"Content-Type": {"application/json"}}
		if k != "" {
			h.Set(k, v)
		}
		return h
	}
	tests := []struct {
		name   string
		path   string
		header http.Header
		body   string
		code   int
	}{
		{"right", "/callbacks/cb1", hdr("Authorization", recA.Callbacks[0].Credential), eventJSON(a, "ketchfake", "in_progress", ""), 204},
		{"second callback right", "/callbacks/cb2", hdr("X-Ketch-Callback-Token", recA.Callbacks[1].Credential), eventJSON(a, "ketchfake", "in_progress", ""), 204},
		{"missing", "/callbacks/cb1", hdr("", ""), eventJSON(a, "ketchfake", "in_progress", ""), 401},
		{"wrong", "/callbacks/cb1", hdr("Authorization", "Bearer cb-0000"), eventJSON(a, "ketchfake", "in_progress", ""), 401},
		{"bearer missing", "/callbacks/cb1", hdr("Authorization", strings.TrimPrefix(recA.Callbacks[0].Credential, "Bearer ")), eventJSON(a, "ketchfake", "in_progress", ""), 401},
		{"another callback's credential", "/callbacks/cb1", hdr("Authorization", recA.Callbacks[1].Credential), eventJSON(a, "ketchfake", "in_progress", ""), 401},
		{"another request's credential", "/callbacks/cb1", hdr("Authorization", recB.Callbacks[0].Credential), eventJSON(a, "ketchfake", "in_progress", ""), 401},
		{"unknown callback", "/callbacks/cb9x", hdr("Authorization", recA.Callbacks[0].Credential), eventJSON(a, "ketchfake", "in_progress", ""), 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := post(t, b.ts.URL+tt.path, tt.header, tt.body)
			if code != tt.code {
				t.Errorf("code %d, want %d: %s", code, tt.code, body)
			}
			if code >= 400 && !strings.Contains(body, `"kind":"Error"`) {
				t.Errorf("error body %s", body)
			}
		})
	}
	if st := fake.Stats(); st.BadCredentials != 5 || st.Events != 2 {
		t.Errorf("bad_credentials %d events %d, want 5 and 2", st.BadCredentials, st.Events)
	}
}

func TestMalformedEvents(t *testing.T) {
	fake, b := setup(t, Options{})
	uid := fakekit.NewUUID()
	fake.DeleteRequest(uid, "user-a")
	rec, _ := fake.Request(uid)
	ok := eventJSON(uid, "ketchfake", "completed", "executed")
	tests := []struct {
		name        string
		contentType string
		body        string
		field       string
	}{
		{"text", "text/plain", ok, "Content-Type"},
		{"not JSON", "application/json", "status=completed", "body"},
		{"no event", "application/json", `{"apiVersion":"dsr/v1","kind":"DeleteStatusEvent","metadata":{"uid":"` + uid + `","tenant":"ketchfake"}}`, "event"},
		{"kind key folded", "application/json", strings.Replace(ok, `"kind"`, `"Kind"`, 1), "kind"},
		{"apiVersion", "application/json", strings.Replace(ok, `"dsr/v1"`, `"v1"`, 1), "apiVersion"},
		{"kind", "application/json", strings.Replace(ok, "DeleteStatusEvent", "AccessStatusEvent", 1), "kind"},
		{"status", "application/json", eventJSON(uid, "ketchfake", "Completed", "executed"), "event.status"},
		{"failed is no status", "application/json", eventJSON(uid, "ketchfake", "failed", ""), "event.status"},
		{"pair", "application/json", eventJSON(uid, "ketchfake", "denied", "executed"), "event.reason"},
		{"unknown uid", "application/json", eventJSON("not-a-uid-we-sent", "ketchfake", "completed", "executed"), "metadata.uid"},
		{"tenant", "application/json", eventJSON(uid, "axonic", "completed", "executed"), "metadata.tenant"},
		{"expected a string", "application/json", strings.Replace(ok, "1767225600", `"soon"`, 1), "event.expectedCompletionTimestamp"},
		{"expected a fraction", "application/json", strings.Replace(ok, "1767225600", `1.5`, 1), "event.expectedCompletionTimestamp"},
		{"requestID a number", "application/json", strings.Replace(ok, `"r1"`, `1`, 1), "event.requestID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Content-Type": {tt.contentType}, "Authorization": {rec.Callbacks[0].Credential}}
			code, body := post(t, b.ts.URL+"/callbacks/cb1", h, tt.body)
			if code != 400 || !strings.Contains(body, `"message":"`+tt.field+`: `) || !strings.Contains(body, `"status":"invalid"`) {
				t.Errorf("got %d %s, want 400 naming %s", code, body, tt.field)
			}
		})
	}
	st := fake.Stats()
	if st.MalformedEvents != int64(len(tests)) || st.Events != 0 {
		t.Errorf("malformed %d events %d", st.MalformedEvents, st.Events)
	}
}

func TestCallbackFaults(t *testing.T) {
	tests := []struct {
		name   string
		faults Faults
		result connector.Result
		code   int
		kind   string
	}{
		{"error", Faults{ErrorRate: 1}, connector.Retry, 500, "error"},
		{"rate limit", Faults{RateLimitRate: 1, RetryAfter: Duration(1500 * time.Millisecond)}, connector.RateLimited, 429, "rate_limit"},
		{"conflict", Faults{ConflictRate: 1}, connector.Rejected, 409, "conflict"},
		// A callback's credential is its own: its 401 fails that report alone (ketch.Notify).
		{"reject credentials", Faults{RejectCredentials: true}, connector.Rejected, 401, "reject_credentials"},
		{"outage", Faults{OutageUntil: time.Now().Add(time.Hour)}, connector.Retry, 503, "outage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, _ := setup(t, Options{Faults: tt.faults})
			uid := fakekit.NewUUID()
			r, err := ketch.ParseDeleteRequest(fake.DeleteRequest(uid, "user-1"), testSpace)
			if err != nil {
				t.Fatal(err)
			}
			ev := ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted}
			d := ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ev)
			if d.Result != tt.result || d.HTTPStatus != tt.code {
				t.Errorf("delivery %+v, want %s %d", d, tt.result, tt.code)
			}
			if tt.kind == "rate_limit" && d.RetryAfter != 2*time.Second {
				t.Errorf("Retry-After %v, want 2s", d.RetryAfter)
			}
			st := fake.Stats()
			if st.Faulted[tt.kind] != 1 || st.Events != 0 || st.FinalEvents != 0 {
				t.Errorf("stats %+v", st)
			}
			if tt.kind == "rate_limit" {
				ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ev) // at once: too early
				if st := fake.Stats(); st.EarlyRetries != 1 {
					t.Errorf("early retries %d", st.EarlyRetries)
				}
			}
			// Once the fault is gone the same event is taken as the first final one.
			fake.SetFaults(Faults{})
			if d := ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ev); d.Result != connector.Delivered {
				t.Errorf("after the fault: %+v", d)
			}
			if st := fake.Stats(); st.FinalEvents != 1 || st.DuplicateFinals != 0 || st.EventsAfterFinal != 0 {
				t.Errorf("after the fault: %+v", st)
			}
		})
	}
}

func TestLostAnswerTakesTheEventAndDropsTheConnection(t *testing.T) {
	fake, _ := setup(t, Options{Faults: Faults{LostAnswerRate: 1}})
	r, _ := ketch.ParseDeleteRequest(fake.DeleteRequest(fakekit.NewUUID(), "user-1"), testSpace)
	ev := ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted}
	d := ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ev)
	if d.Result != connector.Retry || d.HTTPStatus != 0 {
		t.Errorf("delivery %+v, want a retry without an answer", d)
	}
	st := fake.Stats()
	if st.Faulted["lost_answer"] != 1 || st.Events != 1 || st.FinalEvents != 1 {
		t.Errorf("stats %+v, want the event taken once and the fault counted once", st)
	}
	// The retry the lost answer causes is a second final event at the same callback.
	fake.SetFaults(Faults{})
	if d := ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ev); d.Result != connector.Delivered {
		t.Errorf("the retry: %+v", d)
	}
	if st := fake.Stats(); st.FinalEvents != 2 || st.DuplicateFinals != 1 || st.Faulted["lost_answer"] != 1 {
		t.Errorf("after the retry: %+v", st)
	}
}

func TestHangBlocksUntilTheClientGoes(t *testing.T) {
	fake, _ := setup(t, Options{Faults: Faults{HangRate: 1}})
	r, _ := ketch.ParseDeleteRequest(fake.DeleteRequest(fakekit.NewUUID(), "user-1"), testSpace)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	d := ketch.Notify(ctx, nil, r.Callbacks[0], r.Metadata, ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted})
	if d.Result != connector.Retry || d.HTTPStatus != 0 || time.Since(start) < 100*time.Millisecond {
		t.Errorf("delivery %+v after %v", d, time.Since(start))
	}
	if st := fake.Stats(); st.Faulted["hang"] != 1 {
		t.Errorf("faulted %v", st.Faulted)
	}
}

func TestLatency(t *testing.T) {
	fake, _ := setup(t, Options{Faults: Faults{Latency: Duration(120 * time.Millisecond)}})
	r, _ := ketch.ParseDeleteRequest(fake.DeleteRequest(fakekit.NewUUID(), "user-1"), testSpace)
	start := time.Now()
	d := ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted})
	if d.Result != connector.Delivered || time.Since(start) < 120*time.Millisecond {
		t.Errorf("delivery %+v after %v", d, time.Since(start))
	}
}

func TestFaultsValidate(t *testing.T) {
	tests := []struct {
		name string
		f    Faults
		want string
	}{
		{"none", Faults{}, ""},
		{"all at once within 1", Faults{ErrorRate: 0.25, RateLimitRate: 0.25, ConflictRate: 0.25, HangRate: 0.25}, ""},
		{"negative", Faults{ErrorRate: -0.1}, "error_rate must be between 0 and 1"},
		{"above 1", Faults{ConflictRate: 1.5}, "conflict_rate must be between 0 and 1"},
		{"sum", Faults{RateLimitRate: 0.6, HangRate: 0.6}, "must not exceed 1"},
		{"negative retry_after", Faults{RetryAfter: Duration(-time.Second)}, "retry_after must not be negative"},
		{"negative jitter", Faults{LatencyJitter: Duration(-time.Second)}, "latency_jitter must not be negative"},
	}
	for _, tt := range tests {
		err := tt.f.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: Validate() = %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestPushRecordsTheAnswers(t *testing.T) {
	tests := []struct {
		name   string
		auth   string
		space  string
		answer string
	}{
		{"in progress", testAuthValue, "", "in_progress"},
		{"wrong credential", "Bearer nope", "", "http_401"},
		{"no credential", "", "", "http_401"},
		{"missing identity", testAuthValue, "email_only", "denied/insufficient_identification"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, _ := setup(t, Options{})
			fwd := newForwarder(t)
			res, err := fake.Push(context.Background(), PushSpec{Target: fwd.ts.URL, AuthValue: tt.auth, Count: 3, IdentitySpace: tt.space})
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != 3 || res.Answers[tt.answer] != 3 || len(res.UIDs) != 3 {
				t.Errorf("result %+v, want 3 %s", res, tt.answer)
			}
			rec, _ := fake.Request(res.UIDs[2])
			if rec.Response == nil || rec.Response.key() != tt.answer || rec.Response.Malformed != "" {
				t.Errorf("record of the third: %+v", rec)
			}
		})
	}
}

func TestPushFlagsAnswersThatBreakTheSpec(t *testing.T) {
	tests := []struct {
		name   string
		answer http.HandlerFunc
		field  string
	}{
		{"plain 401", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 401) }, "Content-Type"},
		{"error code not the status", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			w.Write(ketch.ErrorBody(nil, 422, ketch.ErrorInvalid, "bad"))
		}, "error.code"},
		{"another uid", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(ketch.DeleteResponseBody(ketch.Metadata{UID: "other", Tenant: "ketchfake"}, ketch.StatusInProgress, "", "", time.Time{}))
		}, "metadata"},
		{"bad pair", func(w http.ResponseWriter, r *http.Request) {
			var m struct{ Metadata ketch.Metadata }
			json.NewDecoder(r.Body).Decode(&m)
			w.Header().Set("Content-Type", "application/json")
			w.Write(ketch.DeleteResponseBody(m.Metadata, ketch.StatusInProgress, ketch.ReasonExecuted, "", time.Time{}))
		}, "response.reason"},
		{"status case", func(w http.ResponseWriter, r *http.Request) {
			var m struct{ Metadata ketch.Metadata }
			json.NewDecoder(r.Body).Decode(&m)
			w.Header().Set("Content-Type", "application/json")
			w.Write(ketch.DeleteResponseBody(m.Metadata, "In_Progress", "", "", time.Time{}))
		}, "response.status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, _ := setup(t, Options{})
			ts := httptest.NewServer(tt.answer)
			defer ts.Close()
			res, _ := fake.Push(context.Background(), PushSpec{Target: ts.URL, AuthValue: testAuthValue, Count: 1})
			rec, _ := fake.Request(res.UIDs[0])
			if rec.Response == nil || !strings.HasPrefix(rec.Response.Malformed, tt.field+":") {
				t.Errorf("record %+v, want %s malformed", rec.Response, tt.field)
			}
		})
	}
}

func TestPushArguments(t *testing.T) {
	fake := New(Options{})
	ctx := context.Background()
	if _, err := fake.Push(ctx, PushSpec{Target: "http://127.0.0.1:1/", AuthValue: "x", Count: 1}); err == nil || !strings.Contains(err.Error(), "callback base URL") {
		t.Errorf("no base: %v", err)
	}
	fake.SetCallbackBaseURL("http://127.0.0.1:2")
	for _, tt := range []struct {
		target, header string
		n              int
		want           string
	}{
		{"http://x/", "Authorization", 0, "count"},
		{"http://x/", "Authorization", fakekit.MaxPush + 1, "count"},
		{"/v1/ketch", "Authorization", 1, "target"},
		{"ftp://x/", "Authorization", 1, "target"},
		{"http://x/", "Bad Header", 1, "auth_header"},
	} {
		_, err := fake.Push(ctx, PushSpec{Target: tt.target, AuthHeader: tt.header, AuthValue: "secret-value-9", Count: tt.n})
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "secret-value-9") {
			t.Errorf("Push(%q, %q, %d) = %v, want it to name %s", tt.target, tt.header, tt.n, err, tt.want)
		}
	}
	// No answer at all.
	res, err := fake.Push(ctx, PushSpec{Target: "http://127.0.0.1:1/", AuthValue: "x", Count: 2})
	if err != nil || res.Answers["no_answer"] != 2 {
		t.Errorf("unreachable: %+v %v", res, err)
	}
	// A done context stops the push.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	res, err = fake.Push(cctx, PushSpec{Target: "http://127.0.0.1:1/", AuthValue: "x", Count: 100})
	if !errors.Is(err, context.Canceled) || res.Sent == 100 {
		t.Errorf("cancelled: sent %d, %v", res.Sent, err)
	}
}

func TestAdmin(t *testing.T) {
	fake, b := setup(t, Options{})
	fwd := newForwarder(t)
	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, b.ts.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}

	code, out := do("POST", "/_fake/push", `{"target":"`+fwd.ts.URL+`","auth_value":"`+testAuthValue+`","count":4,"prefix":"p-"}`)
	var res PushResult
	json.Unmarshal([]byte(out), &res)
	if code != 200 || res.Sent != 4 || res.Answers["in_progress"] != 4 || strings.Contains(out, testAuthValue) {
		t.Fatalf("push: %d %s", code, out)
	}
	if code, out := do("POST", "/_fake/push", `{"target":"`+fwd.ts.URL+`","auth_value":"`+testAuthValue+`","count":1,"identity_space":"email_only"}`); code != 200 ||
		!strings.Contains(out, `"denied/insufficient_identification":1`) {
		t.Errorf("push in another space: %d %s", code, out)
	}
	for _, bad := range []string{`{"target":"","count":1}`, `{"target":"` + fwd.ts.URL + `","count":0}`, `{"target":"x","count":1,"colour":"red"}`, `nope`} {
		if code, out := do("POST", "/_fake/push", bad); code != 400 || !strings.Contains(out, `"error"`) {
			t.Errorf("push %s: %d %s", bad, code, out)
		}
	}

	code, out = do("GET", "/_fake/requests/"+res.UIDs[0], "")
	var rec RequestRecord
	json.Unmarshal([]byte(out), &rec)
	if code != 200 || rec.UID != res.UIDs[0] || rec.Response == nil || rec.Response.Status != "in_progress" || len(rec.Callbacks) != 2 {
		t.Errorf("requests: %d %s", code, out)
	}
	if code, _ := do("GET", "/_fake/requests/nope", ""); code != 404 {
		t.Errorf("unknown request: %d", code)
	}

	if code, out := do("PUT", "/_fake/faults", `{"error_rate":0.5,"retry_after":"2s","reject_credentials":true}`); code != 200 || !strings.Contains(out, `"retry_after":"2s"`) {
		t.Errorf("put faults: %d %s", code, out)
	}
	if f := fake.Faults(); f.ErrorRate != 0.5 || time.Duration(f.RetryAfter) != 2*time.Second || !f.RejectCredentials {
		t.Errorf("faults %+v", f)
	}
	for body, want := range map[string]string{
		`{"error_rate":2}`:          "error_rate must be between 0 and 1",
		`{"eror_rate":0.1}`:         "unknown field",
		`{"latency":"fast"}`:        "latency",
		`{"retry_after":"-1s"}`:     "retry_after must not be negative",
		`{"conflict_rate":"often"}`: "conflict_rate",
		`{"error_rate":`:            "body",
	} {
		if code, out := do("PUT", "/_fake/faults", body); code != 400 || !strings.Contains(out, want) {
			t.Errorf("put %s: %d %s, want %q", body, code, out, want)
		}
	}
	if code, out := do("GET", "/_fake/faults", ""); code != 200 || !strings.Contains(out, `"error_rate":0.5`) {
		t.Errorf("get faults: %d %s", code, out)
	}

	code, out = do("GET", "/_fake/stats", "")
	var st Stats
	json.Unmarshal([]byte(out), &st)
	if code != 200 || st.UIDsAwaitingFinal != 4 {
		t.Errorf("stats: %d %s", code, out)
	}
	for _, k := range []string{`"events_by_pair"`, `"uids_one_final"`, `"events_after_final"`, `"bad_credentials"`, `"early_retries"`} {
		if !strings.Contains(out, k) {
			t.Errorf("stats lack %s: %s", k, out)
		}
	}

	if code, _ := do("POST", "/_fake/reset", ""); code != 204 {
		t.Errorf("reset: %d", code)
	}
	if st := fake.Stats(); st.UIDsAwaitingFinal != 0 {
		t.Errorf("after reset: %+v", st)
	}
	if _, ok := fake.Request(res.UIDs[0]); ok {
		t.Error("reset kept a request")
	}
	if f := fake.Faults(); f.ErrorRate != 0.5 {
		t.Error("reset dropped the faults")
	}

	for _, c := range []struct{ method, path string }{{"POST", "/_fake/stats"}, {"DELETE", "/_fake/faults"}, {"GET", "/_fake/reset"}, {"GET", "/_fake/push"}} {
		if code, _ := do(c.method, c.path, ""); code != 405 {
			t.Errorf("%s %s: %d, want 405", c.method, c.path, code)
		}
	}
	if code, _ := do("GET", "/_fake/nope", ""); code != 404 {
		t.Errorf("unknown admin: %d", code)
	}
	if code, out := do("GET", "/elsewhere", ""); code != 404 || !strings.Contains(out, `"kind":"Error"`) {
		t.Errorf("elsewhere: %d %s", code, out)
	}
	if code, _ := do("GET", "/callbacks/cb1", ""); code != 405 {
		t.Errorf("GET callback: %d", code)
	}
}

func TestEndToEndThroughBothSides(t *testing.T) {
	fake, _ := setup(t, Options{CallbacksPerRequest: 3, Faults: Faults{ErrorRate: 0.3}})
	fwd := newForwarder(t)
	const n = 40
	res, err := fake.Push(context.Background(), PushSpec{Target: fwd.ts.URL, AuthValue: testAuthValue, Count: n})
	if err != nil || res.Answers["in_progress"] != n {
		t.Fatalf("push %+v %v", res, err)
	}
	// The reporter's loop in miniature: retry each callback until delivered.
	for i, uid := range res.UIDs {
		r := fwd.request(t, uid)
		st, reason := ketch.FinalEvent([]string{"deleted", "not_found", "exhausted"}[i%3])
		for _, cb := range r.Callbacks {
			for try := 0; ; try++ {
				d := ketch.Notify(context.Background(), nil, cb, r.Metadata, ketch.Event{Status: st, Reason: reason, RequestID: "req"})
				if d.Result.Done() {
					break
				}
				if d.Result != connector.Retry || try > 50 {
					t.Fatalf("delivery %+v", d)
				}
			}
		}
	}
	st := fake.Stats()
	if st.UIDsOneFinal != n || st.FinalEvents != 3*n || st.DuplicateFinals != 0 || st.EventsAfterFinal != 0 || st.BadCredentials != 0 || st.MalformedEvents != 0 {
		t.Errorf("stats %+v", st)
	}
	if st.Faulted["error"] == 0 {
		t.Error("no fault was injected")
	}
	if st.EventsByPair["completed/executed"]+st.EventsByPair["completed/no_match"]+st.EventsByPair["denied/unknown"] != 3*n {
		t.Errorf("by pair %v", st.EventsByPair)
	}
}

func TestUUIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		u := fakekit.NewUUID()
		if len(u) != 36 || u[14] != '4' || !bytes.ContainsAny([]byte{u[19]}, "89ab") || seen[u] {
			t.Fatalf("uuid %s", u)
		}
		seen[u] = true
	}
}
