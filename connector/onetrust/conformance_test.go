package onetrust_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/connectortest"
	"github.com/erasure-worker/erasure-worker/connector/onetrust"
	"github.com/erasure-worker/erasure-worker/connector/onetrust/onetrustfake"
)

const (
	conformanceInbound  = "inbound-conformance-5d21c9"
	conformanceClientID = "client-conformance-0b7e"
	conformanceSecret   = "secret-conformance-a94f1c"
)

func TestConformance(t *testing.T) {
	connectortest.Run(t, onetrust.Connector{}, newKit(onetrustfake.Options{}))
}

// A OneTrust that answers 200 to a final status sent again, where the default fake answers 400:
// the definition says neither, and the connector must count both as delivered once.
func TestConformanceWhenRepeatsAreAccepted(t *testing.T) {
	connectortest.Run(t, onetrust.Connector{}, newKit(onetrustfake.Options{AcceptRepeatFinal: true}))
}

// kit is OneTrust's side of the suite: the workflow pushes subtasks that onetrustfake knows, and
// the statuses are put back to it with tokens it issues.
type kit struct {
	*onetrustfake.Server

	mu  sync.Mutex
	ids []string
}

func newKit(opts onetrustfake.Options) *kit {
	opts.ClientID, opts.ClientSecret = conformanceClientID, conformanceSecret
	return &kit{Server: onetrustfake.New(opts)}
}

func (k *kit) Settings(url string) map[string]string {
	return map[string]string{"ONETRUST_INBOUND_TOKEN": conformanceInbound, "ONETRUST_URL": url,
		"ONETRUST_CLIENT_ID": conformanceClientID, "ONETRUST_CLIENT_SECRET": conformanceSecret}
}

func (k *kit) SetFaults(f connectortest.Faults) {
	k.Server.SetFaults(onetrustfake.Faults{ErrorRate: f.ErrorRate, RateLimitRate: f.RateLimitRate,
		RetryAfter: onetrustfake.Duration(f.RetryAfter), HangRate: f.HangRate, LostAnswerRate: f.LostAnswerRate})
}

func (k *kit) Secrets() []string {
	return append([]string{conformanceInbound, conformanceClientID, conformanceSecret}, k.Tokens()...)
}

func post(base, bearer string, body []byte) *http.Request {
	req, _ := http.NewRequest("POST", base+"/v1/onetrust/subtasks", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return req
}

func (k *kit) Request(base, id, user string) *http.Request {
	ref := onetrustfake.NewRefID()
	k.AddSubtask(id, ref, user)
	k.mu.Lock()
	k.ids = append(k.ids, id)
	k.mu.Unlock()
	return post(base, conformanceInbound, onetrustfake.Body(id, ref, user, time.Now().Add(30*24*time.Hour)))
}

func (k *kit) Unauthenticated(base, id, user string) *http.Request {
	return post(base, "wrong-"+conformanceInbound, onetrustfake.Body(id, "ZASHMHK2K7", user, time.Time{}))
}

func (k *kit) BadInputs(base string) []connectortest.BadInput {
	bad := func(name, field string, body string) connectortest.BadInput {
		return connectortest.BadInput{Name: name, Field: field, Request: post(base, conformanceInbound, []byte(body))}
	}
	return []connectortest.BadInput{
		bad("no subtask_id", "subtask_id", `{"request_queue_ref_id":"ZASHMHK2K7","external_user_id":"person-b1@example.com"}`),
		bad("subtask_id a number", "subtask_id", `{"subtask_id":7,"request_queue_ref_id":"ZASHMHK2K7","external_user_id":"person-b2@example.com"}`),
		bad("subtask_id too long with its prefix", "subtask_id", `{"subtask_id":"`+strings.Repeat("s", 250)+`","request_queue_ref_id":"ZASHMHK2K7","external_user_id":"person-b3@example.com"}`),
		bad("no request_queue_ref_id", "request_queue_ref_id", `{"subtask_id":"bad-4","external_user_id":"person-b4@example.com"}`),
		bad("blank external_user_id", "external_user_id", `{"subtask_id":"bad-5","request_queue_ref_id":"ZASHMHK2K7","external_user_id":"  "}`),
		bad("template left unfilled", "external_user_id", `{"subtask_id":"bad-6","request_queue_ref_id":"ZASHMHK2K7","external_user_id":""}`),
		bad("external_user_id twice", "external_user_id", `{"subtask_id":"bad-7","request_queue_ref_id":"ZASHMHK2K7","external_user_id":"a@example.com","external_user_id":"b@example.com"}`),
		bad("misspelt due_at", "dueAt", `{"subtask_id":"bad-8","request_queue_ref_id":"ZASHMHK2K7","external_user_id":"person-b8@example.com","dueAt":"2030-01-01T00:00:00Z"}`),
		bad("due_at not RFC 3339", "due_at", `{"subtask_id":"bad-9","request_queue_ref_id":"ZASHMHK2K7","external_user_id":"person-b9@example.com","due_at":"01/02/2030"}`),
	}
}

// Field is the field the door's refusal names, as the generic API's refusals do.
func (k *kit) Field(status int, body []byte) string {
	var e struct {
		Error struct{ Field string } `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error.Field
}

func (k *kit) Accepted() int { return http.StatusAccepted }
