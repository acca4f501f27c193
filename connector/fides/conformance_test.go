package fides_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/connectortest"
	"github.com/erasure-worker/erasure-worker/connector/fides"
	"github.com/erasure-worker/erasure-worker/connector/fides/fidesfake"
)

// Fides has no failure callback: the kit's Unreported tells the suite so, and it checks that
// those reports end failed with their reason, told to no one.
func TestConformance(t *testing.T) {
	connectortest.Run(t, fides.Connector{}, newKit())
}

// kit is Fides' side of the suite: erasure requests as Fides' SaaS connector sends them, whose
// callbacks land at fidesfake, which counts the completions of each task as Fides does.
type kit struct {
	*fidesfake.Server
	auth string

	mu  sync.Mutex
	ids []string
}

// The kit's tasks await their callback 100 ms after they were built, and callbacks are held
// 300 ms after intake: the hold covers the park, as FIDES_CALLBACK_DELAY must.
func newKit() *kit {
	return &kit{Server: fidesfake.New(fidesfake.Options{ParkDelay: 100 * time.Millisecond}), auth: "fides-conformance-5e1f"}
}

func (k *kit) Settings(url string) map[string]string {
	return map[string]string{"FIDES_AUTH_TOKEN": k.auth, "FIDES_URL": url, "FIDES_CALLBACK_DELAY": "300ms"}
}

func (k *kit) SetFaults(f connectortest.Faults) {
	k.Server.SetFaults(fidesfake.Faults{ErrorRate: f.ErrorRate, RateLimitRate: f.RateLimitRate,
		RetryAfter: fidesfake.Duration(f.RetryAfter), HangRate: f.HangRate, LostAnswerRate: f.LostAnswerRate})
}

// Finals is, for each privacy request, how many completions Fides took for its task: a repeat
// of a completed task is answered 400 and not taken again.
func (k *kit) Finals() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]int{}
	for _, id := range k.ids {
		rec, _ := k.Task(id)
		out[id] = int(rec.Completions)
	}
	return out
}

func (k *kit) Secrets() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	secrets := []string{k.auth}
	for _, id := range k.ids {
		rec, _ := k.Task(id)
		secrets = append(secrets, rec.Token)
	}
	return secrets
}

func (k *kit) build(base, auth, id, user string) *http.Request {
	req, err := k.ErasureRequest(base+"/v1/fides/erasures", auth, id, user)
	if err != nil {
		panic(err)
	}
	return req
}

func (k *kit) Request(base, id, user string) *http.Request {
	k.mu.Lock()
	k.ids = append(k.ids, id)
	k.mu.Unlock()
	return k.build(base, k.auth, id, user)
}

func (k *kit) Unauthenticated(base, id, user string) *http.Request {
	return k.build(base, "wrong", id, user)
}

func (k *kit) BadInputs(base string) []connectortest.BadInput {
	// changed is a valid request of Fides with another body or headers.
	changed := func(name, field, body string, header func(h http.Header)) connectortest.BadInput {
		req := k.build(base, k.auth, "bad-"+strings.ReplaceAll(name, " ", "-"), "person-bad@example.com")
		if body != "" {
			req.Body, req.ContentLength = nopCloser{bytes.NewReader([]byte(body))}, int64(len(body))
		}
		if header != nil {
			header(req.Header)
		}
		return connectortest.BadInput{Name: name, Field: field, Request: req}
	}
	set := func(k, v string) func(http.Header) { return func(h http.Header) { h.Set(k, v) } }
	return []connectortest.BadInput{
		changed("no privacy_request_id", "privacy_request_id", `{"external_user_id":"person-bad@example.com"}`, nil),
		changed("privacy_request_id not a string", "privacy_request_id", `{"privacy_request_id":12,"external_user_id":"person-bad@example.com"}`, nil),
		changed("an unfilled identity", "external_user_id", `{"privacy_request_id":"pri_1","external_user_id":""}`, nil),
		changed("a misspelt field", "external_id", `{"privacy_request_id":"pri_1","external_id":"person-bad@example.com"}`, nil),
		changed("a field twice", "external_user_id", `{"privacy_request_id":"pri_1","external_user_id":"a","external_user_id":"b"}`, nil),
		changed("privacy_request_id too long with its prefix", "privacy_request_id", `{"privacy_request_id":"`+strings.Repeat("p", 250)+`","external_user_id":"person-bad@example.com"}`, nil),
		changed("reply-to naming a host", "reply-to", "", set("reply-to", "https://evil.example/api/v1/request-task/callback")),
		changed("reply-to climbing up", "reply-to", "", set("reply-to", "/api/v1/../../admin")),
		changed("reply-to with a query", "reply-to", "", set("reply-to", "/api/v1/request-task/callback?next=x")),
		changed("reply-to-token alone", "reply-to", "", func(h http.Header) { h.Del("reply-to") }),
		changed("reply-to alone", "reply-to-token", "", func(h http.Header) { h.Del("reply-to-token") }),
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// Field is the field a refusal names.
func (k *kit) Field(status int, body []byte) string {
	var e struct {
		Error struct{ Field string } `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error.Field
}

func (k *kit) Accepted() int { return http.StatusAccepted }

// Unreported tells which outcomes Fides is never told: the failures, for which it has no
// callback. Their reports end failed with the reason, and Finals counts 0 for them.
func (k *kit) Unreported(outcome string) bool {
	_, told := fides.RowsMasked(outcome)
	return !told
}
