// Package knotfake is a stand-in for Knot's POST /user/delete, as httptest is
// to net/http: an http.Handler that answers exactly as Knot's OpenAPI
// contract says, remembers whom it deleted, injects faults on demand (5xx,
// 429, hangs, proxy errors, unreadable 200s, outages, rejected credentials)
// and counts what clients did, so tests, demos and load tests can check that
// the worker behaves (no early retries, no duplicate storms, rate respected).
//
// Besides /user/delete it serves admin endpoints under /_fake/ (stats,
// arrivals, faults, reset). They have no authentication: the fake is meant
// for loopback and test networks only.
package knotfake

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
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
	// ClientID and Secret are the credentials the fake accepts.
	ClientID, Secret string
	// Exists says which users exist; nil means every user exists.
	Exists func(externalUserID string) bool
	// Faults are the faults injected from the start.
	Faults Faults
	// Now is the clock for timestamps, outages and Retry-After bookkeeping;
	// nil means time.Now. Injected latency always uses real time.
	Now func() time.Time
}

// Server is the fake. It implements http.Handler and is safe for concurrent
// use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	clientID, secret []byte
	exists           func(string) bool
	now              func() time.Time

	mu      sync.Mutex
	deleted map[string]struct{}
	// notBefore holds, per id answered 429, when the client may come back.
	notBefore map[string]time.Time
	// st holds the counts; the rest of Stats is computed from arrivals, kept
	// whole so that BusiestSecond and PerSecond are exact at read time.
	st       Stats
	arrivals []time.Time
}

// New returns a fake Knot.
func New(opts Options) *Server {
	s := &Server{clientID: []byte(opts.ClientID), secret: []byte(opts.Secret), exists: opts.Exists, now: opts.Now}
	if s.exists == nil {
		s.exists = func(string) bool { return true }
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("/user/delete", s.serveDelete)
	wire.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fakekit.WriteJSON(w, http.StatusNotFound, knotError{Message: "Not Found"})
	})
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Stats: func() any { return s.Stats() }, Reset: s.Reset, Now: s.now})
	// Each call's arrival time, in order: the record BusiestSecond and
	// PerSecond are computed from.
	s.HandleFunc("GET /_fake/arrivals", func(w http.ResponseWriter, _ *http.Request) {
		fakekit.WriteJSON(w, http.StatusOK, s.Arrivals())
	})
	return s
}

// MissingShare returns an Exists function under which a share p of all ids never existed. It
// hashes the id, so the choice is the same on every run and every replica of a test.
func MissingShare(p float64) func(string) bool {
	return func(id string) bool {
		sum := sha256.Sum256([]byte(id))
		return float64(binary.BigEndian.Uint64(sum[:])>>11)/(1<<53) >= p // top 53 bits: uniform in [0,1)
	}
}

// Deleted reports whether the fake deleted this user.
func (s *Server) Deleted(externalUserID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.deleted[externalUserID]
	return ok
}

// Reset forgets deleted users and clears the stats; faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleted = map[string]struct{}{}
	s.notBefore = map[string]time.Time{}
	s.st = Stats{ByStatus: map[string]int64{}, Faulted: map[string]int64{}}
	s.arrivals = nil
}

// Knot's answers, from user-delete.openapi.yaml.
var (
	bodySuccess      = knotError{Message: "Success"}
	bodyServerError  = knotError{Message: "Server Error"}
	bodyTooMany      = knotError{Message: "Too Many Attempts."}
	bodyInvalidKeys  = knotError{ErrorType: "INVALID_INPUT", ErrorCode: "INVALID_API_KEYS", ErrorMessage: "Invalid client_id or secret provided."}
	bodyInvalidField = knotError{ErrorType: "INVALID_REQUEST", ErrorCode: "INVALID_FIELD", ErrorMessage: "The external user id field is required."}
	bodyUserNotFound = knotError{ErrorType: "USER_ERROR", ErrorCode: "USER_NOT_FOUND", ErrorMessage: "The user was not found. Please check the external_user_id provided."}
)

type knotError struct {
	ErrorType    string `json:"error_type,omitempty"`
	ErrorCode    string `json:"error_code,omitempty"`
	ErrorMessage string `json:"error_message,omitempty"`
	Message      string `json:"message,omitempty"`
}

const badGatewayHTML = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"

// maxRequestBody bounds what the fake reads; Knot's ids are short.
const maxRequestBody = 1 << 20

