package knotclient

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzClassify feeds arbitrary answers to the classifier. Whatever Knot, a
// proxy or a wrong base URL sends, the worker must get exactly one of a
// success or a well-formed *Error, and a success only for the two answers
// that mean the user is gone.
func FuzzClassify(f *testing.F) {
	f.Add(200, []byte(`{"message":"Success"}`), "")
	f.Add(200, []byte(`{"message":"Succ`), "")
	f.Add(200, []byte(``), "")
	f.Add(400, []byte(`{"error_type":"USER_ERROR","error_code":"USER_NOT_FOUND","error_message":"The user was not found."}`), "")
	f.Add(400, []byte(`{"error_type":"INVALID_REQUEST","error_code":"INVALID_FIELD","error_message":"The external user id field is required."}`), "")
	f.Add(401, []byte(`{"error_type":"INVALID_INPUT","error_code":"INVALID_API_KEYS","error_message":"Invalid client_id or secret provided."}`), "")
	f.Add(429, []byte(`{"message":"Too Many Attempts."}`), "30")
	f.Add(429, []byte(``), "Wed, 21 Oct 2099 07:28:00 GMT")
	f.Add(500, []byte(`{"message":"Server Error"}`), "")
	f.Add(502, []byte(`<html><body>502 Bad Gateway</body></html>`), "")
	f.Add(503, []byte(`{"error_code":123}`), "99999999999999999999")

	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, body []byte, retryAfter string) {
		h := http.Header{}
		h.Set("Retry-After", retryAfter)
		res, err := classify(status, h, body, now, []string{"SECRET"})
		if err == nil {
			switch {
			case status == 200 && res.Outcome == Deleted:
			case status == 400 && res.Outcome == NotFound:
			default:
				t.Fatalf("success %+v for status %d", res, status)
			}
			if res.StatusCode != status {
				t.Fatalf("StatusCode %d, want %d", res.StatusCode, status)
			}
			return
		}
		if res != (Result{}) {
			t.Fatalf("both a result %+v and an error %v", res, err)
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %T is not *Error", err)
		}
		if e.Class < Permanent || e.Class > Unauthorized {
			t.Fatalf("class %d out of range", e.Class)
		}
		if e.StatusCode != status || e.ErrorCode == "" {
			t.Fatalf("StatusCode=%d ErrorCode=%q for status %d", e.StatusCode, e.ErrorCode, status)
		}
		if (status == 401) != (e.Class == Unauthorized) || (status == 429) != (e.Class == RateLimited) {
			t.Fatalf("status %d classified %v", status, e.Class)
		}
		if e.RetryAfter < 0 || e.RetryAfter > MaxRetryAfter {
			t.Fatalf("RetryAfter %v out of range", e.RetryAfter)
		}
		if len(e.Message) > maxMessageBytes+len("…") || !utf8.ValidString(e.Message) || strings.ContainsAny(e.Message, "\n\r\x00") {
			t.Fatalf("Message not cleaned: %q", e.Message)
		}
		if strings.Contains(e.Message, "SECRET") {
			t.Fatalf("Message %q not scrubbed", e.Message)
		}
		if !strings.HasPrefix(e.Error(), "knot: ") {
			t.Fatalf("Error() = %q", e.Error())
		}
	})
}
