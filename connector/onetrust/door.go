package onetrust

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/connector"
)

// The fields of the body the workflow's HTTP action sends, as the README publishes it.
const (
	fieldSubtaskID  = "subtask_id"
	fieldRequestRef = "request_queue_ref_id"
	fieldUser       = "external_user_id"
	fieldDueAt      = "due_at"
)

// maxRequestRef bounds request_queue_ref_id, ten characters in OneTrust's API.
const maxRequestRef = 64

// Subtask is one system subtask as the workflow pushes it.
type Subtask struct {
	ID             string // the subtask's id (a UUID at OneTrust); the request_ref is "onetrust:" and it
	RequestRefID   string // the request's reference id ("ZASHMHK2K7"), checked but not kept
	ExternalUserID string
	DueAt          time.Time // zero: the default deadline
}

// String leaves the external_user_id out.
func (s Subtask) String() string {
	return fmt.Sprintf("onetrust.Subtask{ID: %q, RequestRefID: %q, ExternalUserID: <redacted>}", s.ID, s.RequestRefID)
}

// GoString is String, for %#v.
func (s Subtask) GoString() string { return s.String() }

// ParseSubtask reads the body POST /v1/onetrust/subtasks takes: one JSON object with
// subtask_id, request_queue_ref_id and external_user_id (strings) and an optional due_at (RFC
// 3339, or null). Unknown and repeated fields are refused: the body is a template the customer
// writes, and a misspelt due_at must not silently drop the deadline, nor a repeated
// external_user_id name someone the template's author did not see. Every error is a
// *connector.FieldError naming the field, never quoting a value.
func ParseSubtask(body []byte) (Subtask, error) {
	raw, err := fields(body)
	if err != nil {
		return Subtask{}, err
	}
	var st Subtask
	if st.ID, err = text(raw, fieldSubtaskID, 0); err != nil {
		return Subtask{}, err
	}
	if st.RequestRefID, err = text(raw, fieldRequestRef, maxRequestRef); err != nil {
		return Subtask{}, err
	}
	if st.ExternalUserID, err = text(raw, fieldUser, 0); err != nil {
		return Subtask{}, err
	}
	if v, ok := raw[fieldDueAt]; ok && string(v) != "null" {
		var s string
		if json.Unmarshal(v, &s) != nil {
			return Subtask{}, &connector.FieldError{Field: fieldDueAt, Reason: "must be a string holding an RFC 3339 timestamp, or null"}
		}
		if st.DueAt, err = time.Parse(time.RFC3339, s); err != nil {
			return Subtask{}, &connector.FieldError{Field: fieldDueAt, Reason: "not an RFC 3339 timestamp (like 2026-12-24T00:00:00Z)"}
		}
	}
	return st, nil
}

// fields returns the body's members by name, refusing what ParseSubtask's doc says.
func fields(body []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(body) {
		// encoding/json would replace the bad bytes, and the id would name someone else.
		return nil, &connector.FieldError{Reason: "body is not valid UTF-8"}
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return nil, &connector.FieldError{Reason: "body is not a JSON object"}
	}
	// Unmarshal keeps the last of repeated keys: count the keys as written.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.Token() // the opening brace, checked by Unmarshal
	seen := map[string]bool{}
	for dec.More() {
		tok, _ := dec.Token()
		key, _ := tok.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, &connector.FieldError{Reason: "body is not a JSON object"}
		}
		switch {
		case key != fieldSubtaskID && key != fieldRequestRef && key != fieldUser && key != fieldDueAt:
			return nil, &connector.FieldError{Field: safeName(key), Reason: "unknown field (the body holds subtask_id, request_queue_ref_id, external_user_id and due_at)"}
		case seen[key]:
			return nil, &connector.FieldError{Field: key, Reason: "given more than once"}
		}
		seen[key] = true
	}
	return raw, nil
}

// text reads a required string member: non-blank, no control characters (at most max bytes when
// max > 0). The lengths of the ids are intake's to check, with the prefix counted.
func text(raw map[string]json.RawMessage, name string, max int) (string, error) {
	fail := func(reason string) (string, error) { return "", &connector.FieldError{Field: name, Reason: reason} }
	v, ok := raw[name]
	if !ok || string(v) == "null" {
		return fail("required")
	}
	var s string
	if len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &s) != nil {
		return fail("must be a string")
	}
	switch {
	case strings.ContainsRune(s, utf8.RuneError):
		return fail("holds an invalid character (a lone UTF-16 surrogate?)")
	case strings.TrimSpace(s) == "":
		return fail("empty: the workflow's body template may name a field the subtask does not have")
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fail("contains a control character")
	case max > 0 && len(s) > max:
		return fail(fmt.Sprintf("longer than %d bytes", max))
	}
	return s, nil
}

// safeName shortens an unknown field's name and keeps only printable ASCII of it.
func safeName(key string) string {
	var b strings.Builder
	for i, r := range key {
		if i >= 64 {
			b.WriteString("...")
			break
		}
		if r < 0x20 || r > 0x7e {
			r = '?'
		}
		b.WriteRune(r)
	}
	if b.Len() == 0 {
		return `""`
	}
	return b.String()
}

// door serves POST /v1/onetrust/subtasks.
type door struct {
	info  connector.Info
	token string
}

func (d *door) Routes(in connector.Intake, log *slog.Logger) map[string]http.Handler {
	h := handler{door: d, in: in, log: log}
	return map[string]http.Handler{"POST /v1/onetrust/subtasks": connector.Bearer(d.token, settingInboundToken, in, h.submit)}
}

type handler struct {
	*door
	in  connector.Intake
	log *slog.Logger
}

// answer is the door's body when it takes a request; a refusal is the generic API's
// connector.ErrorBody, so that one sender's tooling reads both.
type answer struct {
	RequestRef string `json:"request_ref"`
}

// submit is POST /v1/onetrust/subtasks, once authenticated.
func (h handler) submit(w http.ResponseWriter, r *http.Request) {
	body, ok := connector.ReadJSON(w, r, h.in)
	if !ok {
		return
	}
	st, err := ParseSubtask(body)
	if err != nil {
		var fe *connector.FieldError
		errors.As(err, &fe)
		h.in.Refused(connector.RefusedInvalid, fe.Field)
		connector.Refuse(w, http.StatusBadRequest, fe.Field, fe.Error())
		return
	}
	got, err := h.in.Submit(r.Context(), connector.Request{
		ID: st.ID, ExternalUserID: st.ExternalUserID, DueAt: st.DueAt,
		IDField: fieldSubtaskID, UserField: fieldUser,
		// IN_PROGRESS as soon as it is stored, then the outcome; subtask ids are in the
		// request_ref, so the reports keep no credential.
		Reports: []connector.NewReport{{AtIntake: true}, {}},
	})
	if err != nil {
		connector.Unavailable(w, r, h.log, h.info.DoorName(), err)
		return
	}
	switch a := got[0]; a.Admission {
	case connector.Refused:
		connector.Refuse(w, http.StatusBadRequest, a.Err.Field, a.Err.Error())
	case connector.Conflict:
		connector.Refuse(w, http.StatusConflict, fieldSubtaskID, "subtask_id: already taken for another external_user_id")
	case connector.Inserted:
		connector.WriteJSON(w, http.StatusAccepted, answer{RequestRef: h.info.RefPrefix + st.ID})
	default:
		connector.WriteJSON(w, http.StatusOK, answer{RequestRef: h.info.RefPrefix + st.ID})
	}
}