func (s *Server) serveDelete(w http.ResponseWriter, r *http.Request) {
	arrived := s.now()
	// Read the body first: the id is needed for early-retry bookkeeping even
	// when the call is then answered by a fault.
	id, idErr := readExternalUserID(r)
	f := s.Faults()
	s.mu.Lock()
	s.st.Calls++
	s.arrivals = append(s.arrivals, arrived)
	if nb, ok := s.notBefore[id]; ok && idErr == nil {
		if arrived.Before(nb) {
			s.st.EarlyRetries++
		} else {
			delete(s.notBefore, id)
		}
	}
	s.mu.Unlock()

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.respond(w, http.StatusMethodNotAllowed, knotError{Message: "Method Not Allowed"})
		return
	}
	if !fakekit.Sleep(r, fakekit.Latency(f.Latency, f.LatencyJitter)) {
		return // client went away; nobody to answer
	}

	now := s.now()
	switch {
	case now.Before(f.OutageUntil):
		s.fault(w, "outage", http.StatusInternalServerError, bodyServerError)
		return
	case f.RejectCredentials:
		s.fault(w, "reject_credentials", http.StatusUnauthorized, bodyInvalidKeys)
		return
	case !s.authorized(r):
		s.count(func(st *Stats) { st.BadCredentials++ })
		s.respond(w, http.StatusUnauthorized, bodyInvalidKeys)
		return
	}

	// One draw decides among the random faults, so each rate is the share
	// of authorized calls that get that fault (as long as they sum to <= 1).
	switch kind := fakekit.Draw(f); kind {
	case "hang":
		s.count(func(st *Stats) { st.Faulted[kind]++ })
		fakekit.Hang(r)
		return
	case "bad_gateway":
		s.count(func(st *Stats) { st.Faulted[kind]++; st.ByStatus["502"]++ })
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, badGatewayHTML)
		return
	case "rate_limit":
		wait := fakekit.RetryAfter(w, f.RetryAfter)
		if idErr == nil {
			s.mu.Lock()
			s.notBefore[id] = now.Add(time.Duration(wait) * time.Second)
			s.mu.Unlock()
		}
		s.fault(w, kind, http.StatusTooManyRequests, bodyTooMany)
		return
	case "error":
		s.fault(w, kind, http.StatusInternalServerError, bodyServerError)
		return
	case "truncated", "empty_ok":
		s.count(func(st *Stats) { st.Faulted[kind]++; st.ByStatus["200"]++ })
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if kind == "truncated" {
			io.WriteString(w, `{"message":"Succ`)
		}
		return
	}

	if idErr != nil {
		s.count(func(st *Stats) { st.InvalidRequests++ })
		s.respond(w, http.StatusBadRequest, bodyInvalidField)
		return
	}

	// Exists is the caller's function: call it outside the lock.
	exists := s.exists(id)
	s.mu.Lock()
	_, already := s.deleted[id]
	switch {
	case already:
		s.st.DuplicateDeletes++
	case !exists:
		s.st.NotFound++
	default:
		s.deleted[id] = struct{}{}
		s.st.Deleted++
	}
	s.mu.Unlock()
	if already || !exists {
		s.respond(w, http.StatusBadRequest, bodyUserNotFound)
		return
	}
	s.respond(w, http.StatusOK, bodySuccess)
}

var errMissingID = errors.New("external_user_id missing")

// readExternalUserID applies the spec's request checks: a JSON object body
// with a non-empty string external_user_id. Like Knot's validator, a
// whitespace-only string counts as missing, and a body that is not declared
// as JSON is not read as JSON.
func readExternalUserID(r *http.Request) (string, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return "", errMissingID
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxRequestBody))
	if err != nil {
		return "", errMissingID
	}
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return "", errMissingID
	}
	var id string
	if raw, ok := req["external_user_id"]; !ok || json.Unmarshal(raw, &id) != nil || strings.TrimSpace(id) == "" {
		return "", errMissingID
	}
	return id, nil
}

