// Package webhookfake is a receiver of erasure-worker's outcome webhooks, as knotfake is a
// stand-in for Knot: an http.Handler that verifies every message as Standard Webhooks asks
// (signature, timestamp within five minutes), checks the body against the contract of
// connector/webhook, drops repeats by webhook-id, remembers the events of every request_ref,
// injects faults on demand (500, 429, 409, 401, hangs, lost answers, outages) and counts what it
// saw, so tests and demos can check that each outcome arrived once, signed, and without the
// person's id.
//
// Every path outside /_fake/ is the receiver. Under /_fake/ it serves admin endpoints (stats,
// faults, events, reset) without authentication: the fake is meant for loopback and test
// networks only.
package webhookfake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

// Options configures a Server.
type Options struct {
	// Secret is the shared whsec_ secret the messages must be signed with.
	Secret string
	// Faults are the faults injected from the start.
	Faults Faults
}

// Server is the fake receiver. It implements http.Handler and is safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	secret string

	mu sync.Mutex
	st Stats
	// ids holds the first accepted event of every webhook-id; refs every accepted delivery per
	// request_ref, repeats included.
	ids  map[string]Event
	refs map[string][]Event
}

// New returns a fake receiver. It fails when the secret is not a valid whsec_ secret or the
// faults do not validate.
func New(opts Options) (*Server, error) {
	// Verify checks the secret before anything else; with no headers it goes no further.
	if err := webhook.Verify(opts.Secret, http.Header{}, nil, time.Time{}, 0); errors.Is(err, webhook.ErrBadSecret) {
		return nil, err
	}
	if err := opts.Faults.Validate(); err != nil {
		return nil, fmt.Errorf("faults: %w", err)
	}
	s := &Server{secret: opts.Secret}
	s.Reset()
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{
		Wire: http.HandlerFunc(s.serveMessage), Stats: func() any { return s.Stats() }, Reset: s.Reset, Now: time.Now})
	// GET /_fake/events?request_ref=REF: {"request_ref":REF,"events":[...]}, every accepted delivery.
	s.HandleFunc("GET /_fake/events", func(w http.ResponseWriter, r *http.Request) {
		ref := r.URL.Query().Get("request_ref")
		if ref == "" {
			s.Refuse(w, http.StatusBadRequest, "request_ref: missing from the query")
			return
		}
		fakekit.WriteJSON(w, http.StatusOK, map[string]any{"request_ref": ref, "events": append([]Event{}, s.Events(ref)...)})
	})
	return s, nil
}

// Reset forgets every message and event; faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = Stats{Faulted: map[string]int64{}, ByType: map[string]int64{}, ByOutcome: map[string]int64{}}
	s.ids = map[string]Event{}
	s.refs = map[string][]Event{}
}

// Event is one accepted delivery of an outcome webhook.
type Event struct {
	WebhookID   string    `json:"webhook_id"`
	Type        string    `json:"type"`
	RequestRef  string    `json:"request_ref"`
	Outcome     string    `json:"outcome"`
	ErrorCode   string    `json:"error_code,omitempty"`
	CompletedAt time.Time `json:"completed_at"`
	ReceivedAt  time.Time `json:"received_at"`
	// Repeat: this webhook-id had been accepted before (a retry after a lost answer).
	Repeat bool `json:"repeat"`
}

// same tells whether two deliveries say the same thing (the times of arrival aside).
func (e Event) same(o Event) bool {
	return e.Type == o.Type && e.RequestRef == o.RequestRef && e.Outcome == o.Outcome &&
		e.ErrorCode == o.ErrorCode && e.CompletedAt.Equal(o.CompletedAt)
}

// Events returns every accepted delivery for a request_ref, in order of arrival.
func (s *Server) Events(requestRef string) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.refs[requestRef])
}

// maxBody bounds what is read; the spec recommends bodies under 20 kB.
const maxBody = 1 << 20

