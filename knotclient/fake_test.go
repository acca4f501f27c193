package knotclient_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
)

// TestAgainstFake checks that the client and the fake agree: every fault the
// fake can inject reaches the worker as the class it is meant to exercise.
func TestAgainstFake(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		faults  knotfake.Faults
		secret  string
		outcome knotclient.Outcome
		class   knotclient.Class
		code    string
	}{
		{name: "ok", outcome: knotclient.Deleted},
		{name: "wrong secret", secret: "wrong", class: knotclient.Unauthorized, code: "INVALID_API_KEYS"},
		{name: "reject credentials", faults: knotfake.Faults{RejectCredentials: true}, class: knotclient.Unauthorized, code: "INVALID_API_KEYS"},
		{name: "error", faults: knotfake.Faults{ErrorRate: 1}, class: knotclient.Retryable, code: "http_500"},
		{name: "outage", faults: knotfake.Faults{OutageUntil: time.Now().Add(time.Hour)}, class: knotclient.Retryable, code: "http_500"},
		{name: "rate limit", faults: knotfake.Faults{RateLimitRate: 1, RetryAfter: knotfake.Duration(3 * time.Second)}, class: knotclient.RateLimited, code: "http_429"},
		{name: "bad gateway", faults: knotfake.Faults{BadGatewayRate: 1}, class: knotclient.Retryable, code: "http_502"},
		{name: "truncated", faults: knotfake.Faults{TruncatedRate: 1}, class: knotclient.Retryable, code: "invalid_response"},
		{name: "empty ok", faults: knotfake.Faults{EmptyOKRate: 1}, class: knotclient.Retryable, code: "invalid_response"},
		{name: "hang", faults: knotfake.Faults{HangRate: 1}, class: knotclient.Retryable, code: "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake := knotfake.New(knotfake.Options{ClientID: "id", Secret: "secret", Faults: tt.faults})
			srv := httptest.NewServer(fake)
			t.Cleanup(srv.Close)
			secret := "secret"
			if tt.secret != "" {
				secret = tt.secret
			}
			c, err := knotclient.New(knotclient.Config{BaseURL: srv.URL, ClientID: "id", Secret: secret, Timeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.DeleteUser(context.Background(), "u1")
			if tt.outcome != 0 {
				if err != nil || res.Outcome != tt.outcome {
					t.Fatalf("got %+v, %v; want %v", res, err, tt.outcome)
				}
				return
			}
			var e *knotclient.Error
			if !errors.As(err, &e) || e.Class != tt.class || e.ErrorCode != tt.code {
				t.Fatalf("got %v, want %v %s", err, tt.class, tt.code)
			}
			if tt.class == knotclient.RateLimited && e.RetryAfter != 3*time.Second {
				t.Errorf("RetryAfter = %v, want 3s", e.RetryAfter)
			}
			if fake.Deleted("u1") {
				t.Errorf("a failed call deleted the user")
			}
		})
	}
}