func (s *Server) authorized(r *http.Request) bool {
	user, pass, ok := r.BasicAuth()
	// Compare both halves in constant time, and always both, so the fake
	// does not teach clients timing habits Knot would punish.
	u := subtle.ConstantTimeCompare([]byte(user), s.clientID)
	p := subtle.ConstantTimeCompare([]byte(pass), s.secret)
	return ok && u&p == 1
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

func (s *Server) fault(w http.ResponseWriter, kind string, status int, body knotError) {
	s.count(func(st *Stats) { st.Faulted[kind]++ })
	s.respond(w, status, body)
}

// respond writes a JSON answer and counts its status.
func (s *Server) respond(w http.ResponseWriter, status int, body any) {
	s.count(func(st *Stats) { st.ByStatus[strconv.Itoa(status)]++ })
	fakekit.WriteJSON(w, status, body)
}

// Faults are injected into /user/delete calls. Rates are shares in [0, 1] of the authorized
// calls, decided before the delete: a faulted call deletes nothing. A field's help is its flag's
// in cmd/knotfake.
type Faults struct {
	ErrorRate         float64   `json:"error_rate" help:"share of calls answered 500"`
	RateLimitRate     float64   `json:"rate_limit_rate" help:"share of calls answered 429"`
	RetryAfter        Duration  `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	Latency           Duration  `json:"latency" help:"latency added to every call"`
	LatencyJitter     Duration  `json:"latency_jitter" help:"uniform extra latency, 0 up to this"`
	OutageUntil       time.Time `json:"outage_until,omitzero" help:"answer every call 500 for this long after start"`
	RejectCredentials bool      `json:"reject_credentials" help:"answer every call 401 INVALID_API_KEYS"`
	// HangRate is the share never answered: they block until the client goes away.
	HangRate float64 `json:"hang_rate" help:"share of calls never answered"`
	// BadGatewayRate is answered as a proxy in front of Knot would.
	BadGatewayRate float64 `json:"bad_gateway_rate" help:"share of calls answered 502 with an HTML body"`
	TruncatedRate  float64 `json:"truncated_rate" help:"share of calls answered 200 with truncated JSON (nothing deleted)"`
	EmptyOKRate    float64 `json:"empty_ok_rate" help:"share of calls answered 200 with an empty body (nothing deleted)"`
}

// Validate reports a rate outside [0, 1], rates that sum above 1, or a negative duration, naming
// the field.
func (f Faults) Validate() error { return fakekit.Validate("", f) }

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms",
// "1m30s").
type Duration = fakekit.Duration

// Stats is what the fake saw. All counts are since New or the last Reset.
type Stats struct {
	// Calls counts every request to /user/delete.
	Calls int64 `json:"calls"`
	// ByStatus counts answers by HTTP status ("200", "400", "401", "429",
	// "500", "502"); hung calls have none.
	ByStatus map[string]int64 `json:"by_status"`
	// Deleted counts 200s that deleted a user.
	Deleted int64 `json:"deleted"`
	// NotFound counts USER_NOT_FOUND answers for users that never existed.
	NotFound int64 `json:"not_found"`
	// DuplicateDeletes counts calls for a user this fake already deleted.
	DuplicateDeletes int64 `json:"duplicate_deletes"`
	// BadCredentials counts 401s for wrong or missing credentials (not the
	// RejectCredentials fault).
	BadCredentials int64 `json:"bad_credentials"`
	// InvalidRequests counts 400 INVALID_FIELD answers.
	InvalidRequests int64 `json:"invalid_requests"`
	// Faulted counts injected faults by kind: "error", "rate_limit",
	// "outage", "reject_credentials", "hang", "bad_gateway", "truncated",
	// "empty_ok".
	Faulted map[string]int64 `json:"faulted"`
	// EarlyRetries counts calls for an id that was told Retry-After and came
	// back before that time.
	EarlyRetries int64 `json:"early_retries"`
	// BusiestSecond is the most calls that arrived within any sliding
	// one-second window.
	BusiestSecond int64 `json:"busiest_second"`
	// PerSecond counts calls per whole second since the first call.
	PerSecond []int64   `json:"per_second"`
	FirstCall time.Time `json:"first_call,omitzero"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := fakekit.Snapshot(s.st)
	s.mu.Unlock()

	arrivals := s.Arrivals()
	st.PerSecond = []int64{}
	if len(arrivals) == 0 {
		return st
	}
	st.FirstCall = arrivals[0]
	st.BusiestSecond = busiestSecond(arrivals)
	st.PerSecond = make([]int64, int(arrivals[len(arrivals)-1].Sub(st.FirstCall)/time.Second)+1)
	for _, t := range arrivals {
		st.PerSecond[int(t.Sub(st.FirstCall)/time.Second)]++
	}
	return st
}

// Arrivals returns when each call to /user/delete arrived, in order: the
// record BusiestSecond and PerSecond are computed from, for a measure of
// one's own (the fewest calls in any ten seconds, say). A call counts from
// its arrival, before its latency and whatever it is answered.
func (s *Server) Arrivals() []time.Time {
	s.mu.Lock()
	arrivals := slices.Clone(s.arrivals)
	s.mu.Unlock()
	// Concurrent calls append slightly out of order.
	slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
	return arrivals
}

// busiestSecond returns the largest number of sorted timestamps that fall in
// any half-open window [t, t+1s).
func busiestSecond(sorted []time.Time) int64 {
	best, lo := 0, 0
	for hi, t := range sorted {
		for t.Sub(sorted[lo]) >= time.Second {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return int64(best)
}