func (s *Server) serveMessage(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	s.count(func(st *Stats) { st.Messages++ })
	f := s.Faults()

	switch {
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", http.MethodPost)
		s.refuseMalformed(w, http.StatusMethodNotAllowed, "method: must be POST")
		return
	case readErr != nil:
		s.refuseMalformed(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: unreadable or over %d bytes", maxBody))
		return
	}

	now := time.Now()
	switch {
	case now.Before(f.OutageUntil):
		s.fault(w, "outage", http.StatusInternalServerError, "receiver unavailable")
		return
	case f.RejectSignatures:
		s.fault(w, "reject_signatures", http.StatusUnauthorized, "signature refused")
		return
	}

	if err := webhook.Verify(s.secret, r.Header, body, now, 0); err != nil {
		stale := errors.Is(err, webhook.ErrStaleTimestamp)
		s.count(func(st *Stats) {
			if stale {
				st.StaleTimestamps++
			} else {
				st.BadSignatures++
			}
		})
		// The reason names the header at fault; it holds no signature or secret.
		s.respond(w, http.StatusUnauthorized, err.Error())
		return
	}

	ev, err := parseEvent(body)
	var v *violation
	switch {
	case errors.As(err, &v):
		s.count(func(st *Stats) { st.Violations++ })
		s.respond(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		s.refuseMalformed(w, http.StatusBadRequest, err.Error())
		return
	}
	ev.WebhookID = r.Header.Get(webhook.HeaderID)
	ev.ReceivedAt = arrived

	// One draw decides among the random faults, so each rate is the share of valid messages
	// that get that fault (as long as they sum to <= 1).
	switch kind := fakekit.Draw(f); kind {
	case "hang":
		s.count(func(st *Stats) { st.Faulted[kind]++ })
		fakekit.Hang(r)
		fakekit.Abort()
	case "lost_answer":
		// Processed, but the answer never reaches the sender: it will retry with the same
		// webhook-id, and that repeat is legitimate.
		s.accept(ev)
		s.count(func(st *Stats) { st.Faulted[kind]++ })
		fakekit.Abort()
	case "rate_limit":
		fakekit.RetryAfter(w, f.RetryAfter)
		s.fault(w, kind, http.StatusTooManyRequests, "slow down")
		return
	case "conflict":
		s.fault(w, kind, http.StatusConflict, "conflict")
		return
	case "error":
		s.fault(w, kind, http.StatusInternalServerError, "receiver error")
		return
	}
	s.accept(ev)
	w.WriteHeader(http.StatusNoContent)
}

// accept records a delivery the receiver processed.
func (s *Server) accept(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if first, seen := s.ids[ev.WebhookID]; seen {
		ev.Repeat = true
		s.st.DuplicateWebhookIDs++
		if !first.same(ev) {
			s.st.ConflictingWebhookIDs++
		}
	} else {
		s.ids[ev.WebhookID] = ev
		s.st.ByType[ev.Type]++
		s.st.ByOutcome[ev.Outcome]++
	}
	s.refs[ev.RequestRef] = append(s.refs[ev.RequestRef], ev)
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

func (s *Server) refuseMalformed(w http.ResponseWriter, status int, reason string) {
	s.count(func(st *Stats) { st.Malformed++ })
	s.respond(w, status, reason)
}

func (s *Server) fault(w http.ResponseWriter, kind string, status int, message string) {
	s.count(func(st *Stats) { st.Faulted[kind]++ })
	s.respond(w, status, message)
}

// respond writes a JSON {"message": ...}.
func (s *Server) respond(w http.ResponseWriter, status int, message string) {
	fakekit.WriteJSON(w, status, map[string]string{"message": message})
}

// The contract of connector/webhook, read independently of its encoder.
var outcomeTypes = map[string]string{
	"deleted": webhook.EventSucceeded, "not_found": webhook.EventSucceeded,
	"rejected": webhook.EventFailed, "invalid": webhook.EventFailed, "exhausted": webhook.EventFailed,
}

// violation is a body that carries, or seems to carry, a user's id.
type violation struct{ where string }

func (v *violation) Error() string {
	return v.where + ": looks like a user id; an outcome webhook must not carry one"
}

// userIDKeys are field names that would carry a person's id, compared without case, _ or -.
var userIDKeys = []string{"externaluserid", "userid", "externalid", "email", "identity", "identities", "identifier", "subject"}

func userIDKey(k string) bool {
	n := strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(k))
	return strings.HasSuffix(n, "userid") || slices.Contains(userIDKeys, n)
}

// findUserID walks a decoded body for a field name that looks like a user id.
func findUserID(v any, path string) *violation {
	switch v := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if userIDKey(k) {
				return &violation{where: p}
			}
			if found := findUserID(v[k], p); found != nil {
				return found
			}
		}
	case []any:
		for i, e := range v {
			if found := findUserID(e, fmt.Sprintf("%s[%d]", path, i)); found != nil {
				return found
			}
		}
	}
	return nil
}

