// Package ketchfake is a stand-in for Ketch, as knotfake is for Knot. It plays both of Ketch's
// parts in the Ketch Forwarder protocol (repository ketch-com/ketch-forwarder, api/dsr/v1):
//
//   - it sends DeleteRequests as Ketch would (DeleteRequest, Push), each naming callbacks below
//     the fake's own URL with a fresh credential per request and callback, and records the
//     synchronous DeleteResponse it gets back;
//   - it serves those callbacks (POST /callbacks/{name}): it checks the callback's credential,
//     validates each DeleteStatusEvent against the spec, and counts events per request, so a
//     test can tell that every callback got exactly one final event and none after it.
//
// It injects faults on the callbacks (5xx, 429, 401, 409, hangs, lost answers, outages) and
// serves admin endpoints under /_fake/ (stats, faults, reset, push, requests). They have no
// authentication: the fake is meant for loopback and test networks only.
//
// The package knows nothing of package ketch on purpose: it reads the wire format on its own, so
// a misreading of the spec in one does not hide in the other.
package ketchfake

import (
	"cmp"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"io"
	"math"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

// Options configures a Server.
type Options struct {
	// CallbackBaseURL is the fake's own URL as the forwarder reaches it ("http://127.0.0.1:8081");
	// the callbacks of the requests it builds are CallbackBaseURL + "/callbacks/{name}".
	// SetCallbackBaseURL sets it later (httptest gives the URL only once the server runs).
	CallbackBaseURL string
	// IdentitySpace is the space of the identity that carries the Knot id; default "account_id".
	IdentitySpace string
	// Tenant is the metadata.tenant of every request; default "ketchfake".
	Tenant string
	// CallbacksPerRequest is how many callbacks each request names (default 2, at most 16). The first is
	// called with "Authorization: Bearer cb-…", the others with "X-Ketch-Callback-Token: cb-…":
	// each value is new per request and callback.
	CallbacksPerRequest int
	// Faults are the callback faults injected from the start.
	Faults Faults
	// Now is the clock for timestamps, outages and Retry-After bookkeeping; nil means time.Now.
	Now func() time.Time
	// Client sends pushed requests; nil means a client with a 30 s timeout.
	Client *http.Client
}

// Server is the fake. It implements http.Handler and is safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	space, tenant string
	perRequest    int
	now           func() time.Time
	client        *http.Client

	mu   sync.Mutex
	base string
	reqs map[string]*request
	// tokens maps a callback credential to its request and callback.
	tokens map[string]callbackRef
	st     Stats // counts; the UIDs* are counted at read time
}

type callbackRef struct {
	uid   string
	index int
}

// request is what the fake remembers of a DeleteRequest it built.
type request struct {
	uid, identityValue string
	subject            Subject
	callbacks          []*callback
	response           *Response
}

// callback is one callback of one request, and what it received.
type callback struct {
	name, url      string
	header, value  string // the credential: the header's name and its whole value
	events, finals int64
	afterFinal     int64
	pairs          map[string]int64
	notBefore      time.Time
}

// New returns a fake Ketch.
func New(opts Options) *Server {
	s := &Server{
		space:      cmp.Or(opts.IdentitySpace, "account_id"),
		tenant:     cmp.Or(opts.Tenant, "ketchfake"),
		perRequest: opts.CallbacksPerRequest,
		now:        opts.Now,
		client:     opts.Client,
		base:       strings.TrimRight(opts.CallbackBaseURL, "/"),
	}
	if s.perRequest <= 0 {
		s.perRequest = 2
	}
	s.perRequest = min(s.perRequest, maxCallbacksPerRequest)
	if s.now == nil {
		s.now = time.Now
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 30 * time.Second}
	}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("/callbacks/{name...}", s.serveCallback)
	wire.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "Not found", nil)
	})
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Stats: func() any { return s.Stats() },
		Reset: s.Reset, Now: s.now, ErrorKey: "error", ResetNoContent: true})
	s.HandleFunc("POST /_fake/push", fakekit.PushHandler(s.Admin, s.push, func(r PushResult) int { return r.Sent }))
	s.HandleFunc("GET /_fake/requests/{uid}", func(w http.ResponseWriter, r *http.Request) {
		rec, ok := s.Request(r.PathValue("uid"))
		if !ok {
			s.Refuse(w, http.StatusNotFound, "no request with this uid")
			return
		}
		fakekit.WriteJSON(w, http.StatusOK, rec)
	})
	return s
}

