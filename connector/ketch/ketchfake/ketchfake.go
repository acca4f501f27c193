// Package ketchfake is a stand-in for Ketch in its Forwarder protocol (repository
// ketch-com/ketch-forwarder, api/dsr/v1), playing both of Ketch's parts. It sends DeleteRequests
// (DeleteRequest, Push) naming callbacks below its own URL, each with a credential of its own, and
// checks the answers. It serves those callbacks (POST /callbacks/{name}): it checks each
// DeleteStatusEvent's credential and shape and counts events per request, so that a test can tell
// that every callback got exactly one final event and none after it. It injects faults on the
// callbacks and serves admin endpoints under /_fake/ (stats, faults, reset, push, requests),
// without authentication: it is for loopback and test networks only.
//
// The package knows nothing of package ketch on purpose: it reads the wire format on its own, so
// a misreading of the spec in one does not hide in the other.
package ketchfake

import (
	"cmp"
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
	// SetCallbackBaseURL sets it later (httptest gives the URL only once the server runs).
	CallbackBaseURL string
	// IdentitySpace is the space of the identity that carries the Knot id; default "account_id".
	IdentitySpace string
	// CallbacksPerRequest is how many callbacks each request names: default 2, at most 16. The
	// first takes its credential in Authorization, the others in X-Ketch-Callback-Token.
	CallbacksPerRequest int
	// Faults are the callback faults injected from the start.
	Faults Faults
}

// Server is the fake. It implements http.Handler and is safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	space      string
	perRequest int

	mu     sync.Mutex
	base   string
	reqs   map[string]*RequestRecord
	tokens map[string]callbackRef // a callback credential's request and callback
	st     Stats
}

type callbackRef struct {
	uid   string
	index int
}

const (
	// tenant is the metadata.tenant of every request the fake builds.
	tenant = "ketchfake"
	// maxCallbacks is the most callbacks package ketch accepts in a request.
	maxCallbacks = 16
	// maxEventBody bounds a callback body: Ketch limits the data of all callbacks to 1 MB.
	maxEventBody = 1 << 20
)

// New returns a fake Ketch.
func New(opts Options) *Server {
	s := &Server{
		space:      cmp.Or(opts.IdentitySpace, "account_id"),
		perRequest: min(cmp.Or(opts.CallbacksPerRequest, 2), maxCallbacks),
		base:       strings.TrimRight(opts.CallbackBaseURL, "/"),
	}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("/callbacks/{name}", s.serveCallback)
	wire.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "Not found")
	})
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Stats: func() any { return s.Stats() },
		Reset: s.Reset, Now: time.Now, ErrorKey: "error", ResetNoContent: true})
	s.HandleFunc("POST /_fake/push", fakekit.PushHandler(s.Admin, s.Push, func(r PushResult) int { return r.Sent }))
	s.HandleFunc("GET /_fake/requests/{uid}", func(w http.ResponseWriter, r *http.Request) {
		if rec, ok := s.Request(r.PathValue("uid")); ok {
			fakekit.WriteJSON(w, http.StatusOK, rec)
		} else {
			s.Refuse(w, http.StatusNotFound, "no request with this uid")
		}
	})
	return s
}

// SetCallbackBaseURL sets the URL the callbacks of requests built from now on point below.
func (s *Server) SetCallbackBaseURL(base string) {
	s.mu.Lock()
	s.base = strings.TrimRight(base, "/")
	s.mu.Unlock()
}

// Reset forgets every request, their callbacks' credentials with them, and clears the stats;
// faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = map[string]*RequestRecord{}
	s.tokens = map[string]callbackRef{}
	s.st = Stats{EventsByPair: map[string]int64{}, Faulted: map[string]int64{}}
}

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
	return n - 1, err == nil && n >= 1 && n <= maxCallbacks && callbackName(n-1) == name
}

