package connector

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// knownReasons is every reason ParseSubmission gives, in the shape normalize gives it: a reason
// outside it could be carrying part of the body.
var knownReasons = map[string]bool{}

func init() {
	for _, r := range []string{
		`body is not a JSON object`,
		`body is not valid JSON (at byte 1)`,
		`body is not valid JSON (it ends too soon)`,
		`trailing data after the JSON object`,
		`unknown field`,
		`given more than once`,
		`required`,
		`must be a string`,
		`not valid UTF-8`,
		`holds a lone UTF-16 surrogate escape`,
		`empty`,
		`1 bytes, longer than 1`,
		`only whitespace`,
		`contains a NUL character at byte 1`,
		`contains the control character U+0001 at byte 1`,
		`must be a string holding an RFC 3339 timestamp`,
		`empty: leave it out (or null) for the default deadline`,
		`not an RFC 3339 timestamp (like 2026-12-24T00:00:00Z)`,
	} {
		knownReasons[normalize(r)] = true
	}
}

var (
	codePoint = regexp.MustCompile(`U\+[0-9A-F]+`)
	digits    = regexp.MustCompile(`[0-9]+`)
)

// normalize replaces code points and numbers with #.
func normalize(reason string) string {
	return digits.ReplaceAllString(codePoint.ReplaceAllString(reason, "U+#"), "#")
}

// FuzzParseSubmission feeds arbitrary bodies to the API's parser. An accepted body must hold a
// request the table and the worker take unchanged, and say the same when read by encoding/json;
// a refusal must name a field (or the body) with a reason from the fixed list, so no part of an
// id can ever reach an error.
func FuzzParseSubmission(f *testing.F) {
	for _, seed := range []string{
		`{"request_ref":"r1","external_user_id":"u1"}`,
		`{"request_ref":"r1","external_user_id":"u1","due_at":"2030-01-02T03:04:05Z"}`,
		`{"request_ref":"r1","external_user_id":"u1","due_at":null}`,
		`{"request_ref":"r1","external_user_id":"u1","due_at":"2030-01-02"}`,
		`{"request_ref":"r1","external_user_id":"\u0000"}`,
		`{"request_ref":"r1","external_user_id":"\ud800"}`,
		`{"request_ref":"r1","external_user_id":"\ud83d\ude00"}`,
		`{"request_ref":"r1","external_user_id":"\ufffd �"}`,
		`{"request_ref":"r1","external_user_id":"  "}`,
		`{"request_ref":1,"external_user_id":"u"}`,
		`{"request_ref":"r","external_user_id":"u"} {}`,
		`{"request_ref":"r","external_user_id":"u","external_user_id":"v"}`,
		`{"request_ref":"r","externalUserId":"u"}`,
		"{\"request_ref\":\"r\",\"external_user_id\":\"\xff\"}",
		"\xef\xbb\xbf{\"request_ref\":\"r\",\"external_user_id\":\"u\"}",
		`[]`,
		`{"request_ref":"r","external_user_id":"u"`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		sub, err := ParseSubmission(body)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FieldError", err)
			}
			switch fe.Field {
			case "", fieldRequestRef, fieldExternalUserID, fieldDueAt:
			default:
				if fe.Reason != "unknown field" {
					t.Fatalf("field %q with reason %q", fe.Field, fe.Reason)
				}
			}
			if !knownReasons[normalize(fe.Reason)] {
				t.Fatalf("reason %q is not one of the fixed reasons", fe.Reason)
			}
			if sub != (Submission{}) {
				t.Fatalf("refused, yet returned %+v", sub)
			}
			return
		}
		for name, v := range map[string]string{fieldRequestRef: sub.RequestRef, fieldExternalUserID: sub.ExternalUserID} {
			if strings.TrimSpace(v) == "" || !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
				t.Fatalf("accepted %s %q", name, v)
			}
		}
		for _, r := range sub.ExternalUserID {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("accepted a control character in external_user_id %q", sub.ExternalUserID)
			}
		}
		// What was accepted is what encoding/json reads from the same bytes.
		var plain struct {
			RequestRef     string `json:"request_ref"`
			ExternalUserID string `json:"external_user_id"`
		}
		if err := json.Unmarshal(body, &plain); err != nil {
			t.Fatalf("accepted a body encoding/json refuses: %v", err)
		}
		if plain.RequestRef != sub.RequestRef || plain.ExternalUserID != sub.ExternalUserID {
			t.Fatalf("read %q/%q, encoding/json reads %q/%q", sub.RequestRef, sub.ExternalUserID, plain.RequestRef, plain.ExternalUserID)
		}
	})
}
