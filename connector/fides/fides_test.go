package fides

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

func TestParseBodyNamesTheField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body, field string
	}{
		{"valid", `{"privacy_request_id":"pri_1","external_user_id":"u-1"}`, ""},
		{"not an object", `["pri_1"]`, ""},
		{"not JSON", `{"privacy_request_id":`, ""},
		{"trailing data", `{"privacy_request_id":"pri_1","external_user_id":"u"} {}`, ""},
		{"unknown field", `{"privacy_request_id":"pri_1","external_user_id":"u","email":"a@b"}`, "email"},
		{"repeated field", `{"privacy_request_id":"pri_1","privacy_request_id":"pri_2","external_user_id":"u"}`, "privacy_request_id"},
		{"missing id", `{"external_user_id":"u"}`, "privacy_request_id"},
		{"null user", `{"privacy_request_id":"pri_1","external_user_id":null}`, "external_user_id"},
		{"number user", `{"privacy_request_id":"pri_1","external_user_id":12}`, "external_user_id"},
		{"blank user", `{"privacy_request_id":"pri_1","external_user_id":"  "}`, "external_user_id"},
		{"control character", `{"privacy_request_id":"pri\n1","external_user_id":"u"}`, "privacy_request_id"},
		{"lone surrogate", `{"privacy_request_id":"pri_1","external_user_id":"\ud800x"}`, "external_user_id"},
	}
	for _, tt := range tests {
		_, _, err := ParseBody([]byte(tt.body))
		var fe *connector.FieldError
		switch {
		case tt.name == "valid" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.name != "valid" && !errors.As(err, &fe):
			t.Errorf("%s: err = %v, want a FieldError", tt.name, err)
		case fe != nil && fe.Field != tt.field:
			t.Errorf("%s: field %q, want %q (%v)", tt.name, fe.Field, tt.field, err)
		case err != nil && strings.Contains(err.Error(), "a@b"):
			t.Errorf("%s: the error quotes a value: %v", tt.name, err)
		}
	}
}

func TestParseReplyTo(t *testing.T) {
	t.Parallel()
	tests := []struct {
		replyTo, token, field string
	}{
		{"/api/v1/request-task/callback", "eyJhbGciOi.x.y-z_w", ""},
		{"/fides/api/v1/request-task/callback", "t", ""},
		{"", "", ""},
		{"", "t", "reply-to"},
		{"/api/v1/request-task/callback", "", "reply-to-token"},
		{"https://evil.example/cb", "t", "reply-to"},
		{"//evil.example/cb", "t", "reply-to"},
		{"api/v1/request-task/callback", "t", "reply-to"},
		{"/api/v1/../admin", "t", "reply-to"},
		{"/api/./v1", "t", "reply-to"},
		{"/api/v1/cb?x=1", "t", "reply-to"},
		{"/api/v1/cb#x", "t", "reply-to"},
		{"/api/v1/c b", "t", "reply-to"},
		{"/" + strings.Repeat("a", MaxReplyToBytes), "t", "reply-to"},
		{"/api/v1/cb", "a b", "reply-to-token"},
		{"/api/v1/cb", strings.Repeat("t", MaxTokenBytes+1), "reply-to-token"},
	}
	for _, tt := range tests {
		err := ParseReplyTo(tt.replyTo, tt.token)
		var fe *connector.FieldError
		if tt.field == "" && err != nil || tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field) {
			t.Errorf("ParseReplyTo(%q, %.20q) = %v, want a refusal of %q", tt.replyTo, tt.token, err, tt.field)
		}
	}
}

func TestClassifyFidesAnswers(t *testing.T) {
	t.Parallel()
	now := time.Now()
	later, earlier := now.Add(20*time.Second), now.Add(-time.Second)
	tests := []struct {
		name       string
		status     int
		notBefore  time.Time
		want       connector.Result
		retryAfter time.Duration
		errHas     string
	}{
		{"taken", 200, earlier, connector.Delivered, 0, ""},
		{"400 before the hold ended: not parked yet", 400, later, connector.Retry, 20 * time.Second, "before FIDES_CALLBACK_DELAY"},
		{"400 after the hold: no longer awaiting", 400, earlier, connector.Closed, 0, "no longer awaits"},
		{"400 without a hold", 400, time.Time{}, connector.Closed, 0, "no longer awaits"},
		{"401 is this task's token, not ours", 401, earlier, connector.Rejected, 0, "401"},
		{"403 expired token", 403, earlier, connector.Rejected, 0, "403 Forbidden: the reply-to-token is wrong or expired"},
		{"404 unknown task", 404, earlier, connector.Rejected, 0, "404"},
		{"422 malformed body", 422, earlier, connector.Rejected, 0, "422"},
		{"429", 429, earlier, connector.RateLimited, 7 * time.Second, "429"},
		{"502", 502, earlier, connector.Retry, 0, "502"},
	}
	for _, tt := range tests {
		h := http.Header{"Retry-After": {"7"}}
		d := classify(tt.status, h, now, tt.notBefore)
		if d.Result != tt.want || d.RetryAfter != tt.retryAfter || d.HTTPStatus != tt.status {
			t.Errorf("%s: %+v, want %s after %s", tt.name, d, tt.want, tt.retryAfter)
		}
		if (tt.errHas == "") != (d.Err == nil) || d.Err != nil && !strings.Contains(d.Err.Error(), tt.errHas) {
			t.Errorf("%s: err %v, want one saying %q", tt.name, d.Err, tt.errHas)
		}
	}
}

func TestStatusOfARequest(t *testing.T) {
	t.Parallel()
	done := time.Now()
	tests := []struct {
		rec  connector.Record
		want Status
	}{
		{connector.Record{Status: "pending"}, Status{Status: "pending"}},
		{connector.Record{Status: "running"}, Status{Status: "pending"}},
		{connector.Record{Status: "succeeded", Outcome: "deleted", CompletedAt: &done}, Status{Status: "completed", Outcome: "deleted"}},
		{connector.Record{Status: "succeeded", Outcome: "not_found", CompletedAt: &done}, Status{Status: "completed", Outcome: "not_found"}},
		{connector.Record{Status: "failed", Outcome: "rejected", LastErrorCode: "NO_ACCESS", CompletedAt: &done},
			Status{Status: "failed", Reason: "the Knot erasure failed: rejected (NO_ACCESS)"}},
		{connector.Record{Status: "failed", Outcome: "exhausted", LastErrorCode: "code with spaces", CompletedAt: &done},
			Status{Status: "failed", Reason: "the Knot erasure failed: exhausted"}},
	}
	for _, tt := range tests {
		if got := StatusOf(tt.rec); got != tt.want {
			t.Errorf("StatusOf(%s/%s) = %+v, want %+v", tt.rec.Status, tt.rec.Outcome, got, tt.want)
		}
	}
	if r := FailureReason("rejected", "X_person42", "person42"); strings.Contains(r, "person42") {
		t.Errorf("a code holding the person's id is shown: %s", r)
	}
}
