package knotclient

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/internal/retryafter"
)

// maxMessageBytes bounds Error.Message: it is stored in last_error and logged,
// and a proxy's error page must not fill either.
const maxMessageBytes = 200

const codeUserNotFound = "USER_NOT_FOUND"

// classify turns a complete HTTP answer into a Result or an *Error, given
// the clock (for Retry-After dates) and the strings to scrub from Knot's
// message (the external id and credentials). It is the whole of the
// package's policy about Knot's answers.
func classify(status int, header http.Header, body []byte, now time.Time, scrub []string) (Result, error) {
	if status == http.StatusOK {
		// Only a JSON object counts: a wrong base URL can answer 200 with an
		// HTML page for every path, and a cut-off body may mean Knot failed
		// mid-answer. Retrying is harmless: a repeated delete answers
		// USER_NOT_FOUND.
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
			return Result{}, &Error{Class: Retryable, StatusCode: status, ErrorCode: "invalid_response", Message: "200 without a JSON object body"}
		}
		return Result{Outcome: Deleted, StatusCode: status}, nil
	}

	kb := parseErrorBody(body)
	e := &Error{
		StatusCode: status,
		ErrorType:  kb.errorType,
		ErrorCode:  kb.errorCode,
		Message:    cleanMessage(kb.message, scrub),
	}
	if e.ErrorCode == "" {
		e.ErrorCode = "http_" + strconv.Itoa(status)
	}

	switch {
	case status == http.StatusBadRequest && kb.errorCode == codeUserNotFound:
		return Result{Outcome: NotFound, StatusCode: status}, nil
	case status == http.StatusUnauthorized:
		e.Class = Unauthorized
	case status == http.StatusTooManyRequests:
		e.Class = RateLimited
		e.RetryAfter = retryafter.Parse(header.Get("Retry-After"), now, MaxRetryAfter)
	case status == http.StatusRequestTimeout:
		e.Class = Retryable
	case status >= 500 && status <= 599:
		e.Class = Retryable
		if status == http.StatusServiceUnavailable {
			e.RetryAfter = retryafter.Parse(header.Get("Retry-After"), now, MaxRetryAfter)
		}
	case status >= 400 && status <= 499:
		// 400 with any code but USER_NOT_FOUND (unknown codes included), 403,
		// 404, 405, 409, 410, 413, 422...: the same request will be refused
		// again.
		e.Class = Permanent
	default:
		// 1xx, 2xx other than 200, 3xx (redirects are not followed), or
		// nonsense: not an answer to a delete. Most likely a misconfigured
		// base URL or proxy; retry rather than fail every request in the
		// queue, so an operator has time to notice.
		e.Class = Retryable
	}
	return Result{}, e
}

type knotErrorBody struct {
	errorType, errorCode, message string
}

// parseErrorBody reads Knot's two error shapes, the Error schema
// ({"error_type","error_code","error_message"}) and the 500 body
// ({"message":"Server Error"}). Fields are read one by one so that an
// unexpected type in one does not lose the others; anything that is not a
// JSON object yields nothing.
func parseErrorBody(body []byte) knotErrorBody {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return knotErrorBody{}
	}
	str := func(key string) string {
		var s string
		if v, ok := raw[key]; ok && json.Unmarshal(v, &s) == nil {
			return s
		}
		return ""
	}
	kb := knotErrorBody{
		errorType: cleanCode(str("error_type")),
		errorCode: cleanCode(str("error_code")),
		message:   str("error_message"),
	}
	if kb.message == "" {
		kb.message = str("message")
	}
	return kb
}

// cleanCode keeps error_type/error_code usable as a log field and a metric
// label value: codes are short upper-case identifiers, so anything else is
// dropped rather than trusted.
func cleanCode(s string) string {
	if s == "" || len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return ""
		}
	}
	return s
}

// cleanMessage scrubs secrets, flattens control characters (so the message
// stays one log line) and truncates at a rune boundary.
func cleanMessage(s string, scrub []string) string {
	for _, v := range scrub {
		if v != "" {
			s = strings.ReplaceAll(s, v, "[redacted]")
		}
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > maxMessageBytes {
		cut := maxMessageBytes
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
