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
	// The fake serves plain http on loopback: its host:port, and nothing else, is an exception.
	return map[string]string{"KETCH_AUTH_VALUE": k.auth, "KETCH_IDENTITY_SPACE": "account_id",
		"KETCH_CALLBACK_ALLOW": strings.TrimPrefix(url, "http://")}
}

func (k *kit) SetFaults(f connectortest.Faults) {
	k.Server.SetFaults(ketchfake.Faults{ErrorRate: f.ErrorRate, RateLimitRate: f.RateLimitRate,
		RetryAfter: ketchfake.Duration(f.RetryAfter), HangRate: f.HangRate, LostAnswerRate: f.LostAnswerRate})
}

// Finals is, for each request, how many final statuses one of its callbacks was told: the
// distinct status/reason pairs of its final events, 1 when every callback had exactly one. A
// sender cannot tell a lost answer from a hang, so after one the same event comes again, byte for
// byte; Ketch records a request's final status, and the same status told twice is one, as a
// Standard Webhooks receiver counts one webhook-id. A second, different final status counts 2.
func (k *kit) Finals() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]int{}
	for _, uid := range k.uids {
		rec, _ := k.Server.Request(uid)
		out[uid] = 1
		for _, cb := range rec.Callbacks {
			finals := 0
			for pair := range cb.Pairs {
				if st, _, _ := strings.Cut(pair, "/"); ketch.Status(st).Final() {
					finals++
				}
			}
			if finals != 1 {
				out[uid] = finals
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
		bad("callback in plain http", "request.callbacks[0].url", func(m map[string]any) {
			rq(m)["callbacks"].([]any)[0].(map[string]any)["url"] = "http://cb.example.com/cb"
		}),
		bad("callback to loopback", "request.callbacks[1].url", func(m map[string]any) {
			rq(m)["callbacks"].([]any)[1].(map[string]any)["url"] = "https://127.0.0.1:9090/metrics"
		}),
		bad("callback to the cloud's metadata", "request.callbacks[0].url", func(m map[string]any) {
			rq(m)["callbacks"].([]any)[0].(map[string]any)["url"] = "https://169.254.169.254/latest/meta-data"
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