// writeError answers as Ketch's reference callback receiver does to anything it does not take:
// an Error (api/runtime/v1/Error.md).
func writeError(w http.ResponseWriter, code int, status, message string) {
	fakekit.WriteJSON(w, code, map[string]any{"apiVersion": "dsr/v1", "kind": "Error",
		"error": errorBody{Code: code, Status: status, Message: message}})
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

// refusals are the Errors a callback is answered with before its event is read, by fault kind
// or "bad_credentials".
var refusals = map[string]errorBody{
	"bad_credentials":    {http.StatusUnauthorized, "forbidden", "operation is not authorized"},
	"reject_credentials": {http.StatusUnauthorized, "forbidden", "operation is not authorized"},
	"outage":             {http.StatusServiceUnavailable, "unavailable", "service is unavailable"},
	"rate_limit":         {http.StatusTooManyRequests, "unavailable", "too many requests"},
	"error":              {http.StatusInternalServerError, "internal", "internal error"},
	"conflict":           {http.StatusConflict, "conflict", "action cannot be performed"},
}

func (s *Server) serveCallback(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	index, known := callbackIndex(r.PathValue("name"))
	if !known {
		writeError(w, http.StatusNotFound, "not_found", "no such callback")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid", "callbacks take POST")
		return
	}
	body, bodyErr := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxEventBody))
	f := s.Faults()
	if !fakekit.Sleep(r, fakekit.Latency(f.Latency, f.LatencyJitter)) {
		fakekit.Abort()
	}
	ref, kind := s.admit(w, r.Header.Get(callbackHeader(index)), index, arrived, f)
	if kind == "hang" {
		fakekit.Hang(r)
		fakekit.Abort()
	}
	if a, ok := refusals[kind]; ok {
		writeError(w, a.Code, a.Status, a.Message)
		return
	}

	ev, fault := parseEvent(r.Header, body, bodyErr)
	s.mu.Lock()
	defer s.mu.Unlock()
	rq := s.reqs[ref.uid]
	switch {
	case fault != "":
	case rq == nil || ev.Metadata.UID != ref.uid && s.reqs[ev.Metadata.UID] != nil:
		// Reset while the event was in flight, or another request's event with this request's
		// credential: the forwarder mixed up whose headers go where.
		s.st.BadCredentials++
		writeError(w, http.StatusUnauthorized, "forbidden", "operation is not authorized")
		return
	case ev.Metadata.UID != ref.uid:
		fault = "metadata.uid: not a request Ketch sent"
	}
	if fault != "" {
		s.st.MalformedEvents++
		writeError(w, http.StatusBadRequest, "invalid", fault)
		return
	}

	cb := &rq.Callbacks[index]
	pair := pairKey(ev.Event.Status, ev.Event.Reason)
	cb.Pairs[pair]++
	s.st.Events++
	s.st.EventsByPair[pair]++
	if cb.Finals > 0 || rq.answeredFinal() {
		s.st.EventsAfterFinal++
	}
	if finalStatus(ev.Event.Status) {
		cb.Finals++
		s.st.FinalEvents++
		if cb.Finals > 1 {
			s.st.DuplicateFinals++
		}
	}
	if kind == "lost_answer" {
		// Taken, but the answer never reaches the forwarder: it will send the event again.
		s.st.Faulted[kind]++
		fakekit.Abort()
	}
	w.WriteHeader(http.StatusNoContent)
}

