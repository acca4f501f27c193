// Package fides takes erasure requests from Fides (ethyca/fides) and tells Fides each outcome.
//
// Fides has no "call this URL to erase" setting: its admin uploads a custom SaaS connector
// (deploy/fides) whose erasure request POSTs {"privacy_request_id", "external_user_id"} to
// /v1/fides/erasures with a bearer token. With `async_config: {strategy: callback}` the request
// carries the headers reply-to (a path on the Fides server) and reply-to-token (a token for that
// one request task), and Fides parks the task until
// `POST {FIDES_URL}{reply-to}` with `Authorization: Bearer <reply-to-token>` and
// {"rows_masked": N} says it is done (src/fides/api/v1/endpoints/privacy_request_endpoints.py,
// request_task_async_callback). With `{strategy: polling}` Fides asks
// GET /v1/fides/erasures/{correlation_id} instead, and nothing is sent.
//
// Fides has no failure callback: a request that failed is not called back, its report fails
// with the reason, and the status endpoint says failed.
package fides

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/connector"
)

// The fields of the erasure body, as the SaaS config's body template names them.
const (
	FieldPrivacyRequestID = "privacy_request_id"
	FieldExternalUserID   = "external_user_id"
	// The headers of the callback strategy (saas_async_callback_config.yml).
	HeaderReplyTo      = "reply-to"
	HeaderReplyToToken = "reply-to-token"
)

// Limits on what a request may hold beside the ids (intake bounds those).
const (
	// MaxReplyToBytes bounds the reply-to path: Fides sends /api/v1/request-task/callback.
	MaxReplyToBytes = 256
	// MaxTokenBytes bounds the reply-to-token: an encrypted JWE of a few hundred bytes.
	MaxTokenBytes = 8 << 10
)

// Erasure is one erasure request as Fides' SaaS connector sends it. Its String leaves out the
// external_user_id and the token.
type Erasure struct {
	PrivacyRequestID string
	ExternalUserID   string
	// ReplyTo and Token are the callback's path and credential; both empty when Fides polls.
	ReplyTo, Token string
}

func (e Erasure) String() string {
	return fmt.Sprintf("fides.Erasure{privacy_request_id %q, callback %t}", e.PrivacyRequestID, e.ReplyTo != "")
}

// GoString keeps %#v from printing the fields.
func (e Erasure) GoString() string { return e.String() }

// ParseBody reads the erasure body: one JSON object with exactly the two string fields. An
// unknown or repeated field is refused, as the generic API refuses one: the body is the admin's
// template, and a misspelt field must be seen at once, not sent by every request. Every error
// is a *connector.FieldError that names the field and quotes no value.
func ParseBody(body []byte) (id, user string, err error) {
	fields, err := objectFields(body)
	if err != nil {
		return "", "", err
	}
	if id, err = textField(fields, FieldPrivacyRequestID); err != nil {
		return "", "", err
	}
	if user, err = textField(fields, FieldExternalUserID); err != nil {
		return "", "", err
	}
	return id, user, nil
}