// SetCallbackBaseURL sets the URL the callbacks of requests built from now on point below.
func (s *Server) SetCallbackBaseURL(base string) {
	s.mu.Lock()
	s.base = strings.TrimRight(base, "/")
	s.mu.Unlock()
}

// Reset forgets every request (their callbacks' credentials with them) and clears the stats;
// faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = map[string]*request{}
	s.tokens = map[string]callbackRef{}
	s.st = Stats{Responses: map[string]int64{}, EventsByPair: map[string]int64{}, Faulted: map[string]int64{}, MalformedByField: map[string]int64{}}
}

const (
	// maxCallbacksPerRequest caps Options.CallbacksPerRequest at what package ketch accepts.
	maxCallbacksPerRequest = 16
	callbackPath           = "/callbacks/"
	// maxEventBody bounds a callback body: Ketch limits the data of all callbacks to 1 MB.
	maxEventBody = 1 << 20
)

// callbackName is the path name of callback i, and callbackHeader the header its credential
// travels in.
func callbackName(i int) string { return "cb" + strconv.Itoa(i+1) }

func callbackHeader(i int) string {
	if i == 0 {
		return "Authorization"
	}
	return "X-Ketch-Callback-Token"
}

func callbackIndex(name string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "cb"))
	if !strings.HasPrefix(name, "cb") || err != nil || n < 1 || n > maxCallbacksPerRequest || callbackName(n-1) != name {
		return 0, false
	}
	return n - 1, true
}

// Ketch's answers: the reference callback receiver answers 204 to an accepted event and an Error
// (api/runtime/v1/Error.md) otherwise.
type ketchError struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Metadata   *metadata `json:"metadata,omitempty"`
	Error      errorBody `json:"error"`
}

