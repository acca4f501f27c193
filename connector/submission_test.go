package connector

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// personalID stands for a real external_user_id: no error text may ever contain it.
const personalID = "person-4711-anna.berg@example.com"

func TestParseSubmissionAccepts(t *testing.T) {
	t.Parallel()
	due := time.Date(2026, 12, 24, 0, 0, 0, 0, time.FixedZone("", 3600))
	tests := []struct {
		name string
		body string
		want Submission
	}{
		{"minimal", `{"request_ref":"r-1","external_user_id":"` + personalID + `"}`,
			Submission{RequestRef: "r-1", ExternalUserID: personalID}},
		{"with due_at and whitespace around", " \n{ \"external_user_id\" : \"u\", \"request_ref\":\"r\", \"due_at\":\"2026-12-24T00:00:00+01:00\" }\r\n",
			Submission{RequestRef: "r", ExternalUserID: "u", DueAt: due}},
		{"null due_at is absent", `{"request_ref":"r","external_user_id":"u","due_at":null}`,
			Submission{RequestRef: "r", ExternalUserID: "u"}},
		{"fractional seconds", `{"request_ref":"r","external_user_id":"u","due_at":"2026-12-24T00:00:00.5Z"}`,
			Submission{RequestRef: "r", ExternalUserID: "u", DueAt: time.Date(2026, 12, 24, 0, 0, 0, 5e8, time.UTC)}},
		{"escaped unicode and a valid surrogate pair", `{"request_ref":"r\u00e9","external_user_id":"\ud83d\ude00 x"}`,
			Submission{RequestRef: "ré", ExternalUserID: "😀 x"}},
		{"longest request_ref", `{"request_ref":"` + strings.Repeat("é", 127) + `a","external_user_id":"u"}`,
			Submission{RequestRef: strings.Repeat("é", 127) + "a", ExternalUserID: "u"}},
		{"longest external_user_id", `{"request_ref":"r","external_user_id":"` + strings.Repeat("x", 1024) + `"}`,
			Submission{RequestRef: "r", ExternalUserID: strings.Repeat("x", 1024)}},
		{"spaces inside ids are kept", `{"request_ref":" r ","external_user_id":" u "}`,
			Submission{RequestRef: " r ", ExternalUserID: " u "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSubmission([]byte(tt.body))
			if err != nil {
				t.Fatalf("ParseSubmission: %v", err)
			}
			if got.RequestRef != tt.want.RequestRef || got.ExternalUserID != tt.want.ExternalUserID || !got.DueAt.Equal(tt.want.DueAt) {
				t.Errorf("got %+v (id %q), want %+v (id %q)", got, got.ExternalUserID, tt.want, tt.want.ExternalUserID)
			}
		})
	}
}