// objectFields walks the one JSON object of body token by token, since encoding/json keeps the
// last of two fields of one name silently.
func objectFields(body []byte) (map[string]json.RawMessage, error) {
	bad := func(reason string) error { return &connector.FieldError{Reason: reason} }
	if !utf8.Valid(body) {
		// encoding/json would replace the bytes, and the id would name someone else.
		return nil, bad("body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, bad("body is not a JSON object")
	}
	fields := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		var v json.RawMessage
		if err == nil {
			err = dec.Decode(&v)
		}
		if err != nil {
			return nil, bad("body is not valid JSON")
		}
		name, _ := tok.(string)
		switch {
		case name != FieldPrivacyRequestID && name != FieldExternalUserID:
			return nil, &connector.FieldError{Field: shortName(name), Reason: "unknown field (the body holds privacy_request_id and external_user_id only)"}
		case fields[name] != nil:
			return nil, &connector.FieldError{Field: name, Reason: "given more than once"}
		}
		fields[name] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, bad("body is not valid JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, bad("trailing data after the JSON object")
	}
	return fields, nil
}

// shortName makes an unknown field's name safe to echo: bounded, printable ASCII.
func shortName(name string) string {
	const maxName = 64
	b := []byte(name)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	if len(b) > maxName {
		b = append(b[:maxName], "..."...)
	}
	if len(b) == 0 {
		return `""`
	}
	return string(b)
}

// textField reads a required string: non-blank, no control character, and no U+FFFD (what
// encoding/json makes of a lone surrogate escape: not what was sent).
func textField(fields map[string]json.RawMessage, name string) (string, error) {
	fail := func(reason string) (string, error) {
		return "", &connector.FieldError{Field: name, Reason: reason}
	}
	raw := bytes.TrimSpace(fields[name])
	if len(raw) == 0 || string(raw) == "null" {
		return fail("required: check the body template of the SaaS config's erasure request")
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return fail("must be a string")
	}
	switch {
	case strings.TrimSpace(s) == "":
		return fail("empty: the identity it is bound to was not given (a template left unfilled sends an empty value)")
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fail("contains a control character")
	case strings.ContainsRune(s, utf8.RuneError):
		return fail("not valid Unicode")
	}
	return s, nil
}

// ParseReplyTo checks the callback headers: both or neither. reply-to must be an absolute path
// on the Fides server (Fides sends /api/v1/request-task/callback): no scheme or host, which
// would let a holder of our bearer token send the callback's token elsewhere, no "..", no query
// or fragment. It returns a *connector.FieldError naming the header at fault.
func ParseReplyTo(replyTo, token string) error {
	fail := func(field, reason string) error { return &connector.FieldError{Field: field, Reason: reason} }
	switch {
	case replyTo == "" && token == "":
		return nil
	case replyTo == "":
		return fail(HeaderReplyTo, "missing: reply-to-token came without it (send both headers, or neither to be polled)")
	case token == "":
		return fail(HeaderReplyToToken, "missing: reply-to came without it (send both headers, or neither to be polled)")
	case len(replyTo) > MaxReplyToBytes:
		return fail(HeaderReplyTo, fmt.Sprintf("longer than %d bytes", MaxReplyToBytes))
	case replyTo[0] != '/' || strings.HasPrefix(replyTo, "//"):
		return fail(HeaderReplyTo, "must be an absolute path on the Fides server, like /api/v1/request-task/callback (no scheme or host)")
	case strings.ContainsAny(replyTo, "?#"):
		return fail(HeaderReplyTo, "must hold no query or fragment")
	case len(token) > MaxTokenBytes:
		return fail(HeaderReplyToToken, fmt.Sprintf("longer than %d bytes", MaxTokenBytes))
	}
	for _, c := range []byte(replyTo) {
		if !pathByte(c) {
			return fail(HeaderReplyTo, "holds a character that is not allowed in a path (letters, digits, and - . _ ~ / %)")
		}
	}
	for _, seg := range strings.Split(replyTo, "/") {
		if seg == "." || seg == ".." {
			return fail(HeaderReplyTo, `must not hold "." or ".." segments`)
		}
	}
	for _, c := range []byte(token) {
		if c <= 0x20 || c >= 0x7f {
			return fail(HeaderReplyToToken, "must be printable ASCII without spaces")
		}
	}
	return nil
}

func pathByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~/%", c) >= 0
}

// RowsMasked is what the callback tells Fides of an outcome: 1 row masked for a person erased,
// 0 for one Knot did not know. ok is false for a failure, which Fides cannot be told.
func RowsMasked(outcome string) (rows int, ok bool) {
	switch outcome {
	case "deleted":
		return 1, true
	case "not_found":
		return 0, true
	}
	return 0, false
}

// Status is the body of GET /v1/fides/erasures/{correlation_id}, as Fides' polling strategy reads
// it (status_path: status, status_completed_value: completed).
type Status struct {
	Status  string `json:"status"`
	Outcome string `json:"outcome,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// The statuses a request is shown with.
const (
	StatusPending   = "pending"
	StatusCompleted = "completed"
	StatusFailed    = "failed"
)

// StatusOf shows a stored request: pending until it finished, then completed with its outcome,
// or failed with a reason that names the outcome and Knot's error code, never the person.
func StatusOf(rec connector.Record) Status {
	if !rec.Finished() {
		return Status{Status: StatusPending}
	}
	if _, ok := RowsMasked(rec.Outcome); ok {
		return Status{Status: StatusCompleted, Outcome: rec.Outcome}
	}
	return Status{Status: StatusFailed, Reason: FailureReason(rec.Outcome, rec.LastErrorCode, "")}
}

// FailureReason says why a request failed: "the Knot erasure failed: rejected (NO_ACCESS)". An
// error code that does not look like one (spaces, too long) or that holds user (the person's id,
// when known) is left out: it could hold anything.
func FailureReason(outcome, code, user string) string {
	if outcome == "" {
		outcome = "unknown outcome"
	}
	reason := "the Knot erasure failed: " + outcome
	if plainCode(code) && (user == "" || !strings.Contains(code, user)) {
		reason += " (" + code + ")"
	}
	return reason
}

func plainCode(code string) bool {
	if code == "" || len(code) > 64 {
		return false
	}
	for _, c := range []byte(code) {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
