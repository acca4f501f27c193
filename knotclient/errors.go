package knotclient

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Outcome is what a successful delete found.
type Outcome int

const (
	// Deleted: Knot answered 200; the user and their data are deleted.
	Deleted Outcome = iota + 1
	// NotFound: Knot answered 400 USER_NOT_FOUND. The user never existed or
	// was deleted before (a repeated delete answers this), so the erasure is
	// complete either way.
	NotFound
)

func (o Outcome) String() string {
	switch o {
	case Deleted:
		return "deleted"
	case NotFound:
		return "not_found"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Result describes a successful call.
type Result struct {
	Outcome    Outcome
	StatusCode int           // 200 or 400
	Duration   time.Duration // time spent on the HTTP exchange
}

// Class says how the worker must treat a failure.
type Class int

const (
	// Permanent: retrying the same request cannot succeed (bad id, a 4xx
	// Knot rejected). Fail it with a readable reason.
	Permanent Class = iota + 1
	// Retryable: the outcome is unknown or Knot was unavailable (5xx, 408,
	// timeout, network, unreadable 200). Retry after a backoff; a repeated
	// delete is harmless.
	Retryable
	// RateLimited: Knot answered 429. Retry no earlier than RetryAfter and
	// slow down.
	RateLimited
	// Unauthorized: Knot rejected the credentials (401). Every call will fail
	// the same way until they are fixed: pause, do not spend attempts.
	Unauthorized
)

func (c Class) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Retryable:
		return "retryable"
	case RateLimited:
		return "rate_limited"
	case Unauthorized:
		return "unauthorized"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Error is returned, as *Error, for every call that did not succeed,
// including transport failures and invalid ids.
type Error struct {
	Class      Class
	StatusCode int // 0 when no HTTP response was received
	// ErrorType is Knot's error_type, if the body had one.
	ErrorType string
	// ErrorCode is Knot's error_code when the body had one. Otherwise it is a
	// stable code of ours: "http_NNN" (e.g. "http_403", "http_502"),
	// "invalid_response", "timeout", "connection", "canceled" or
	// "invalid_external_user_id". Branch on this, never on Message.
	ErrorCode string
	// Message is Knot's error_message (or message), at most ~200 bytes,
	// with control characters removed. For failures without a response it is
	// our own description. It never holds the request body, the external id
	// or credentials.
	Message string
	// RetryAfter is the parsed Retry-After header of a 429 or 503
	// (delta-seconds or HTTP-date), capped at MaxRetryAfter; 0 if absent.
	RetryAfter time.Duration
	Duration   time.Duration
	// Err is the underlying transport or context error, if any.
	Err error
}

// MaxRetryAfter caps Error.RetryAfter, so a nonsense header cannot overflow a
// time.Duration or park a request for years. The worker applies its own,
// smaller cap.
const MaxRetryAfter = 24 * time.Hour

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("knot: ")
	if e.StatusCode == 0 {
		// Our own description: "timeout after 10s", "connection failed: ...".
		b.WriteString(e.Message)
		if e.Message == "" {
			b.WriteString(e.ErrorCode)
		}
		return b.String()
	}
	b.WriteString(strconv.Itoa(e.StatusCode))
	if e.ErrorCode != "" {
		b.WriteByte(' ')
		b.WriteString(e.ErrorCode)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %v)", e.RetryAfter)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// MaxExternalUserIDBytes is the longest external_user_id DeleteUser sends.
const MaxExternalUserIDBytes = 1024

const codeInvalidID = "invalid_external_user_id"

// ValidateExternalUserID reports why id cannot be sent to Knot, as a
// Permanent *Error with ErrorCode "invalid_external_user_id", or nil.
// The message says what is wrong without repeating the id.
func ValidateExternalUserID(id string) error {
	invalid := func(format string, args ...any) error {
		return &Error{Class: Permanent, ErrorCode: codeInvalidID, Message: "invalid external_user_id: " + fmt.Sprintf(format, args...)}
	}
	switch {
	case id == "":
		return invalid("empty")
	case len(id) > MaxExternalUserIDBytes:
		return invalid("%d bytes, longer than %d", len(id), MaxExternalUserIDBytes)
	case !utf8.ValidString(id):
		return invalid("not valid UTF-8")
	}
	for i, r := range id {
		if r < 0x20 || r == 0x7f {
			return invalid("control character %U at byte %d", r, i)
		}
	}
	if strings.TrimSpace(id) == "" {
		return invalid("only whitespace")
	}
	return nil
}
