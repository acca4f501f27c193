package ketch

import (
	"testing"
	"time"
)

func TestDeleteResponseBody(t *testing.T) {
	md := Metadata{UID: testUID, Tenant: "axonic"}
	tests := []struct {
		name     string
		status   Status
		reason   Reason
		id       string
		expected time.Time
		want     string
	}{
		{"accepted", StatusInProgress, "", "42", time.Unix(testDue, 0),
			`{"apiVersion":"dsr/v1","kind":"DeleteResponse","metadata":{"uid":"` + testUID + `","tenant":"axonic"},` +
				`"response":{"status":"in_progress","expectedCompletionTimestamp":1767225600,"requestID":"42"}}`},
		{"no time, no id", StatusDenied, ReasonInsufficientIdentification, "", time.Time{},
			`{"apiVersion":"dsr/v1","kind":"DeleteResponse","metadata":{"uid":"` + testUID + `","tenant":"axonic"},` +
				`"response":{"status":"denied","reason":"insufficient_identification"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(DeleteResponseBody(md, tt.status, tt.reason, tt.id, tt.expected)); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestErrorBody(t *testing.T) {
	md := Metadata{UID: testUID, Tenant: "axonic"}
	tests := []struct {
		name string
		md   *Metadata
		want string
	}{
		{"with metadata", &md, `{"apiVersion":"dsr/v1","kind":"Error","metadata":{"uid":"` + testUID + `","tenant":"axonic"},"error":{"code":401,"status":"forbidden","message":"unauthorized"}}`},
		{"without", nil, `{"apiVersion":"dsr/v1","kind":"Error","error":{"code":401,"status":"forbidden","message":"unauthorized"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(ErrorBody(tt.md, 401, ErrorForbidden, "unauthorized")); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestFinalEvent(t *testing.T) {
	tests := []struct {
		outcome string
		status  Status
		reason  Reason
	}{
		{"deleted", StatusCompleted, ReasonExecuted},
		{"not_found", StatusCompleted, ReasonNoMatch},
		{"rejected", StatusDenied, ReasonUnknown},
		{"invalid", StatusDenied, ReasonUnknown},
		{"exhausted", StatusDenied, ReasonUnknown},
		{"something new", StatusDenied, ReasonUnknown},
	}
	for _, tt := range tests {
		s, r := FinalEvent(tt.outcome)
		if s != tt.status || r != tt.reason {
			t.Errorf("FinalEvent(%q) = %s/%s, want %s/%s", tt.outcome, s, r, tt.status, tt.reason)
		}
		if !s.Final() || !ValidPair(s, r) {
			t.Errorf("FinalEvent(%q) = %s/%s: not a final, valid pair", tt.outcome, s, r)
		}
	}
}

func TestValidPair(t *testing.T) {
	tests := []struct {
		status Status
		reason Reason
		want   bool
	}{
		{StatusCompleted, ReasonExecuted, true},
		{StatusCompleted, ReasonNoMatch, true},
		{StatusCompleted, ReasonInsufficientIdentification, true},
		{StatusDenied, ReasonInsufficientIdentification, true},
		{StatusDenied, ReasonUnknown, true},
		{StatusDenied, ReasonSLAExpiry, true},
		{StatusInProgress, ReasonOther, true},
		{StatusInProgress, "", true},
		{StatusPending, ReasonNeedUserVerification, true},
		{StatusCancelled, ReasonUnknown, true},
		{StatusDenied, ReasonExecuted, false},
		{StatusCompleted, ReasonSuspectedFraud, false},
		{StatusInProgress, ReasonExecuted, false},
		{StatusCancelled, ReasonNoMatch, false},
		{"Completed", ReasonExecuted, false},
		{StatusCompleted, "Executed", false},
		{"failed", ReasonUnknown, false},
	}
	for _, tt := range tests {
		if got := ValidPair(tt.status, tt.reason); got != tt.want {
			t.Errorf("ValidPair(%q, %q) = %v, want %v", tt.status, tt.reason, got, tt.want)
		}
	}
}

func TestStatusFinal(t *testing.T) {
	for s, want := range map[Status]bool{StatusCompleted: true, StatusCancelled: true, StatusDenied: true,
		StatusInProgress: false, StatusPending: false, StatusUnknown: false} {
		if s.Final() != want {
			t.Errorf("%s.Final() = %v", s, !want)
		}
	}
}