// admit finds the request a callback credential is for and picks the fault of the call; a
// credential that is not this callback's is "bad_credentials", unless a fault answers first.
func (s *Server) admit(
	w http.ResponseWriter, credential string, index int, arrived time.Time, f Faults,
) (callbackRef, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cb *CallbackRecord
	ref, ok := s.tokens[credential]
	if ok && ref.index == index {
		cb = &s.reqs[ref.uid].Callbacks[index]
	}
	if cb != nil && arrived.Before(cb.notBefore) {
		s.st.EarlyRetries++
	}
	kind := fakekit.Draw(f)
	switch {
	case time.Now().Before(f.OutageUntil):
		kind = "outage"
	case f.RejectCredentials:
		kind = "reject_credentials"
	case cb == nil:
		s.st.BadCredentials++
		return ref, "bad_credentials"
	case kind == "rate_limit":
		cb.notBefore = time.Now().Add(time.Duration(fakekit.RetryAfter(w, f.RetryAfter)) * time.Second)
	}
	if kind != "" && kind != "lost_answer" {
		s.st.Faulted[kind]++
	}
	return ref, kind
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

// parseEvent checks a DeleteStatusEvent against Delete.md and Status.md; it returns the event
// and what is wrong with it ("field: why"), or "".
func parseEvent(h http.Header, body []byte, readErr error) (statusEvent, string) {
	var ev statusEvent
	var top map[string]json.RawMessage
	mt, _, mtErr := mime.ParseMediaType(h.Get("Content-Type"))
	accept := h.Get("Accept")
	notObject := json.Unmarshal(body, &top) != nil || top == nil
	wrongType := json.Unmarshal(body, &ev) != nil
	expected, isNumber := ev.Event.Expected.(float64)
	_, idIsString := ev.Event.ID.(string)
	return ev, firstBroken(
		rule{mtErr != nil || mt != "application/json", "Content-Type", "must be application/json"},
		rule{accept != "" && !strings.Contains(accept, "application/json") && !strings.Contains(accept, "*/*"),
			"Accept", "must accept application/json"},
		rule{readErr != nil, "body", "unreadable or larger than 1 MiB"},
		rule{notObject, "body", "not a JSON object"},
		// Keys must match exactly: encoding/json would fold "Kind" into "kind".
		rule{top["apiVersion"] == nil, "apiVersion", "missing"},
		rule{top["kind"] == nil, "kind", "missing"},
		rule{top["metadata"] == nil, "metadata", "missing"},
		rule{top["event"] == nil, "event", "missing"},
		rule{wrongType, "body", "a field has the wrong type"},
		rule{ev.APIVersion != "dsr/v1", "apiVersion", `must be "dsr/v1"`},
		rule{ev.Kind != "DeleteStatusEvent", "kind", `must be "DeleteStatusEvent"`},
		rule{ev.Metadata.UID == "", "metadata.uid", "missing"},
		rule{ev.Metadata.Tenant != tenant, "metadata.tenant", "not the request's tenant"},
		rule{!validStatus(ev.Event.Status), "event.status", "not a status of Status.md"},
		rule{!validReason(ev.Event.Status, ev.Event.Reason),
			"event.reason", "not a reason Status.md gives this status"},
		rule{ev.Event.Expected != nil && (!isNumber || expected < 0 || expected != math.Trunc(expected)),
			"event.expectedCompletionTimestamp", "not Unix seconds"},
		rule{ev.Event.ID != nil && !idIsString, "event.requestID", "not a string"},
	)
}

// rule is one rule of the spec: when broken, field is at fault, for why.
type rule struct {
	broken     bool
	field, why string
}

// firstBroken says what is wrong ("field: why") by the first rule broken, or "" if none is.
func firstBroken(rules ...rule) string {
	for _, r := range rules {
		if r.broken {
			return r.field + ": " + r.why
		}
	}
	return ""
}

// reasonsFor is Status.md, read on its own (see package doc): every status, with the reasons it
// takes besides "unknown" and "other" (in the enum and the examples).
var reasonsFor = map[string][]string{
	"unknown": {}, "in_progress": {}, "cancelled": {},
	"pending":   {"need_user_verification", "pending"},
	"completed": {"requested", "no_match", "insufficient_identification", "executed", "executed_direct_subject_delivery"},
	"denied": {"no_match", "insufficient_identification", "insufficient_verification", "claim_not_covered",
		"outside_jurisdiction", "too_many_requests", "suspected_fraud", "invalid_credentials",
		"insufficient_permission", "internal_app_error", "sla_expiry"},
}

func validStatus(s string) bool { return reasonsFor[s] != nil }

func validReason(status, reason string) bool {
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

// Stats is what the fake saw since New or the last Reset.
type Stats struct {
	// Events counts valid DeleteStatusEvents taken, EventsByPair by "status/reason", FinalEvents
	// those with a final status (completed, cancelled, denied).
	Events       int64            `json:"events"`
	EventsByPair map[string]int64 `json:"events_by_pair"`
	FinalEvents  int64            `json:"final_events"`
	// DuplicateFinals counts final events beyond the first at the same callback of a request.
	DuplicateFinals int64 `json:"duplicate_finals"`
	// EventsAfterFinal counts events, final or not, at a callback that already had a final
	// event or whose request was answered with a final status: Ketch accepts none of them.
	EventsAfterFinal int64 `json:"events_after_final"`
	// Of the requests that expect events (neither answered with a final status nor refused):
	// UIDsOneFinal have exactly one final event at every callback, UIDsMultipleFinals more than
	// one at some callback, UIDsAwaitingFinal none yet at some.
	UIDsOneFinal       int64 `json:"uids_one_final"`
	UIDsMultipleFinals int64 `json:"uids_multiple_finals"`
	UIDsAwaitingFinal  int64 `json:"uids_awaiting_final"`
	// BadCredentials counts 401s for a missing or wrong callback credential (not the
	// RejectCredentials fault), including another request's credential.
	BadCredentials int64 `json:"bad_credentials"`
	// Faulted counts injected faults by kind: "error", "rate_limit", "conflict", "hang",
	// "lost_answer", "outage", "reject_credentials".
	Faulted map[string]int64 `json:"faulted"`
	// EarlyRetries counts events at a callback told Retry-After that came back before that time.
	EarlyRetries int64 `json:"early_retries"`
	// MalformedEvents counts events answered 400.
	MalformedEvents int64 `json:"malformed_events"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fakekit.Snapshot(s.st)
	for _, rq := range s.reqs {
		if rq.answeredFinal() || rq.refused() || len(rq.Callbacks) == 0 {
			continue
		}
		one, many := true, false
		for _, cb := range rq.Callbacks {
			one = one && cb.Finals == 1
			many = many || cb.Finals > 1
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
	ErrorRate      float64  `json:"error_rate" help:"share of callbacks answered 500"`
	RateLimitRate  float64  `json:"rate_limit_rate" help:"share of callbacks answered 429"`
	RetryAfter     Duration `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	ConflictRate   float64  `json:"conflict_rate" help:"share of callbacks answered 409"`
	HangRate       float64  `json:"hang_rate" help:"share of callbacks never answered"`
	LostAnswerRate float64  `json:"lost_answer_rate" help:"share of events taken, then dropped without an answer"`
	Latency        Duration `json:"latency" help:"latency added to every callback"`
	LatencyJitter  Duration `json:"latency_jitter" help:"uniform extra latency, 0 up to this"`
	// OutageUntil answers every callback 503 until then, RejectCredentials every callback 401.
	OutageUntil       time.Time `json:"outage_until,omitzero" help:"answer every callback 503 for this long after start"`
	RejectCredentials bool      `json:"reject_credentials" help:"answer every callback 401"`
}

// Validate reports a rate outside [0, 1], rates that sum above 1, or a negative duration, naming
// the field.
func (f Faults) Validate() error { return fakekit.Validate("", f) }

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration = fakekit.Duration