func TestParseSubmissionRefusesNamingTheField(t *testing.T) {
	t.Parallel()
	id := `"external_user_id":"` + personalID + `"`
	ref := `"request_ref":"r-1"`
	tests := []struct {
		name      string
		body      string
		wantField string
		wantText  string // the whole Error()
	}{
		{"empty body", ``, "", "body is not a JSON object"},
		{"array", `[` + id + `]`, "", "body is not a JSON object"},
		{"string", `"` + personalID + `"`, "", "body is not a JSON object"},
		{"null", `null`, "", "body is not a JSON object"},
		{"syntax error", `{` + ref + `,` + id + ` x}`, "", "body is not valid JSON (at byte 76)"},
		{"cut short", `{` + ref + `,"external_user_id":"` + personalID, "", "body is not valid JSON (it ends too soon)"},
		{"trailing object", `{` + ref + `,` + id + `}{}`, "", "trailing data after the JSON object"},
		{"trailing garbage", `{` + ref + `,` + id + `} ` + personalID, "", "trailing data after the JSON object"},
		{"unknown field", `{` + ref + `,` + id + `,"email":"a@b.c"}`, "email", "email: unknown field"},
		{"misspelt field", `{` + ref + `,"external_user_Id":"` + personalID + `"}`, "external_user_Id", "external_user_Id: unknown field"},
		{"unknown field with a control character", `{"a\u0007b":1}`, "a?b", "a?b: unknown field"},
		{"repeated id", `{` + ref + `,` + id + `,"external_user_id":"other"}`, "external_user_id", "external_user_id: given more than once"},
		{"missing ref", `{` + id + `}`, "request_ref", "request_ref: required"},
		{"null ref", `{"request_ref":null,` + id + `}`, "request_ref", "request_ref: required"},
		{"numeric ref", `{"request_ref":12,` + id + `}`, "request_ref", "request_ref: must be a string"},
		{"empty ref", `{"request_ref":"",` + id + `}`, "request_ref", "request_ref: empty"},
		{"blank ref", `{"request_ref":" \t\u00a0",` + id + `}`, "request_ref", "request_ref: only whitespace"},
		{"NUL in ref", `{"request_ref":"a\u0000b",` + id + `}`, "request_ref", "request_ref: contains a NUL character at byte 1"},
		{"missing id", `{` + ref + `}`, "external_user_id", "external_user_id: required"},
		{"object id", `{` + ref + `,"external_user_id":{"v":"` + personalID + `"}}`, "external_user_id", "external_user_id: must be a string"},
		{"empty id", `{` + ref + `,"external_user_id":""}`, "external_user_id", "external_user_id: empty"},
		{"blank id", `{` + ref + `,"external_user_id":"\u2003 "}`, "external_user_id", "external_user_id: only whitespace"},
		{"NUL in id", `{` + ref + `,"external_user_id":"` + personalID + `\u0000"}`, "external_user_id", "external_user_id: contains a NUL character at byte 33"},
		{"newline in id", `{` + ref + `,"external_user_id":"` + personalID + `\n"}`, "external_user_id", "external_user_id: contains the control character U+000A at byte 33"},
		{"invalid UTF-8 in id", `{` + ref + `,"external_user_id":"` + personalID + "\xff\"}", "external_user_id", "external_user_id: not valid UTF-8"},
		{"lone high surrogate in id", `{` + ref + `,"external_user_id":"` + personalID + `\ud800"}`, "external_user_id", "external_user_id: holds a lone UTF-16 surrogate escape"},
		{"lone low surrogate in ref", `{"request_ref":"\udc00",` + id + `}`, "request_ref", "request_ref: holds a lone UTF-16 surrogate escape"},
		{"numeric due_at", `{` + ref + `,` + id + `,"due_at":1767225600}`, "due_at", "due_at: must be a string holding an RFC 3339 timestamp"},
		{"empty due_at", `{` + ref + `,` + id + `,"due_at":""}`, "due_at", "due_at: empty: leave it out (or null) for the default deadline"},
		{"bare date due_at", `{` + ref + `,` + id + `,"due_at":"2026-12-24"}`, "due_at", "due_at: not an RFC 3339 timestamp (like 2026-12-24T00:00:00Z)"},
		{"due_at without zone", `{` + ref + `,` + id + `,"due_at":"2026-12-24T00:00:00"}`, "due_at", "due_at: not an RFC 3339 timestamp (like 2026-12-24T00:00:00Z)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, err := ParseSubmission([]byte(tt.body))
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseSubmission = %+v, %v; want a *FieldError", sub, err)
			}
			if fe.Field != tt.wantField || err.Error() != tt.wantText {
				t.Errorf("error = %q (field %q), want %q (field %q)", err, fe.Field, tt.wantText, tt.wantField)
			}
			if strings.Contains(err.Error(), personalID) || strings.Contains(err.Error(), "person-") {
				t.Errorf("the error %q shows the submitted id", err)
			}
			if sub != (Submission{}) {
				t.Errorf("a refused body still gave %+v", sub)
			}
		})
	}
}

func TestSubmissionPrintsNoID(t *testing.T) {
	t.Parallel()
	sub, err := ParseSubmission([]byte(`{"request_ref":"r-9","external_user_id":"` + personalID + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{sub.String(), sub.GoString(), fmtAll(sub)} {
		if strings.Contains(s, personalID) {
			t.Errorf("%q shows the external_user_id", s)
		}
		if !strings.Contains(s, "r-9") {
			t.Errorf("%q does not name the request_ref", s)
		}
	}
}

// fmtAll prints v every way a log line might.
func fmtAll(v any) string {
	return fmt.Sprintf("%v %+v %#v %s", v, v, v, v)
}
