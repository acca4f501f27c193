// Package webhookfake is a receiver of erasure-worker's outcome webhooks: an http.Handler that
// verifies every message as Standard Webhooks asks, checks its body against the contract of
// connector/webhook, remembers the events of every request_ref, injects faults on demand and
// counts what it saw, so tests and demos can check that each outcome arrived once, signed, and
// without the person's id. Every path outside /_fake/ is the receiver; under /_fake/ are the
// admin endpoints of fakekit.Admin and GET /_fake/events, for loopback and test networks only.
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
		fakekit.WriteJSON(w, http.StatusOK, map[string]any{"request_ref": ref, "events": s.Events(ref)})
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
	return append([]Event{}, s.refs[requestRef]...)
}

// maxBody bounds what is read: what fakekit.DecodeStrict reads, 64 KiB. The spec recommends
// bodies under 20 kB.
const maxBody = 64 << 10

func (s *Server) serveMessage(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	s.count(func(st *Stats) { st.Messages++ })
	f := s.Faults()
	// Verifying, parsing and drawing change nothing; the order of the cases is the receiver's.
	// One draw picks among the random faults, so each rate is the share of valid messages that
	// get it.
	verifyErr := webhook.Verify(s.secret, r.Header, body, now, 0)
	ev, parseErr := parseEvent(body)
	ev.WebhookID = r.Header.Get(webhook.HeaderID)
	ev.ReceivedAt = now
	kind := fakekit.Draw(f)
	switch {
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", http.MethodPost)
		s.answer(w, http.StatusMethodNotAllowed, "method: must be POST", malformed)
	case readErr != nil:
		s.answer(w, http.StatusRequestEntityTooLarge, "body: unreadable or over 64 KiB", malformed)
	case now.Before(f.OutageUntil):
		s.answer(w, http.StatusInternalServerError, "receiver unavailable", faulted("outage"))
	case f.RejectSignatures:
		s.answer(w, http.StatusUnauthorized, "signature refused", faulted("reject_signatures"))
	// Verify's reasons name the header at fault; they hold no signature or secret.
	case errors.Is(verifyErr, webhook.ErrStaleTimestamp):
		s.answer(w, http.StatusUnauthorized, verifyErr.Error(), func(st *Stats) { st.StaleTimestamps++ })
	case verifyErr != nil:
		s.answer(w, http.StatusUnauthorized, verifyErr.Error(), func(st *Stats) { st.BadSignatures++ })
	case errors.Is(parseErr, errUserID):
		s.answer(w, http.StatusBadRequest, parseErr.Error(), func(st *Stats) { st.Violations++ })
	case parseErr != nil:
		s.answer(w, http.StatusBadRequest, parseErr.Error(), malformed)
	case kind == "hang":
		s.count(faulted(kind))
		fakekit.Hang(r)
		fakekit.Abort()
	case kind == "lost_answer":
		// Processed, but the answer never reaches the sender: it will retry with the same
		// webhook-id, and that repeat is legitimate.
		s.accept(ev)
		s.count(faulted(kind))
		fakekit.Abort()
	case kind == "rate_limit":
		fakekit.RetryAfter(w, f.RetryAfter)
		s.answer(w, http.StatusTooManyRequests, "slow down", faulted(kind))
	case kind == "conflict":
		s.answer(w, http.StatusConflict, "conflict", faulted(kind))
	case kind == "error":
		s.answer(w, http.StatusInternalServerError, "receiver error", faulted(kind))
	default:
		s.accept(ev)
		w.WriteHeader(http.StatusNoContent)
	}
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

func (s *Server) count(stat func(*Stats)) {
	s.mu.Lock()
	stat(&s.st)
	s.mu.Unlock()
}

func malformed(st *Stats) { st.Malformed++ }

func faulted(kind string) func(*Stats) { return func(st *Stats) { st.Faulted[kind]++ } }

// answer counts a message with stat and answers status with {"message": reason}.
func (s *Server) answer(w http.ResponseWriter, status int, reason string, stat func(*Stats)) {
	s.count(stat)
	fakekit.WriteJSON(w, status, map[string]string{"message": reason})
}

// The contract of connector/webhook, read independently of its encoder.
var outcomeTypes = map[string]string{
	"deleted": webhook.EventSucceeded, "not_found": webhook.EventSucceeded,
	"rejected": webhook.EventFailed, "invalid": webhook.EventFailed, "exhausted": webhook.EventFailed,
}

var errUserID = errors.New("looks like a user id; an outcome webhook must not carry one")

// userIDKeys are field names that would carry a person's id, compared without case, _ or -,
// beside any that ends in "userid".
var userIDKeys = []string{"externalid", "email", "identity", "identities", "identifier", "subject"}

// findUserID returns the path of the first field in v whose name would carry a person's id, or "".
func findUserID(v any, path string) string {
	switch v := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			n := strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(k))
			if strings.HasSuffix(n, "userid") || slices.Contains(userIDKeys, n) {
				return path + k
			}
			if found := findUserID(v[k], path+k+"."); found != "" {
				return found
			}
		}
	case []any:
		for i, e := range v {
			if found := findUserID(e, fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i)); found != "" {
				return found
			}
		}
	}
	return ""
}