// parseEvent checks a body against the contract exactly:
// {"type","timestamp","data":{"request_ref","outcome","error_code","completed_at"}}, nothing
// more, the type matching the outcome. Its errors name the field.
func parseEvent(body []byte) (Event, error) {
	var generic any
	if err := json.Unmarshal(body, &generic); err != nil {
		return Event{}, errors.New("body: not JSON")
	}
	if v := findUserID(generic, ""); v != nil {
		return Event{}, v
	}
	var in struct {
		Type      *string `json:"type"`
		Timestamp *string `json:"timestamp"`
		Data      *struct {
			RequestRef  *string         `json:"request_ref"`
			Outcome     *string         `json:"outcome"`
			ErrorCode   json.RawMessage `json:"error_code"` // null arrives as "null", absence as nothing
			CompletedAt *string         `json:"completed_at"`
		} `json:"data"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return Event{}, fmt.Errorf("%s: not in the contract", strings.Trim(f, `"`))
		}
		return Event{}, errors.New("body: not an object of the contract's shape")
	}
	if dec.More() {
		return Event{}, errors.New("body: trailing data")
	}
	var ev Event
	var err error
	switch {
	case in.Type == nil:
		return Event{}, errors.New("type: missing")
	case in.Data == nil:
		return Event{}, errors.New("data: missing")
	case in.Data.RequestRef == nil || strings.TrimSpace(*in.Data.RequestRef) == "":
		return Event{}, errors.New("data.request_ref: missing or empty")
	case in.Data.Outcome == nil:
		return Event{}, errors.New("data.outcome: missing")
	case len(in.Data.ErrorCode) == 0:
		return Event{}, errors.New("data.error_code: missing (null when there is none)")
	}
	ev.Type, ev.RequestRef, ev.Outcome = *in.Type, *in.Data.RequestRef, *in.Data.Outcome
	want, known := outcomeTypes[ev.Outcome]
	switch {
	case ev.Type != webhook.EventSucceeded && ev.Type != webhook.EventFailed:
		return Event{}, errors.New("type: not erasure.succeeded or erasure.failed")
	case !known:
		return Event{}, errors.New("data.outcome: not deleted, not_found, rejected, invalid or exhausted")
	case want != ev.Type:
		return Event{}, errors.New("type: does not match data.outcome")
	}
	if string(in.Data.ErrorCode) != "null" {
		if err := json.Unmarshal(in.Data.ErrorCode, &ev.ErrorCode); err != nil || ev.ErrorCode == "" {
			return Event{}, errors.New("data.error_code: not a non-empty string or null")
		}
	}
	if ev.CompletedAt, err = rfc3339(in.Data.CompletedAt); err != nil {
		return Event{}, fmt.Errorf("data.completed_at: %v", err)
	}
	if _, err = rfc3339(in.Timestamp); err != nil {
		return Event{}, fmt.Errorf("timestamp: %v", err)
	}
	return ev, nil
}