type errorBody struct {
	Code    int    `json:"code"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

type metadata struct {
	UID    string `json:"uid"`
	Tenant string `json:"tenant"`
}

func writeError(w http.ResponseWriter, code int, status, message string, md *metadata) {
	fakekit.WriteJSON(w, code, ketchError{APIVersion: "dsr/v1", Kind: "Error", Metadata: md,
		Error: errorBody{Code: code, Status: status, Message: message}})
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

func (s *Server) serveCallback(w http.ResponseWriter, r *http.Request) {
	arrived := s.now()
	s.count(func(st *Stats) {
		st.Callbacks++
		st.FirstCallback, st.LastCallback = fakekit.Span(st.FirstCallback, st.LastCallback, arrived)
	})
	index, known := callbackIndex(r.PathValue("name"))
	if !known {
		writeError(w, http.StatusNotFound, "not_found", "no such callback", nil)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid", "callbacks take POST", nil)
		return
	}
	body, bodyErr := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxEventBody))

	f := s.Faults()
	s.mu.Lock()
	ref, tokenKnown := s.lookup(r.Header.Get(callbackHeader(index)))
	authorized := tokenKnown && ref.index == index
	if authorized {
		if cb := s.reqs[ref.uid].callbacks[index]; !cb.notBefore.IsZero() {
			if arrived.Before(cb.notBefore) {
				s.st.EarlyRetries++
			} else {
				cb.notBefore = time.Time{}
			}
		}
	}
	s.mu.Unlock()

	if !fakekit.Sleep(r, fakekit.Latency(f.Latency, f.LatencyJitter)) {
		fakekit.Abort()
	}
	now := s.now()
	switch {
	case now.Before(f.OutageUntil):
		s.fault(w, "outage", http.StatusServiceUnavailable, "unavailable", "service is unavailable")
		return
	case f.RejectCredentials:
		s.fault(w, "reject_credentials", http.StatusUnauthorized, "forbidden", "operation is not authorized")
		return
	case !authorized:
		s.count(func(st *Stats) { st.BadCredentials++ })
		writeError(w, http.StatusUnauthorized, "forbidden", "operation is not authorized", nil)
		return
	}

	kind := fakekit.Draw(f)
	switch kind {
	case "hang":
		s.count(func(st *Stats) { st.Faulted[kind]++ })
		fakekit.Hang(r)
		fakekit.Abort()
	case "rate_limit":
		wait := fakekit.RetryAfter(w, f.RetryAfter)
		s.mu.Lock()
		if rq := s.reqs[ref.uid]; rq != nil {
			rq.callbacks[index].notBefore = now.Add(time.Duration(wait) * time.Second)
		}
		s.mu.Unlock()
		s.fault(w, kind, http.StatusTooManyRequests, "unavailable", "too many requests")
		return
	case "error":
		s.fault(w, kind, http.StatusInternalServerError, "internal", "internal error")
		return
	case "conflict":
		s.fault(w, kind, http.StatusConflict, "conflict", "action cannot be performed")
		return
	}

	ev, field, reason := parseEvent(r.Header, body, bodyErr)
	if field == "" && ev.Metadata.UID != ref.uid {
		s.mu.Lock()
		_, otherKnown := s.reqs[ev.Metadata.UID]
		s.mu.Unlock()
		if otherKnown {
			// Another request's event with this request's credential: the forwarder mixed up
			// whose headers go where.
			s.count(func(st *Stats) { st.BadCredentials++ })
			writeError(w, http.StatusUnauthorized, "forbidden", "operation is not authorized", nil)
			return
		}
		field, reason = "metadata.uid", "not a request Ketch sent"
	}
	if field == "" && ev.Metadata.Tenant != s.tenant {
		field, reason = "metadata.tenant", "not the request's tenant"
	}
	if field != "" {
		s.count(func(st *Stats) { st.MalformedEvents++; st.MalformedByField[field]++ })
		writeError(w, http.StatusBadRequest, "invalid", field+": "+reason, nil)
		return
	}

	pair := pairKey(ev.Event.Status, ev.Event.Reason)
	final := finalStatus(ev.Event.Status)
	s.mu.Lock()
	rq := s.reqs[ref.uid]
	if rq == nil { // reset while this event was in flight: its credential is gone
		s.st.BadCredentials++
		s.mu.Unlock()
		writeError(w, http.StatusUnauthorized, "forbidden", "operation is not authorized", nil)
		return
	}
	cb := rq.callbacks[index]
	closed := cb.finals > 0 || (rq.response != nil && finalStatus(rq.response.Status))
	cb.events++
	cb.pairs[pair]++
	s.st.Events++
	s.st.EventsByPair[pair]++
	if closed {
		cb.afterFinal++
		s.st.EventsAfterFinal++
	}
	if final {
		cb.finals++
		s.st.FinalEvents++
		if cb.finals > 1 {
			s.st.DuplicateFinals++
		}
	}
	reject := closed && f.RejectAfterFinal
	if reject {
		s.st.Faulted["reject_after_final"]++
	}
	if kind == "lost_answer" {
		s.st.Faulted[kind]++
	}
	s.mu.Unlock()

	if kind == "lost_answer" {
		// Taken, but the answer never reaches the forwarder: it will send the event again.
		fakekit.Abort()
	}
	if reject {
		writeError(w, http.StatusConflict, "conflict", "the request is closed", &ev.Metadata)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// lookup finds the callback a credential belongs to, comparing in constant time so that the fake
// does not teach timing habits. Callers hold s.mu.
func (s *Server) lookup(value string) (callbackRef, bool) {
	if value == "" {
		return callbackRef{}, false
	}
	ref, ok := s.tokens[value]
	if !ok {
		return callbackRef{}, false
	}
	cb := s.reqs[ref.uid].callbacks[ref.index]
	return ref, subtle.ConstantTimeCompare([]byte(value), []byte(cb.value)) == 1
}

func (s *Server) fault(w http.ResponseWriter, kind string, code int, status, message string) {
	s.count(func(st *Stats) { st.Faulted[kind]++ })
	writeError(w, code, status, message, nil)
}

// statusEvent is a DeleteStatusEvent as the fake reads it.
type statusEvent struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   metadata `json:"metadata"`
	Event      struct {
		Status   string `json:"status"`
		Reason   string `json:"reason"`
		Expected any    `json:"expectedCompletionTimestamp"`
		ID       any    `json:"requestID"`
	} `json:"event"`
}

// parseEvent checks a DeleteStatusEvent against Delete.md and Status.md; it returns the field at
// fault and why, or "" for a valid event.
func parseEvent(h http.Header, body []byte, readErr error) (statusEvent, string, string) {
	var ev statusEvent
	if mt, _, err := mime.ParseMediaType(h.Get("Content-Type")); err != nil || mt != "application/json" {
		return ev, "Content-Type", "must be application/json"
	}
	if a := h.Get("Accept"); a != "" && !strings.Contains(a, "application/json") && !strings.Contains(a, "*/*") {
		return ev, "Accept", "must accept application/json"
	}
	if readErr != nil {
		return ev, "body", "unreadable or larger than 1 MiB"
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return ev, "body", "not a JSON object"
	}
	// Keys must match exactly: encoding/json would fold "Kind" into "kind".
	for _, k := range []string{"apiVersion", "kind", "metadata", "event"} {
		if _, ok := top[k]; !ok {
			return ev, k, "missing"
		}
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		return ev, "body", "a field has the wrong type"
	}
	switch {
	case ev.APIVersion != "dsr/v1":
		return ev, "apiVersion", `must be "dsr/v1"`
	case ev.Kind != "DeleteStatusEvent":
		return ev, "kind", `must be "DeleteStatusEvent"`
	case ev.Metadata.UID == "":
		return ev, "metadata.uid", "missing"
	case !validStatus(ev.Event.Status):
		return ev, "event.status", "not a status of Status.md"
	case !validPair(ev.Event.Status, ev.Event.Reason):
		return ev, "event.reason", "not a reason Status.md gives this status"
	}
	if ev.Event.Expected != nil {
		if n, ok := ev.Event.Expected.(float64); !ok || n < 0 || n != math.Trunc(n) {
			return ev, "event.expectedCompletionTimestamp", "not Unix seconds"
		}
	}
	if ev.Event.ID != nil {
		if _, ok := ev.Event.ID.(string); !ok {
			return ev, "event.requestID", "not a string"
		}
	}
	return ev, "", ""
}

// Status.md, read on its own (see package doc). "other" is in the enum and the examples.
var reasonsFor = map[string][]string{
	"pending":   {"need_user_verification", "pending"},
	"completed": {"requested", "no_match", "insufficient_identification", "executed", "executed_direct_subject_delivery"},
	"denied": {"no_match", "insufficient_identification", "insufficient_verification", "claim_not_covered",
		"outside_jurisdiction", "too_many_requests", "suspected_fraud", "invalid_credentials",
		"insufficient_permission", "internal_app_error", "sla_expiry"},
}

func validStatus(s string) bool {
	switch s {
	case "unknown", "pending", "in_progress", "completed", "cancelled", "denied":
		return true
	}
	return false
}

func validPair(status, reason string) bool {
	if !validStatus(status) {
		return false
	}
	return reason == "" || reason == "unknown" || reason == "other" || slices.Contains(reasonsFor[status], reason)
}

func finalStatus(s string) bool { return s == "completed" || s == "cancelled" || s == "denied" }

// pairKey names a status and reason in the stats: "completed/executed", or the status alone
// when no reason was given.
func pairKey(status, reason string) string {
	if reason == "" {
		return status
	}
	return status + "/" + reason
}

// newUUID returns a random UUIDv4, as metadata.uid is (Metadata.md).
func newUUID() string { return fakekit.NewUUID() }

func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return "cb-" + hex.EncodeToString(b[:])
}

// Stats is what the fake saw. All counts are since New or the last Reset.
type Stats struct {
	// RequestsPushed counts DeleteRequests Push sent.
	RequestsPushed int64 `json:"requests_pushed"`
	// Responses counts the forwarder's answers to pushed requests: a valid DeleteResponse by
	// "status/reason" (the status alone when it gave no reason), anything else as "http_<code>"
	// (with a valid Ketch Error) or "no_answer".
	Responses map[string]int64 `json:"responses"`
	// MalformedResponses counts answers that broke the spec: a 200 that is no valid
	// DeleteResponse for the request, or another status without a valid Ketch Error.
	MalformedResponses int64 `json:"malformed_responses"`
	// Callbacks counts every request to /callbacks/.
	Callbacks int64 `json:"callbacks"`
	// Events counts valid DeleteStatusEvents taken, EventsByPair by "status/reason".
	Events       int64            `json:"events"`
	EventsByPair map[string]int64 `json:"events_by_pair"`
	// FinalEvents counts events with a final status (completed, cancelled, denied).
	FinalEvents int64 `json:"final_events"`
	// DuplicateFinals counts final events beyond the first at the same callback of a request.
	DuplicateFinals int64 `json:"duplicate_finals"`
	// EventsAfterFinal counts events, final or not, at a callback that already had a final
	// event or whose request was answered with a final status: Ketch accepts none of them.
	EventsAfterFinal int64 `json:"events_after_final"`
	// Per request the fake built: UIDsAnsweredFinal were closed by their DeleteResponse (denied,
	// say) and expect no event; UIDsRefused were answered with an error status and expect none
	// either. Of the others (answered in_progress, not answered, or not pushed by the fake):
	// UIDsOneFinal have exactly one final event at every callback, UIDsMultipleFinals more than
	// one at some callback, UIDsAwaitingFinal none yet at some callback.
	UIDsAnsweredFinal  int64 `json:"uids_answered_final"`
	UIDsRefused        int64 `json:"uids_refused"`
	UIDsOneFinal       int64 `json:"uids_one_final"`
	UIDsMultipleFinals int64 `json:"uids_multiple_finals"`
	UIDsAwaitingFinal  int64 `json:"uids_awaiting_final"`
	// BadCredentials counts 401s for a missing or wrong callback credential (not the
	// RejectCredentials fault), including another request's credential.
	BadCredentials int64 `json:"bad_credentials"`
	// Faulted counts injected faults by kind: "error", "rate_limit", "conflict", "hang",
	// "lost_answer", "outage", "reject_credentials", "reject_after_final".
	Faulted map[string]int64 `json:"faulted"`
	// EarlyRetries counts events at a callback told Retry-After that came back before that time.
	EarlyRetries int64 `json:"early_retries"`
	// MalformedEvents counts events answered 400, MalformedByField by the field at fault.
	MalformedEvents  int64            `json:"malformed_events"`
	MalformedByField map[string]int64 `json:"malformed_by_field"`
	FirstCallback    time.Time        `json:"first_callback,omitzero"`
	LastCallback     time.Time        `json:"last_callback,omitzero"`
	FirstPush        time.Time        `json:"first_push,omitzero"`
	LastPush         time.Time        `json:"last_push,omitzero"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fakekit.Snapshot(s.st)
	for _, rq := range s.reqs {
		switch {
		case rq.response != nil && finalStatus(rq.response.Status):
			st.UIDsAnsweredFinal++
			continue
		case rq.response != nil && rq.response.HTTPStatus != 0 && rq.response.HTTPStatus != http.StatusOK:
			st.UIDsRefused++
			continue
		}
		if len(rq.callbacks) == 0 {
			continue
		}
		one, many := true, false
		for _, cb := range rq.callbacks {
			one = one && cb.finals == 1
			many = many || cb.finals > 1
		}
		switch {
		case many:
			st.UIDsMultipleFinals++
		case one:
			st.UIDsOneFinal++
		default:
			st.UIDsAwaitingFinal++
		}
	}
	return st
}

