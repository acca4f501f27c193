package connector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Submission is one erasure request in the JSON that the generic API takes as its body and
// `enqueue` as each line: checked for everything but the ids' lengths, which intake checks.
type Submission struct {
	RequestRef     string
	ExternalUserID string
	// DueAt is zero when the body gave none (the table's default deadline applies).
	DueAt time.Time
}

// String leaves the external_user_id out: a Submission printed by mistake must not put
// personal data in a log.
func (s Submission) String() string {
	due := "default"
	if !s.DueAt.IsZero() {
		due = s.DueAt.Format(time.RFC3339)
	}
	return fmt.Sprintf("connector.Submission{RequestRef: %q, ExternalUserID: <redacted>, DueAt: %s}", s.RequestRef, due)
}

// GoString does the same for %#v.
func (s Submission) GoString() string { return s.String() }

const (
	fieldRequestRef     = "request_ref"
	fieldExternalUserID = "external_user_id"
	fieldDueAt          = "due_at"
)

// ParseSubmission reads a POST /v1/erasure-requests body: exactly one JSON object with
// request_ref and external_user_id (strings) and an optional due_at (an RFC 3339 timestamp, or
// null). Anything else is refused with a *FieldError that names the field: unknown or repeated
// fields, trailing data, values the erasure_requests table's constraints or the worker would
// refuse.
func ParseSubmission(body []byte) (Submission, error) {
	raw, err := splitObject(body)
	if err != nil {
		return Submission{}, err
	}
	var sub Submission
	if sub.RequestRef, err = idField(raw, fieldRequestRef, false); err != nil {
		return Submission{}, err
	}
	if sub.ExternalUserID, err = idField(raw, fieldExternalUserID, true); err != nil {
		return Submission{}, err
	}
	if sub.DueAt, err = dueField(raw); err != nil {
		return Submission{}, err
	}
	return sub, nil
}

// splitObject returns the raw value of each known field of the one JSON object in body. It walks
// the object token by token, because encoding/json's struct decoding silently keeps the last of
// repeated fields: {"external_user_id":"a","external_user_id":"b"} must not name a user the
// sender did not see.
func splitObject(body []byte) (map[string]json.RawMessage, error) {
	notObject := &FieldError{Reason: "body is not a JSON object"}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, syntaxReason(err, notObject)
	}
	raw := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntaxReason(err, notObject)
		}
		key, _ := tok.(string) // More inside an object means a key comes next
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, syntaxReason(err, notObject)
		}
		switch key {
		case fieldRequestRef, fieldExternalUserID, fieldDueAt:
		default:
			return nil, &FieldError{Field: printableName(key), Reason: "unknown field"}
		}
		if _, dup := raw[key]; dup {
			return nil, &FieldError{Field: key, Reason: "given more than once"}
		}
		raw[key] = v
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, syntaxReason(err, notObject)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &FieldError{Reason: "trailing data after the JSON object"}
	}
	return raw, nil
}

// syntaxReason gives the byte offset of a syntax error, never encoding/json's text: that quotes
// the offending character, which may be part of an id.
func syntaxReason(err error, fallback *FieldError) *FieldError {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &FieldError{Reason: fmt.Sprintf("body is not valid JSON (at byte %d)", se.Offset)}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &FieldError{Reason: "body is not valid JSON (it ends too soon)"}
	}
	return fallback
}

// printableName shortens an unknown field's name and replaces what a log or terminal would
// render badly, so that naming it is safe.
func printableName(key string) string {
	const maxName = 64
	if key == "" {
		return `""`
	}
	var b strings.Builder
	for i, r := range key {
		if i >= maxName {
			b.WriteString("...")
			break
		}
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// idField reads a required string field: a string, valid UTF-8, non-blank, no NUL (PostgreSQL
// text cannot hold one). Its length is intake's to check (queue.ValidateIDs), which counts a
// connector's prefix. With noControl it also
// refuses control characters, as the worker refuses them in an external_user_id (knotclient's
// ValidateExternalUserID): accepting one would only fail the request later.
func idField(raw map[string]json.RawMessage, name string, noControl bool) (string, error) {
	fail := func(format string, args ...any) (string, error) {
		return "", &FieldError{Field: name, Reason: fmt.Sprintf(format, args...)}
	}
	v, ok := raw[name]
	if !ok || string(v) == "null" {
		return fail("required")
	}
	if len(v) == 0 || v[0] != '"' {
		return fail("must be a string")
	}
	// encoding/json replaces invalid UTF-8 and lone surrogate escapes with U+FFFD: the id
	// would silently name someone else.
	if !utf8.Valid(v) {
		return fail("not valid UTF-8")
	}
	if loneSurrogate(v) {
		return fail("holds a lone UTF-16 surrogate escape")
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return fail("must be a string")
	}
	switch {
	case s == "":
		return fail("empty")
	case strings.TrimSpace(s) == "":
		return fail("only whitespace")
	}
	for i, r := range s {
		if r == 0 {
			return fail("contains a NUL character at byte %d", i)
		}
		if noControl && (r < 0x20 || r == 0x7f) {
			return fail("contains the control character %U at byte %d", r, i)
		}
	}
	return s, nil
}

// loneSurrogate reports whether a JSON string literal holds a \uD800-\uDFFF escape that is not
// half of a valid pair.
func loneSurrogate(lit []byte) bool {
	hex4 := func(b []byte) (rune, bool) {
		if len(b) < 4 {
			return 0, false
		}
		var r rune
		for _, c := range b[:4] {
			switch {
			case '0' <= c && c <= '9':
				r = r<<4 | rune(c-'0')
			case 'a' <= c && c <= 'f':
				r = r<<4 | rune(c-'a'+10)
			case 'A' <= c && c <= 'F':
				r = r<<4 | rune(c-'A'+10)
			default:
				return 0, false
			}
		}
		return r, true
	}
	for i := 0; i < len(lit); i++ {
		if lit[i] != '\\' {
			continue
		}
		i++
		if i >= len(lit) || lit[i] != 'u' {
			continue // \" \\ \n ...: one character escaped
		}
		r, ok := hex4(lit[i+1:])
		if !ok {
			continue // not valid JSON; Unmarshal refuses it
		}
		i += 4
		switch {
		case 0xDC00 <= r && r <= 0xDFFF:
			return true
		case 0xD800 <= r && r <= 0xDBFF:
			if i+2 >= len(lit) || lit[i+1] != '\\' || lit[i+2] != 'u' {
				return true
			}
			lo, ok := hex4(lit[i+3:])
			if !ok || lo < 0xDC00 || lo > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

// dueField reads the optional due_at. It is strictly RFC 3339 (the HTTP API's contract), not
// enqueue's friendlier bare dates.
func dueField(raw map[string]json.RawMessage) (time.Time, error) {
	fail := func(reason string) (time.Time, error) {
		return time.Time{}, &FieldError{Field: fieldDueAt, Reason: reason}
	}
	v, ok := raw[fieldDueAt]
	if !ok || string(v) == "null" {
		return time.Time{}, nil
	}
	var s string
	if len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &s) != nil {
		return fail("must be a string holding an RFC 3339 timestamp")
	}
	if strings.TrimSpace(s) == "" {
		return fail("empty: leave it out (or null) for the default deadline")
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return fail("not an RFC 3339 timestamp (like 2026-12-24T00:00:00Z)")
	}
	return t, nil
}