func rfc3339(s *string) (time.Time, error) {
	if s == nil {
		return time.Time{}, errors.New("missing")
	}
	t, err := time.Parse(time.RFC3339Nano, *s)
	if err != nil {
		return time.Time{}, errors.New("not an RFC 3339 timestamp")
	}
	return t, nil
}

// Faults are injected into messages. Rates are shares in [0, 1] of the messages that pass
// verification; OutageUntil and RejectSignatures come before verification. A field's help is its
// flag's in cmd/webhookfake.
type Faults struct {
	// ErrorRate: the message is not processed.
	ErrorRate     float64  `json:"error_rate" help:"share of valid messages answered 500"`
	RateLimitRate float64  `json:"rate_limit_rate" help:"share of valid messages answered 429"`
	RetryAfter    Duration `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	// ConflictRate: a 409 means nothing in Standard Webhooks; the sender must treat it as a
	// failure, not as "already closed".
	ConflictRate float64 `json:"conflict_rate" help:"share of valid messages answered 409"`
	// HangRate: they block until the sender goes away.
	HangRate float64 `json:"hang_rate" help:"share of valid messages never answered"`
	// LostAnswerRate: the sender retries what was received.
	LostAnswerRate   float64   `json:"lost_answer_rate" help:"share of valid messages processed, then dropped without an answer"`
	RejectSignatures bool      `json:"reject_signatures" help:"answer every message 401"`
	OutageUntil      time.Time `json:"outage_until,omitzero" help:"answer every message 500 for this long after start"`
}

// Validate reports a rate outside [0, 1], rates that sum above 1, or a negative retry_after,
// naming the field.
func (f Faults) Validate() error { return fakekit.Validate("", f) }

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration = fakekit.Duration

// Stats is what the fake saw since New or the last Reset.
type Stats struct {
	// Messages counts every request to the receiver.
	Messages int64 `json:"messages"`
	// BadSignatures counts 401s for missing headers, a bad timestamp header or no matching
	// signature; StaleTimestamps 401s for a webhook-timestamp more than five minutes off.
	BadSignatures   int64 `json:"bad_signatures"`
	StaleTimestamps int64 `json:"stale_timestamps"`
	// Malformed counts signed bodies that break the contract, wrong methods and oversized
	// bodies; Violations signed bodies with a field that would carry a user id.
	Malformed  int64 `json:"malformed"`
	Violations int64 `json:"violations"`
	// ByType and ByOutcome count distinct webhook-ids accepted.
	ByType    map[string]int64 `json:"by_type"`
	ByOutcome map[string]int64 `json:"by_outcome"`
	// RequestRefs counts distinct request_refs accepted; RequestRefsSeveralIDs those that came
	// under more than one webhook-id (two reports for one request), ConflictingOutcomes those
	// told two different outcomes.
	RequestRefs           int64 `json:"request_refs"`
	RequestRefsSeveralIDs int64 `json:"request_refs_several_ids"`
	ConflictingOutcomes   int64 `json:"conflicting_outcomes"`
	// DuplicateWebhookIDs counts accepted messages whose webhook-id had been accepted before;
	// ConflictingWebhookIDs those among them that said something else under the same id.
	DuplicateWebhookIDs   int64 `json:"duplicate_webhook_ids"`
	ConflictingWebhookIDs int64 `json:"conflicting_webhook_ids"`
	// Faulted counts injected faults by kind: "error", "rate_limit", "conflict", "hang",
	// "lost_answer", "outage", "reject_signatures".
	Faulted map[string]int64 `json:"faulted"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fakekit.Snapshot(s.st)
	st.RequestRefs = int64(len(s.refs))
	for _, evs := range s.refs {
		ids := map[string]bool{}
		outcomes := map[string]bool{}
		for _, e := range evs {
			ids[e.WebhookID] = true
			outcomes[e.Outcome] = true
		}
		if len(ids) > 1 {
			st.RequestRefsSeveralIDs++
		}
		if len(outcomes) > 1 {
			st.ConflictingOutcomes++
		}
	}
	return st
}
