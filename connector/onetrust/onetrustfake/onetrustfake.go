// Package onetrustfake is a stand-in for OneTrust, as knotfake is for Knot. It plays both of
// OneTrust's parts:
//
//   - the customer's Integrations workflow: on "Data Subject Request System Subtask Created" it
//     pushes each subtask to the door, POST JSON {"subtask_id", "request_queue_ref_id",
//     "external_user_id", "due_at"} with "Authorization: Bearer <inbound token>" (Push,
//     POST /_fake/push), and records the answers;
//   - OneTrust's API, as its OpenAPI definition (Privacy Automation, DSR Automation, Subtasks)
//     describes it: the OAuth 2 token endpoint POST /api/access/v1/oauth/token (client
//     credentials; answers access_token, token_type, expires_in, scope), Update Subtask Status
//     PUT /api/datasubject/v2/subtasks/{subtaskId}/status (body {"status", "comment",
//     "resolutionId"}, status one of IN_PROGRESS, FAILED, COMPLETED, REJECTED, resolutionId only
//     with COMPLETED or REJECTED; 200 with the body true, 400, 401, 429 with Retry-After and the
//     ot-* headers, 500), and Get Subtask GET /api/datasubject/v2/subtasks/{subtaskID}.
//
// Where the definition is silent, the fake chooses, and a connector must cope with the other
// choice too:
//
//   - a subtask it does not know, or an id that is no UUID, is answered 400: the definition
//     lists no 404;
//   - a subtask with a final status (COMPLETED, FAILED, REJECTED) is closed: any update of it is
//     answered 400 and changes nothing, unless Options.AcceptRepeatFinal, which answers 200 true
//     to the same final status sent again (a repeat after a lost answer; its comment is
//     recorded, nothing else changes). A different status on a closed subtask is 400 either way;
//   - a token is refused (401) once its expires_in has passed, or once Faults.RevokeAfter has
//     passed since it was issued, whichever is first;
//   - the body must be JSON with a string status; unknown members are ignored, as the
//     definition does not close the object.
//
// Per subtask it records every valid update it received (status and comment, in order, also
// those refused for a closed subtask) and counts its final statuses as OneTrust keeps them: the
// distinct final statuses received, so that a repeat of the same one after a lost answer counts
// once, and a second, different final status counts 2.
//
// Faults (5xx, 429, hangs, lost answers, outages, revoked tokens) are injected on the subtask
// calls; the token endpoint gets outages and latency only. Admin endpoints under /_fake/ have no
// authentication: the fake is meant for loopback and test networks only.
//
// The package knows nothing of package onetrust on purpose: it reads the wire on its own, so a
// misreading of the API in one does not hide in the other.
package onetrustfake

import (
	"cmp"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

// Options configures a Server.
type Options struct {
	// ClientID and ClientSecret are the OAuth 2 client the token endpoint takes; defaults
	// "onetrustfake-client" and "onetrustfake-secret".
	ClientID, ClientSecret string
	// TokenLifetime is the expires_in of the tokens issued; default one hour, as OneTrust's.
	TokenLifetime time.Duration
	// AcceptRepeatFinal answers 200 to the same final status sent again to a closed subtask,
	// instead of 400 (see the package doc).
	AcceptRepeatFinal bool
	// Faults are the faults injected from the start.
	Faults Faults
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Client sends pushed subtasks; nil means a client with a 30 s timeout.
	Client *http.Client
}

// Server is the fake. It implements http.Handler and is safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	opts Options
	now  func() time.Time

	mu       sync.Mutex
	subtasks map[string]*subtask
	tokens   map[string]time.Time // issued token → when it was issued
	st       Stats
}

type subtask struct {
	id, refID, user string
	status          string
	updates         []Update
	finals          []string // distinct final statuses received
	notBefore       time.Time
	answer          int // the door's answer to its push; 0 when not pushed or no answer
}

// Update is one valid status update a subtask received.
type Update struct {
	Status  string    `json:"status"`
	Comment string    `json:"comment,omitempty"`
	At      time.Time `json:"at"`
	// Refused: answered 400 because the subtask was closed.
	Refused bool `json:"refused,omitempty"`
}

