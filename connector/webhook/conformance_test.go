package webhook_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector/connectortest"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
)

func TestConformance(t *testing.T) {
	connectortest.Run(t, webhook.Connector{}, newKit(t))
}

// kit is the generic API's side of the suite: requests are pushed as an in-house system would,
// and outcomes land at webhookfake.
type kit struct {
	*webhookfake.Server
	token, secret string

	mu   sync.Mutex
	refs []string
}

func newKit(t *testing.T) *kit {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	fake, err := webhookfake.New(webhookfake.Options{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	return &kit{Server: fake, token: "api-token-conformance-5f1c2a", secret: secret}
}

func (k *kit) Settings(url string) map[string]string {
	return map[string]string{"API_TOKEN": k.token, "REPORT_WEBHOOK_URL": url + "/outcomes", "REPORT_WEBHOOK_SECRET": k.secret}
}

func (k *kit) SetFaults(f connectortest.Faults) {
	k.Server.SetFaults(webhookfake.Faults{ErrorRate: f.ErrorRate, RateLimitRate: f.RateLimitRate,
		RetryAfter: webhookfake.Duration(f.RetryAfter), HangRate: f.HangRate, LostAnswerRate: f.LostAnswerRate})
}

// Finals counts the distinct webhook-ids taken for each request: a repeat of a message the
// receiver took already is dropped by its webhook-id, as Standard Webhooks asks.
func (k *kit) Finals() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]int{}
	for _, ref := range k.refs {
		for _, ev := range k.Events(ref) {
			if !ev.Repeat {
				out[ref]++
			}
		}
	}
	return out
}

func (k *kit) Secrets() []string {
	return []string{k.token, strings.TrimPrefix(k.secret, "whsec_")}
}

func (k *kit) post(base, token, body string) *http.Request {
	req, _ := http.NewRequest("POST", base+"/v1/erasure-requests", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req
}

func (k *kit) Request(base, id, user string) *http.Request {
	k.mu.Lock()
	k.refs = append(k.refs, id)
	k.mu.Unlock()
	body, _ := json.Marshal(map[string]string{"request_ref": id, "external_user_id": user})
	return k.post(base, k.token, string(body))
}

func (k *kit) Unauthenticated(base, id, user string) *http.Request {
	body, _ := json.Marshal(map[string]string{"request_ref": id, "external_user_id": user})
	return k.post(base, "wrong-"+k.token, string(body))
}

func (k *kit) BadInputs(base string) []connectortest.BadInput {
	user := `"external_user_id":"person-bad@example.com"`
	bad := func(name, field, body string) connectortest.BadInput {
		return connectortest.BadInput{Name: name, Field: field, Request: k.post(base, k.token, body)}
	}
	return []connectortest.BadInput{
		bad("no request_ref", "request_ref", `{`+user+`}`),
		bad("blank external_user_id", "external_user_id", `{"request_ref":"b-1","external_user_id":"  "}`),
		bad("repeated key", "external_user_id", `{"request_ref":"b-2",`+user+`,`+user+`}`),
		bad("unknown field", "email", `{"request_ref":"b-3",`+user+`,"email":"a@b"}`),
		bad("bad due_at", "due_at", `{"request_ref":"b-4",`+user+`,"due_at":"soon"}`),
		bad("request_ref over 255 bytes", "request_ref", fmt.Sprintf(`{"request_ref":%q,%s}`, strings.Repeat("r", 256), user)),
		bad("another connector's prefix", "request_ref", `{"request_ref":"other:1",`+user+`}`),
	}
}

func (k *kit) Field(status int, body []byte) string {
	var e struct {
		Error struct{ Field string } `json:"error"`
	}
	_ = json.NewDecoder(bytes.NewReader(body)).Decode(&e)
	return e.Error.Field
}

func (k *kit) Accepted() int { return http.StatusAccepted }
