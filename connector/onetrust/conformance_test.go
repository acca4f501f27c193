package onetrust_test

import (
	"bytes"
	"encoding/json"
	"fmt"
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
	k := newKit(onetrustfake.Options{})
	connectortest.Run(t, onetrust.Connector{}, k)
	checkSubtasks(t, k)
}

// A OneTrust that answers 200 to a final status sent again, where the default fake answers 400:
// the definition says neither, and the connector must count both as delivered once.
func TestConformanceWhenRepeatsAreAccepted(t *testing.T) {
	k := newKit(onetrustfake.Options{AcceptRepeatFinal: true})
	connectortest.Run(t, onetrust.Connector{}, k)
	checkSubtasks(t, k)
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

// What the suite cannot see, the fake recorded: every subtask heard IN_PROGRESS before its
// outcome, the outcomes are OneTrust's statuses with a comment that says why, and no comment
// names the person.
func checkSubtasks(t *testing.T, k *kit) {
	t.Helper()
	k.mu.Lock()
	ids := append([]string(nil), k.ids...)
	k.mu.Unlock()
	var finished int
	for _, id := range ids {
		rec, ok := k.Subtask(id)
		if !ok || rec.Finals == 0 {
			continue // the door's subtests store requests that are never finished
		}
		finished++
		if rec.Updates[0].Status != "IN_PROGRESS" {
			t.Errorf("subtask %s heard %s before IN_PROGRESS", id, rec.Updates[0].Status)
		}
		for _, u := range rec.Updates {
			if strings.Contains(u.Comment, rec.ExternalUserID) {
				t.Errorf("subtask %s: a comment holds the external_user_id", id)
			}
			if u.Comment == "" {
				t.Errorf("subtask %s: %s without a comment", id, u.Status)
			}
		}
		last := rec.Updates[len(rec.Updates)-1]
		// The suite finishes out-0, out-3, ... deleted, out-1, out-4, ... not found at Knot, and
		// the others refused with NO_ACCESS.
		var n int
		if _, err := fmt.Sscanf(id, "out-%d", &n); err != nil {
			continue
		}
		want := map[int][2]string{0: {"COMPLETED", "erased"}, 1: {"COMPLETED", "Nothing was found to delete"}, 2: {"FAILED", "NO_ACCESS"}}[n%3]
		if last.Status != want[0] || !strings.Contains(last.Comment, want[1]) {
			t.Errorf("subtask %s ends %s %q, want %s saying %q", id, last.Status, last.Comment, want[0], want[1])
		}
	}
	if finished < 30 {
		t.Errorf("%d subtasks heard their outcome, want the suite's 30", finished)
	}
	if st := k.Stats(); st.SubtasksFinalBeforeInProgress != 0 || st.SubtasksCommentNamingUser != 0 {
		t.Errorf("stats: %d subtasks heard their outcome before IN_PROGRESS, %d comments name the user",
			st.SubtasksFinalBeforeInProgress, st.SubtasksCommentNamingUser)
	}
}