// New returns a fake OneTrust.
func New(opts Options) *Server {
	opts.ClientID = cmp.Or(opts.ClientID, "onetrustfake-client")
	opts.ClientSecret = cmp.Or(opts.ClientSecret, "onetrustfake-secret")
	opts.TokenLifetime = cmp.Or(opts.TokenLifetime, time.Hour)
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 30 * time.Second}
	}
	s := &Server{opts: opts, now: opts.Now}
	if s.now == nil {
		s.now = time.Now
	}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("POST /api/access/v1/oauth/token", s.serveToken)
	wire.HandleFunc("PUT /api/datasubject/v2/subtasks/{id}/status", s.serveStatus)
	wire.HandleFunc("GET /api/datasubject/v2/subtasks/{id}", s.serveGet)
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Stats: func() any { return s.Stats() },
		Reset: s.Reset, Now: s.now})
	s.HandleFunc("POST /_fake/push", fakekit.PushHandler(s.Admin, s.Push, func(r PushResult) int { return r.Sent }))
	s.HandleFunc("GET /_fake/subtasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, ok := s.Subtask(r.PathValue("id"))
		if !ok {
			s.Refuse(w, http.StatusNotFound, "no subtask with this id")
			return
		}
		fakekit.WriteJSON(w, http.StatusOK, rec)
	})
	return s
}

// Reset forgets every subtask and token and clears the stats; faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subtasks = map[string]*subtask{}
	s.tokens = map[string]time.Time{}
	s.st = Stats{PushAnswers: map[string]int64{}, Updates: map[string]int64{}, BadRequests: map[string]int64{}, Faulted: map[string]int64{}}
}

// AddSubtask makes a system subtask of the request refID, for the person user, known to the
// API, as OneTrust creates one before its workflow pushes it. Adding it again changes nothing
// but the user.
func (s *Server) AddSubtask(id, refID, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.subtasks[id]; st != nil {
		st.user = user
		return
	}
	s.subtasks[id] = &subtask{id: id, refID: refID, user: user, status: "NOT_RUN"}
}

// Tokens are the access tokens issued so far, for a test to look for where they must not be.
func (s *Server) Tokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.tokens))
	for t := range s.tokens {
		out = append(out, t)
	}
	return out
}

// oauthError is the token endpoint's error body (RFC 6749, 5.2).
type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	f := s.Faults()
	if !fakekit.Sleep(r, fakekit.Latency(f.Latency, f.LatencyJitter)) {
		fakekit.Abort()
	}
	if s.now().Before(f.OutageUntil) {
		s.count(func(st *Stats) { st.Faulted["outage"]++ })
		fakekit.WriteJSON(w, http.StatusServiceUnavailable, oauthError{"temporarily_unavailable", "service is unavailable"})
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	err := r.ParseForm()
	switch {
	case mt != "application/x-www-form-urlencoded" || err != nil:
		s.count(func(st *Stats) { st.TokenRefusals++ })
		fakekit.WriteJSON(w, http.StatusBadRequest, oauthError{"invalid_request", "the body must be application/x-www-form-urlencoded"})
		return
	case r.PostForm.Get("grant_type") != "client_credentials":
		s.count(func(st *Stats) { st.TokenRefusals++ })
		fakekit.WriteJSON(w, http.StatusBadRequest, oauthError{"unsupported_grant_type", "grant_type must be client_credentials"})
		return
	case !same(r.PostForm.Get("client_id"), s.opts.ClientID) || !same(r.PostForm.Get("client_secret"), s.opts.ClientSecret):
		s.count(func(st *Stats) { st.TokenRefusals++ })
		fakekit.WriteJSON(w, http.StatusUnauthorized, oauthError{"invalid_client", "Bad client credentials"})
		return
	}
	var b [24]byte
	rand.Read(b[:])
	token := "ot-" + hex.EncodeToString(b[:])
	s.mu.Lock()
	s.tokens[token] = s.now()
	s.st.TokenFetches++
	s.mu.Unlock()
	fakekit.WriteJSON(w, http.StatusOK, map[string]any{"access_token": token, "token_type": "bearer",
		"expires_in": s.expiresIn(), "scope": "DSAR_WRITE", "jti": fakekit.NewUUID()})
}

// expiresIn is the tokens' lifetime in whole seconds, at least 1, as the token endpoint says it
// and the API holds to it.
func (s *Server) expiresIn() int64 { return max(int64(s.opts.TokenLifetime.Seconds()), 1) }

func same(got, want string) bool { return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 }