// parseEvent checks a body against the contract exactly:
// {"type","timestamp","data":{"request_ref","outcome","error_code","completed_at"}}, nothing
// more, the type matching the outcome. Its errors name the field.
func parseEvent(body []byte) (Event, error) {
	var generic map[string]any
	if err := json.Unmarshal(body, &generic); err != nil {
		return Event{}, errors.New("body: not a JSON object")
	}
	if path := findUserID(generic, ""); path != "" {
		return Event{}, fmt.Errorf("%s: %w", path, errUserID)
	}
	var in struct {
		Type      string `json:"type"`
		Timestamp string `json:"timestamp"`
		Data      struct {
			RequestRef  string `json:"request_ref"`
			Outcome     string `json:"outcome"`
			ErrorCode   string `json:"error_code"`
			CompletedAt string `json:"completed_at"`
		} `json:"data"`
	}
	if err := fakekit.DecodeStrict(bytes.NewReader(body), &in); err != nil {
		return Event{}, err
	}
	d := in.Data
	rawData, _ := generic["data"].(map[string]any)
	code, hasCode := rawData["error_code"] // null when there is none, but never left out
	completed, completedErr := time.Parse(time.RFC3339Nano, d.CompletedAt)
	_, timestampErr := time.Parse(time.RFC3339Nano, in.Timestamp)
	want, known := outcomeTypes[d.Outcome]
	switch {
	case strings.TrimSpace(d.RequestRef) == "":
		return Event{}, errors.New("data.request_ref: missing or empty")
	case !known:
		return Event{}, errors.New("data.outcome: not deleted, not_found, rejected, invalid or exhausted")
	case in.Type != want:
		return Event{}, fmt.Errorf("type: must be %s for data.outcome %s", want, d.Outcome)
	case !hasCode:
		return Event{}, errors.New("data.error_code: missing (null when there is none)")
	case code != nil && d.ErrorCode == "":
		return Event{}, errors.New("data.error_code: not a non-empty string or null")
	case completedErr != nil:
		return Event{}, errors.New("data.completed_at: missing or not an RFC 3339 timestamp")
	case timestampErr != nil:
		return Event{}, errors.New("timestamp: missing or not an RFC 3339 timestamp")
	}
	return Event{Type: in.Type, RequestRef: d.RequestRef, Outcome: d.Outcome, ErrorCode: d.ErrorCode,
		CompletedAt: completed}, nil
}

// Faults are injected into messages. Rates are shares in [0, 1] of the messages that pass
// verification; OutageUntil and RejectSignatures come before verification. A field's help is its
// flag's in cmd/webhookfake.
type Faults struct {
	ErrorRate     float64  `json:"error_rate" help:"share of valid messages answered 500"`
	RateLimitRate float64  `json:"rate_limit_rate" help:"share of valid messages answered 429"`
	RetryAfter    Duration `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	// ConflictRate: a 409 means nothing in Standard Webhooks; the sender must treat it as a
	// failure, not as "already closed".
	ConflictRate     float64   `json:"conflict_rate" help:"share of valid messages answered 409"`
	HangRate         float64   `json:"hang_rate" help:"share of valid messages never answered"`
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