// Faults are injected into the callbacks the fake serves. Rates are shares in [0, 1] of the
// events that pass the credential check. An event answered with a fault is not recorded, so its
// retry counts as new; an event whose answer was lost was recorded, so its retry is a repeat. A
// field's help is its flag's in cmd/ketchfake.
type Faults struct {
	// ErrorRate answers with a Ketch Error of status "internal", ConflictRate of "conflict".
	ErrorRate     float64  `json:"error_rate" help:"share of callbacks answered 500"`
	RateLimitRate float64  `json:"rate_limit_rate" help:"share of callbacks answered 429"`
	RetryAfter    Duration `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	ConflictRate  float64  `json:"conflict_rate" help:"share of callbacks answered 409"`
	// HangRate: they block until the client goes away, and end without an answer (not an
	// empty 200) when the server shuts down.
	HangRate       float64   `json:"hang_rate" help:"share of callbacks never answered"`
	LostAnswerRate float64   `json:"lost_answer_rate" help:"share of events taken, then dropped without an answer"`
	Latency        Duration  `json:"latency" help:"latency added to every callback"`
	LatencyJitter  Duration  `json:"latency_jitter" help:"uniform extra latency, 0 up to this"`
	OutageUntil    time.Time `json:"outage_until,omitzero" help:"answer every callback 503 for this long after start"`
	// RejectCredentials: 401 whatever the callback's headers.
	RejectCredentials bool `json:"reject_credentials" help:"answer every callback 401"`
	// RejectAfterFinal: Ketch documents that it accepts no event after a final one, not how it
	// answers it; the fake answers 204 unless this is set.
	RejectAfterFinal bool `json:"reject_after_final" help:"answer 409 to an event after a final one (it is counted either way)"`
}

// Validate reports a rate outside [0, 1], rates that sum above 1, or a negative duration, naming
// the field.
func (f Faults) Validate() error { return fakekit.Validate("", f) }

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration = fakekit.Duration