// authorized tells whether r carries a token issued, not expired and not revoked.
func (s *Server) authorized(r *http.Request, f Faults) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	defer s.mu.Unlock()
	issued, known := s.tokens[token]
	age := s.now().Sub(issued)
	live := ok && known && age < time.Duration(s.expiresIn())*time.Second &&
		(f.RevokeAfter <= 0 || age < time.Duration(f.RevokeAfter))
	if !live {
		s.st.Unauthorized++
	}
	return live
}

// apiError is how the fake answers an error on the API; OneTrust's body is not documented.
func apiError(w http.ResponseWriter, code int, message string) {
	fakekit.WriteJSON(w, code, map[string]any{"status": code, "error": http.StatusText(code), "message": message})
}

// faulted answers a subtask call with the fault drawn for it, if any, and tells whether it did.
// lost is true when the call must be taken and then its answer dropped.
func (s *Server) faulted(w http.ResponseWriter, r *http.Request, f Faults, id string) (done, lost bool) {
	if !fakekit.Sleep(r, fakekit.Latency(f.Latency, f.LatencyJitter)) {
		fakekit.Abort()
	}
	if s.now().Before(f.OutageUntil) {
		s.count(func(st *Stats) { st.Faulted["outage"]++ })
		apiError(w, http.StatusServiceUnavailable, "service is unavailable")
		return true, false
	}
	kind := fakekit.Draw(f)
	switch kind {
	case "":
		return false, false
	case "lost_answer":
		return false, true
	case "hang":
		s.count(func(st *Stats) { st.Faulted[kind]++ })
		fakekit.Hang(r)
		fakekit.Abort()
	case "rate_limit":
		wait := fakekit.RetryAfter(w, f.RetryAfter)
		w.Header().Set("ot-period", "MINUTE")
		w.Header().Set("ot-requests-allowed", "20000")
		w.Header().Set("ot-request-made", "20001")
		w.Header().Set("ot-ratelimit-event-id", fakekit.NewUUID())
		s.mu.Lock()
		if st := s.subtasks[id]; st != nil {
			st.notBefore = s.now().Add(time.Duration(wait) * time.Second)
		}
		s.st.Faulted[kind]++
		s.mu.Unlock()
		apiError(w, http.StatusTooManyRequests, "Too Many Requests")
		return true, false
	}
	s.count(func(st *Stats) { st.Faulted[kind]++ })
	apiError(w, http.StatusInternalServerError, "Internal Server Error")
	return true, false
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// known reports whether id is a subtask the fake has; an unknown one is answered 400.
func (s *Server) known(w http.ResponseWriter, id string) bool {
	s.mu.Lock()
	st := s.subtasks[id]
	if st == nil {
		s.st.BadRequests["subtaskId"]++
	}
	s.mu.Unlock()
	if st == nil {
		reason := "no subtask has this id"
		if !uuidRE.MatchString(id) {
			reason = "subtaskId must be a UUID"
		}
		apiError(w, http.StatusBadRequest, reason)
	}
	return st != nil
}

var finalStatuses = []string{"COMPLETED", "FAILED", "REJECTED"}

func isFinal(status string) bool { return slices.Contains(finalStatuses, status) }

// maxComment is the definition's maxLength of comment.
const maxComment = 1_500_000

// serveStatus is Update Subtask Status.
func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	arrived := s.now()
	f := s.Faults()
	id := r.PathValue("id")
	if !s.authorized(r, f) {
		apiError(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	s.mu.Lock()
	if st := s.subtasks[id]; st != nil && !st.notBefore.IsZero() {
		if arrived.Before(st.notBefore) {
			s.st.EarlyRetries++
		} else {
			st.notBefore = time.Time{}
		}
	}
	s.mu.Unlock()
	done, lost := s.faulted(w, r, f, id)
	if done || !s.known(w, id) {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 2*maxComment))
	var u struct {
		Status       *string `json:"status"`
		Comment      *string `json:"comment"`
		ResolutionID *string `json:"resolutionId"`
	}
	field, reason := "", ""
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case mt != "application/json":
		field, reason = "Content-Type", "must be application/json"
	case err != nil || json.Unmarshal(body, &u) != nil:
		field, reason = "body", "not a JSON object of the definition's types"
	case u.Status == nil:
		field, reason = "status", "required"
	case !slices.Contains([]string{"IN_PROGRESS", "FAILED", "COMPLETED", "REJECTED"}, *u.Status):
		field, reason = "status", "must be IN_PROGRESS, FAILED, COMPLETED or REJECTED"
	case u.Comment != nil && len(*u.Comment) > maxComment:
		field, reason = "comment", "longer than 1500000"
	case u.ResolutionID != nil && *u.Status != "COMPLETED" && *u.Status != "REJECTED":
		field, reason = "resolutionId", "can only be passed with COMPLETED or REJECTED"
	case u.ResolutionID != nil && !uuidRE.MatchString(*u.ResolutionID):
		field, reason = "resolutionId", "must be a UUID"
	}
	if field != "" {
		s.count(func(st *Stats) { st.BadRequests[field]++ })
		apiError(w, http.StatusBadRequest, field+": "+reason)
		return
	}
	status := *u.Status
	s.mu.Lock()
	st := s.subtasks[id]
	closed := isFinal(st.status)
	refused := closed && !(s.opts.AcceptRepeatFinal && status == st.status)
	st.updates = append(st.updates, Update{Status: status, Comment: deref(u.Comment), At: arrived, Refused: refused})
	s.st.Updates[status]++
	if closed {
		s.st.AfterFinal++
	}
	if isFinal(status) && !slices.Contains(st.finals, status) {
		st.finals = append(st.finals, status)
	}
	switch {
	case refused:
		s.st.RefusedClosed++
	case !closed:
		st.status = status
	}
	if lost {
		s.st.Faulted["lost_answer"]++
	}
	s.mu.Unlock()
	if lost {
		// Taken, but the answer never reaches the sender: it will send the update again.
		fakekit.Abort()
	}
	if refused {
		apiError(w, http.StatusBadRequest, "the subtask is closed")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, "true")
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// serveGet is Get Subtask: the members of SubtaskByIdDto the fake knows.
func (s *Server) serveGet(w http.ResponseWriter, r *http.Request) {
	f := s.Faults()
	id := r.PathValue("id")
	if !s.authorized(r, f) {
		apiError(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	if done, lost := s.faulted(w, r, f, id); done || lost {
		if lost {
			s.count(func(st *Stats) { st.Faulted["lost_answer"]++ })
			fakekit.Abort()
		}
		return
	}
	if !s.known(w, id) {
		return
	}
	s.mu.Lock()
	st := s.subtasks[id]
	body := map[string]any{"subTaskId": st.id, "requestQueueRefId": st.refID, "status": st.status,
		"type": "SYSTEM_TASK", "taskName": "Erase at Knot"}
	s.st.Gets++
	s.mu.Unlock()
	fakekit.WriteJSON(w, http.StatusOK, body)
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

// SubtaskRecord is what the fake knows of one subtask.
type SubtaskRecord struct {
	ID                string `json:"id"`
	RequestQueueRefID string `json:"request_queue_ref_id"`
	// ExternalUserID is the person the subtask names, so that a test can look for it where it
	// must not be (the comments).
	ExternalUserID string   `json:"external_user_id"`
	Status         string   `json:"status"`
	Updates        []Update `json:"updates"`
	// Finals is how many final statuses it counts: the distinct ones received.
	Finals int `json:"finals"`
	// PushAnswer is the door's answer to its push (0: not pushed, or no answer).
	PushAnswer int `json:"push_answer,omitempty"`
}

// Subtask returns what the fake knows of id.
func (s *Server) Subtask(id string) (SubtaskRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.subtasks[id]
	if !ok {
		return SubtaskRecord{}, false
	}
	return SubtaskRecord{ID: st.id, RequestQueueRefID: st.refID, ExternalUserID: st.user, Status: st.status,
		Updates: slices.Clone(st.updates), Finals: len(st.finals), PushAnswer: st.answer}, true
}

// Finals is, for each subtask, how many final statuses it counts (SubtaskRecord.Finals).
func (s *Server) Finals() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.subtasks))
	for id, st := range s.subtasks {
		out[id] = len(st.finals)
	}
	return out
}

// Stats is what the fake saw, since New or the last Reset.
type Stats struct {
	// Pushed counts subtasks pushed to the door; PushAnswers counts its answers by HTTP status
	// ("202", "200", "409", ...), "no_answer" when none came.
	Pushed      int64            `json:"pushed"`
	PushAnswers map[string]int64 `json:"push_answers"`
	// TokenFetches counts tokens issued; TokenRefusals token requests refused (bad client,
	// grant or body).
	TokenFetches  int64 `json:"token_fetches"`
	TokenRefusals int64 `json:"token_refusals"`
	// Unauthorized counts subtask calls answered 401: no token, an unknown, expired or revoked one.
	Unauthorized int64 `json:"unauthorized"`
	// Updates counts valid status updates by status, refused ones for a closed subtask included.
	Updates map[string]int64 `json:"updates"`
	// AfterFinal counts updates to a subtask that was already closed; RefusedClosed those of them
	// answered 400.
	AfterFinal    int64 `json:"after_final"`
	RefusedClosed int64 `json:"refused_closed"`
	// BadRequests counts 400s by the field at fault ("status", "subtaskId", "body", ...), not the
	// closed subtask's.
	BadRequests map[string]int64 `json:"bad_requests"`
	// Gets counts Get Subtask calls answered.
	Gets int64 `json:"gets"`
	// Faulted counts injected faults by kind: "error", "rate_limit", "hang", "lost_answer", "outage".
	Faulted map[string]int64 `json:"faulted"`
	// EarlyRetries counts updates of a subtask told Retry-After that came back sooner.
	EarlyRetries int64 `json:"early_retries"`
	// Per subtask, counted at read time: SubtasksOneFinal have exactly one final status,
	// SubtasksMultipleFinals more than one, SubtasksAwaitingFinal none yet.
	// SubtasksFinalBeforeInProgress got a final status before any IN_PROGRESS, or none at all.
	// SubtasksCommentNamingUser got a comment that holds their external_user_id.
	SubtasksOneFinal              int64 `json:"subtasks_one_final"`
	SubtasksMultipleFinals        int64 `json:"subtasks_multiple_finals"`
	SubtasksAwaitingFinal         int64 `json:"subtasks_awaiting_final"`
	SubtasksFinalBeforeInProgress int64 `json:"subtasks_final_before_in_progress"`
	SubtasksCommentNamingUser     int64 `json:"subtasks_comment_naming_user"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := fakekit.Snapshot(s.st)
	for _, st := range s.subtasks {
		switch len(st.finals) {
		case 0:
			out.SubtasksAwaitingFinal++
		case 1:
			out.SubtasksOneFinal++
		default:
			out.SubtasksMultipleFinals++
		}
		if len(st.finals) > 0 && (len(st.updates) == 0 || st.updates[0].Status != "IN_PROGRESS") {
			out.SubtasksFinalBeforeInProgress++
		}
		if st.user != "" && slices.ContainsFunc(st.updates, func(u Update) bool { return strings.Contains(u.Comment, st.user) }) {
			out.SubtasksCommentNamingUser++
		}
	}
	return out
}

// Faults are injected into the subtask calls (Update Subtask Status, Get Subtask). Rates are
// shares in [0, 1] of the calls that pass the token check. An update answered with a fault is
// not recorded; one whose answer was lost was. A field's help is its flag's in cmd/onetrustfake.
type Faults struct {
	ErrorRate     float64  `json:"error_rate" help:"share of subtask calls answered 500"`
	RateLimitRate float64  `json:"rate_limit_rate" help:"share of subtask calls answered 429 with Retry-After and ot-* headers"`
	RetryAfter    Duration `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	// HangRate: they block until the client goes away.
	HangRate       float64   `json:"hang_rate" help:"share of subtask calls never answered"`
	LostAnswerRate float64   `json:"lost_answer_rate" help:"share of updates taken, then dropped without an answer"`
	Latency        Duration  `json:"latency" help:"latency added to every call"`
	LatencyJitter  Duration  `json:"latency_jitter" help:"uniform extra latency, 0 up to this"`
	OutageUntil    time.Time `json:"outage_until,omitzero" help:"answer every call 503 for this long after start"`
	// RevokeAfter ends every token this long after it was issued, whatever its expires_in said,
	// so that a token dies while the sender still trusts it.
	RevokeAfter Duration `json:"revoke_after" help:"refuse (401) a token this long after it was issued, before its expires_in (0: never)"`
}

// Validate reports a rate outside [0, 1], rates that sum above 1, or a negative duration, naming
// the field.
func (f Faults) Validate() error { return fakekit.Validate("", f) }

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration = fakekit.Duration
