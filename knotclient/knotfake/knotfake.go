// Package knotfake is a stand-in for Knot's POST /user/delete, as httptest is to net/http: an
// http.Handler that answers as Knot's OpenAPI contract says, remembers whom it deleted, injects
// faults and counts what clients did, so that tests, demos and load tests can check that the
// worker behaves (no early retries, no duplicate storms, rate respected). Its admin endpoints
// under /_fake/ (stats, arrivals, faults, reset) have no authentication: loopback only.
package knotfake

import (
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
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
	ClientID, Secret string                           // the credentials the fake accepts
	Exists           func(externalUserID string) bool // which users exist; nil: every one
	Faults           Faults                           // the faults injected from the start
	Now              func() time.Time                 // the clock of all but latency; nil: time.Now
}

// Server is the fake: an http.Handler, safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	opts    Options
	deleted sync.Map // the ids deleted; each is stored once, then only read

	mu        sync.Mutex
	notBefore map[string]time.Time // when each id answered 429 may come back
	st        Stats                // the counts; the rest of Stats is computed from arrivals
	arrivals  []time.Time
}

// New returns a fake Knot.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("/user/delete", s.serveDelete)
	wire.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fakekit.WriteJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
	})
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Stats: func() any { return s.Stats() }, Reset: s.Reset, Now: opts.Now})
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
	_, ok := s.deleted.Load(externalUserID)
	return ok
}

// Reset forgets deleted users and clears the stats; faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleted.Clear()
	s.notBefore = map[string]time.Time{}
	s.arrivals = nil
	s.st = Stats{ByStatus: map[string]int64{}, Faulted: map[string]int64{}}
}

// Knot's answers, from user-delete.openapi.yaml, and a proxy's 502 in front of it.
const (
	success        = `{"message":"Success"}`
	serverError    = `{"message":"Server Error"}`
	invalidKeys    = `{"error_type":"INVALID_INPUT","error_code":"INVALID_API_KEYS","error_message":"Invalid client_id or secret provided."}`
	invalidField   = `{"error_type":"INVALID_REQUEST","error_code":"INVALID_FIELD","error_message":"The external user id field is required."}`
	userNotFound   = `{"error_type":"USER_ERROR","error_code":"USER_NOT_FOUND","error_message":"The user was not found. Please check the external_user_id provided."}`
	badGatewayHTML = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

func (s *Server) serveDelete(w http.ResponseWriter, r *http.Request) {
	arrived := s.opts.Now()
	// The id is read first: a faulted call for it is still an early retry.
	id := externalUserID(r)
	f := s.Faults()
	s.mu.Lock()
	s.st.Calls++
	s.arrivals = append(s.arrivals, arrived)
	if arrived.Before(s.notBefore[id]) {
		s.st.EarlyRetries++
	}
	s.mu.Unlock()

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.answer(w, http.StatusMethodNotAllowed, "", nil, `{"message":"Method Not Allowed"}`)
		return
	}
	if !fakekit.Sleep(r, fakekit.Latency(f.Latency, f.LatencyJitter)) {
		return // the client went away: nobody to answer
	}
	// One draw picks among the random faults: each rate is a share of the authorized calls.
	now, fault := s.opts.Now(), fakekit.Draw(f)
	switch {
	case now.Before(f.OutageUntil):
		s.answer(w, http.StatusInternalServerError, "outage", nil, serverError)
	case f.RejectCredentials:
		s.answer(w, http.StatusUnauthorized, "reject_credentials", nil, invalidKeys)
	case !s.authorized(r):
		s.answer(w, http.StatusUnauthorized, "", &s.st.BadCredentials, invalidKeys)
	case fault == "hang":
		s.mu.Lock()
		s.st.Faulted[fault]++
		s.mu.Unlock()
		fakekit.Hang(r)
	case fault == "rate_limit":
		wait := time.Duration(fakekit.RetryAfter(w, f.RetryAfter)) * time.Second
		s.mu.Lock()
		if id != "" {
			s.notBefore[id] = now.Add(wait)
		}
		s.mu.Unlock()
		s.answer(w, http.StatusTooManyRequests, fault, nil, `{"message":"Too Many Attempts."}`)
	case fault == "error":
		s.answer(w, http.StatusInternalServerError, fault, nil, serverError)
	case fault == "bad_gateway":
		w.Header().Set("Content-Type", "text/html")
		s.answer(w, http.StatusBadGateway, fault, nil, badGatewayHTML)
	case fault == "truncated":
		s.answer(w, http.StatusOK, fault, nil, `{"message":"Succ`)
	case fault == "empty_ok":
		s.answer(w, http.StatusOK, fault, nil, "")
	case id == "":
		s.answer(w, http.StatusBadRequest, "", &s.st.InvalidRequests, invalidField)
	case s.opts.Exists != nil && !s.opts.Exists(id):
		s.answer(w, http.StatusBadRequest, "", &s.st.NotFound, userNotFound)
	default:
		if _, again := s.deleted.LoadOrStore(id, true); again {
			s.answer(w, http.StatusBadRequest, "", &s.st.DuplicateDeletes, userNotFound)
			return
		}
		s.answer(w, http.StatusOK, "", &s.st.Deleted, success)
	}
}

// externalUserID applies the spec's checks: a body declared as JSON, an object with a string
// external_user_id. Like Knot's validator, it takes a blank id for a missing one: both are "".
func externalUserID(r *http.Request) string {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return ""
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, 1<<20)) // Knot's ids are short
	var req map[string]json.RawMessage
	var id string
	if err != nil || json.Unmarshal(body, &req) != nil ||
		json.Unmarshal(req["external_user_id"], &id) != nil || strings.TrimSpace(id) == "" {
		return ""
	}
	return id
}

func (s *Server) authorized(r *http.Request) bool {
	user, pass, ok := r.BasicAuth()
	// Both halves, always, in constant time: no timing habits that Knot would punish.
	u := subtle.ConstantTimeCompare([]byte(user), []byte(s.opts.ClientID))
	p := subtle.ConstantTimeCompare([]byte(pass), []byte(s.opts.Secret))
	return ok && u&p == 1
}

// answer counts an answer by its status, as fault (unless "") and on count (unless nil), and
// sends it; its Content-Type is JSON unless already set.
func (s *Server) answer(w http.ResponseWriter, status int, fault string, count *int64, body string) {
	s.mu.Lock()
	s.st.ByStatus[strconv.Itoa(status)]++
	if fault != "" {
		s.st.Faulted[fault]++
	}
	if count != nil {
		*count++
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", cmp.Or(w.Header().Get("Content-Type"), "application/json"))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// Faults are injected into /user/delete calls; a faulted call deletes nothing. Rates are shares
// of the authorized calls. A field's help is its flag's in cmd/knotfake.
type Faults struct {
	ErrorRate         float64   `json:"error_rate" help:"share of calls answered 500"`
	RateLimitRate     float64   `json:"rate_limit_rate" help:"share of calls answered 429"`
	RetryAfter        Duration  `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	Latency           Duration  `json:"latency" help:"latency added to every call"`
	LatencyJitter     Duration  `json:"latency_jitter" help:"uniform extra latency, 0 up to this"`
	OutageUntil       time.Time `json:"outage_until,omitzero" help:"answer every call 500 for this long after start"`
	RejectCredentials bool      `json:"reject_credentials" help:"answer every call 401 INVALID_API_KEYS"`
	HangRate          float64   `json:"hang_rate" help:"share of calls never answered"`
	BadGatewayRate    float64   `json:"bad_gateway_rate" help:"share of calls answered 502 with an HTML body"`
	TruncatedRate     float64   `json:"truncated_rate" help:"share of calls answered 200 with truncated JSON (nothing deleted)"`
	EmptyOKRate       float64   `json:"empty_ok_rate" help:"share of calls answered 200 with an empty body (nothing deleted)"`
}

// Validate reports a rate outside [0, 1], rates above 1 in sum or a negative duration, by field.
func (f Faults) Validate() error { return fakekit.Validate("", f) }

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("1m30s").
type Duration = fakekit.Duration

// Stats is what the fake saw since New or the last Reset. Faulted counts injected faults by kind:
// "outage", "reject_credentials", and each rate's name without _rate ("bad_gateway").
type Stats struct {
	Calls            int64            `json:"calls"`             // every request to /user/delete
	ByStatus         map[string]int64 `json:"by_status"`         // answers by HTTP status; hangs have none
	Deleted          int64            `json:"deleted"`           // 200s that deleted a user
	NotFound         int64            `json:"not_found"`         // USER_NOT_FOUND: users that never existed
	DuplicateDeletes int64            `json:"duplicate_deletes"` // USER_NOT_FOUND: users deleted before
	BadCredentials   int64            `json:"bad_credentials"`   // 401s for wrong or missing credentials
	InvalidRequests  int64            `json:"invalid_requests"`  // 400 INVALID_FIELD
	Faulted          map[string]int64 `json:"faulted"`
	EarlyRetries     int64            `json:"early_retries"`       // calls for an id before its Retry-After
	BusiestSecond    int64            `json:"busiest_second"`      // most calls in any sliding one-second window
	PerSecond        []int64          `json:"per_second"`          // calls per whole second since the first
	FirstCall        time.Time        `json:"first_call,omitzero"` // when the first call arrived
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := fakekit.Snapshot(s.st)
	s.mu.Unlock()
	arrivals := s.Arrivals()
	if len(arrivals) == 0 {
		st.PerSecond = []int64{}
		return st
	}
	st.FirstCall = arrivals[0]
	st.PerSecond = make([]int64, int(arrivals[len(arrivals)-1].Sub(st.FirstCall)/time.Second)+1)
	lo := 0
	for hi, t := range arrivals {
		st.PerSecond[int(t.Sub(st.FirstCall)/time.Second)]++
		for t.Sub(arrivals[lo]) >= time.Second {
			lo++
		}
		st.BusiestSecond = max(st.BusiestSecond, int64(hi-lo+1))
	}
	return st
}

// Arrivals returns when each call to /user/delete arrived, in order, before its latency and
// answer: the record BusiestSecond and PerSecond are computed from, for measures of one's own.
func (s *Server) Arrivals() []time.Time {
	s.mu.Lock()
	arrivals := slices.Clone(s.arrivals)
	s.mu.Unlock()
	slices.SortFunc(arrivals, time.Time.Compare) // concurrent calls append out of order
	return arrivals
}
