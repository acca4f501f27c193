// Package transcendfake is a stand-in for the Sombra gateway's "cron" integration: an
// http.Handler that serves one data silo's pending erasures on GET
// /v1/data-silo/{id}/pending-requests/{type} page by page (until reported, they come back on
// every pull), takes reports on PUT /v1/data-silo with each item's nonce, injects faults and
// counts what clients did. Admin endpoints live under /_fake/ (stats, faults, reset, items).
//
// What the reference leaves open, the fake decides: an unknown data silo is answered 401 (the
// key is scoped to its silo), an unknown nonce and a profileId that is not the item's
// identifier 400, error bodies are {"message": …}, and a report other than WAITING or
// ACTION_REQUIRED closes the item (a second one is 409).
package transcendfake

import (
	"cmp"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

// Options configures a Server.
type Options struct {
	// APIKey is the key GET and PUT must carry as "authorization: Bearer …".
	APIKey string
	// SombraKey, when set, must also come as "x-sombra-authorization: Bearer …", as a
	// self-hosted Sombra asks; empty plays the multi-tenant gateway.
	SombraKey string
	// DataSiloID is the one data silo the fake knows.
	DataSiloID string
	// Faults are the faults injected from the start.
	Faults Faults
	// Now is the clock for deadlines and outages; nil means time.Now. Latency uses real time.
	Now func() time.Time
}

// Item is one pending erasure as the fake holds it and a pull shows it.
type Item struct {
	RequestID  string `json:"requestId"`
	Identifier string `json:"identifier"`
	Type       string `json:"type"` // the identifier's name
	Nonce      string `json:"nonce"`
	// DaysUntilOverdue counts from when the item is added; pulls show what is left of it.
	DaysUntilOverdue float64 `json:"daysUntilOverdue"`
}

// Report is one accepted PUT /v1/data-silo.
type Report struct {
	ProfileStatus string `json:"profile_status,omitempty"`
	Status        string `json:"status,omitempty"`
	Message       string `json:"message,omitempty"`
}

// Item states.
const (
	statePending  = "pending"
	stateReported = "reported"
	stateRevoked  = "revoked" // closed by the conflict fault, as if the request were revoked
)

// entry is an item as the fake holds it, and as GET /_fake/items shows it.
type entry struct {
	Item
	State   string   `json:"state"`
	Reports []Report `json:"reports"`
	due     time.Time
}

// Server is the fake. It implements http.Handler and is safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	opts Options

	mu      sync.Mutex
	items   []*entry // oldest first, as the reference lists them
	byNonce map[string]*entry
	seq     int64 // numbers generated identifiers
	st      Stats // the items' states are counted at read time
}

// New returns a fake Sombra gateway with no items.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("/v1/data-silo", s.serveReport)
	wire.HandleFunc("/v1/data-silo/{silo}/pending-requests/{type}", s.servePull)
	wire.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		s.Refuse(w, http.StatusNotFound, "Not Found")
	})
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Reset: s.Reset, Now: opts.Now,
		Stats: func() any { return s.Stats() }})
	s.HandleFunc("GET /_fake/items", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		fakekit.WriteJSON(w, http.StatusOK, s.items)
	})
	return s
}

// Add queues items as pending, oldest first, and returns them as stored: an empty RequestID,
// Nonce or Identifier is generated (identifiers "user-000001", …), an empty Type is "userId".
// A nonce already held panics: it is what reports are matched by.
func (s *Server) Add(items ...Item) []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	items = slices.Clone(items) // the caller's stay as they were
	for i, it := range items {
		if it.Identifier == "" {
			s.seq++
			it.Identifier = fmt.Sprintf("user-%06d", s.seq)
		}
		if it.RequestID == "" {
			it.RequestID = fakekit.NewUUID()
		}
		if it.Nonce == "" { // Transcend's nonces are JWTs: three base64url parts
			it.Nonce = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + rand.Text() + "." + rand.Text()
		}
		it.Type = cmp.Or(it.Type, "userId")
		if s.byNonce[it.Nonce] != nil {
			panic("transcendfake: Add: nonce already held by another item")
		}
		due := s.opts.Now().Add(time.Duration(it.DaysUntilOverdue * float64(24*time.Hour)))
		e := &entry{Item: it, State: statePending, due: due}
		s.items = append(s.items, e)
		s.byNonce[it.Nonce], items[i] = e, it
	}
	return items
}

// Reports returns every accepted report, keyed by request id, in the order they came.
func (s *Server) Reports() map[string][]Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]Report{}
	for _, e := range s.items {
		if len(e.Reports) > 0 {
			out[e.RequestID] = append(out[e.RequestID], e.Reports...)
		}
	}
	return out
}

// Reset forgets every item and clears the stats; faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items, s.byNonce, s.seq = []*entry{}, map[string]*entry{}, 0
	s.st = Stats{ReportsByProfileStatus: map[string]int64{}, Faulted: map[string]int64{}}
}

// requestTypes are the reference's DSR types; the fake holds ERASURE items only, so the others
// list nothing.
var requestTypes = []string{"ACCESS", "ERASURE", "RECTIFICATION", "RESTRICTION", "BUSINESS_PURPOSE",
	"PLACE_ON_LEGAL_HOLD", "REMOVE_FROM_LEGAL_HOLD", "AUTOMATED_DECISION_MAKING_OPT_OUT",
	"USE_OF_SENSITIVE_INFORMATION_OPT_OUT", "CONTACT_OPT_OUT", "SALE_OPT_OUT", "TRACKING_OPT_OUT",
	"CUSTOM_OPT_OUT", "AUTOMATED_DECISION_MAKING_OPT_IN", "USE_OF_SENSITIVE_INFORMATION_OPT_IN",
	"SALE_OPT_IN", "TRACKING_OPT_IN", "CONTACT_OPT_IN", "CUSTOM_OPT_IN"}

// wireItem is an item as the reference's example shows it. coreIdentifier and attributes, which
// the connector does not read, are there so that a client proves it ignores them.
type wireItem struct {
	Item
	CoreIdentifier string `json:"coreIdentifier"`
	DataSiloID     string `json:"dataSiloId"`
	Attributes     []any  `json:"attributes"`
}

func (s *Server) servePull(w http.ResponseWriter, r *http.Request) {
	f, ok := s.enter(w, r, "pull", http.MethodGet)
	if !ok {
		return
	}
	if r.PathValue("silo") != s.opts.DataSiloID {
		s.Refuse(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	switch s.randomFault(w, r, "pull", f) {
	case "answered":
		return
	case "truncated":
		s.count("pull_truncated")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"items":[{"identifier":"`)
		return
	}
	typ := r.PathValue("type")
	limit, limitOK := queryInt(r.URL.Query(), "limit", 50)
	offset, offsetOK := queryInt(r.URL.Query(), "offset", 0)
	switch {
	case !limitOK || limit < 1 || limit > 100:
		s.Refuse(w, http.StatusBadRequest, "limit must be a whole number from 1 to 100")
	case !offsetOK:
		s.Refuse(w, http.StatusBadRequest, "offset must be a whole number, 0 or more")
	case !slices.Contains(requestTypes, typ):
		s.Refuse(w, http.StatusBadRequest, "type must be one of the DSR types, such as ERASURE")
	default:
		fakekit.WriteJSON(w, http.StatusOK, map[string][]wireItem{"items": s.page(typ, limit, offset)})
	}
}

// queryInt reads the one value of key in q, a whole number, 0 or more; def when there is none.
func queryInt(q url.Values, key string, def int) (int, bool) {
	v, ok := q[key]
	if !ok {
		return def, true
	}
	n, err := strconv.Atoi(v[0])
	return n, err == nil && n >= 0 && len(v) == 1
}

// page returns the pending items of type typ from offset on, at most limit.
func (s *Server) page(typ string, limit, offset int) []wireItem {
	now, page := s.opts.Now(), []wireItem{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.items {
		if typ != "ERASURE" || len(page) == limit {
			break
		}
		if e.State != statePending {
			continue
		}
		if offset > 0 {
			offset--
			continue
		}
		it := e.Item
		it.DaysUntilOverdue = e.due.Sub(now).Hours() / 24
		page = append(page, wireItem{it, it.Identifier, s.opts.DataSiloID, []any{}})
	}
	return page
}

// maxReportBody is where the fake answers 413. The reference documents a 413 without saying
// the size; a report is a few hundred bytes.
const maxReportBody = 1 << 20

// serveReport takes PUT /v1/data-silo, an erasure's report (POST answers an access request).
func (s *Server) serveReport(w http.ResponseWriter, r *http.Request) {
	f, ok := s.enter(w, r, "report", http.MethodPut)
	if !ok {
		return
	}
	s.mu.Lock()
	e := s.byNonce[r.Header.Get("X-Transcend-Nonce")]
	s.mu.Unlock()
	if e == nil {
		s.refuseCounted(w, http.StatusBadRequest, &s.st.BadNonces,
			"x-transcend-nonce is missing or not a nonce of this data silo")
		return
	}
	kind := s.randomFault(w, r, "report", f)
	if kind == "answered" {
		return
	}
	body, tooLarge := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReportBody))
	rep, profileIDs, problem := parseReport(r.Header.Get("Content-Type"), body)
	mismatch := slices.ContainsFunc(profileIDs, func(id string) bool {
		return subtle.ConstantTimeCompare([]byte(id), []byte(e.Identifier)) != 1
	})

	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case kind == "conflict":
		// The request was revoked meanwhile: it leaves the pending list, unreported.
		if e.State == statePending {
			e.State = stateRevoked
		}
		s.st.Faulted["report_conflict"]++
		s.Refuse(w, http.StatusConflict, "Conflict")
	case tooLarge != nil:
		s.st.MalformedReports++
		s.Refuse(w, http.StatusRequestEntityTooLarge, "Payload Too Large")
	case problem != "":
		s.st.MalformedReports++
		s.Refuse(w, http.StatusBadRequest, problem)
	case e.State != statePending:
		s.st.DuplicateReports++
		s.Refuse(w, http.StatusConflict, "Conflict")
	case mismatch:
		s.st.MismatchedProfileIDs++
		s.Refuse(w, http.StatusBadRequest, "profiles[].profileId is not the identifier of this nonce's request")
	default:
		// The profile's state after the report: READY and no status at all resolve it.
		state := cmp.Or(rep.ProfileStatus, rep.Status, "RESOLVED")
		if state == "READY" {
			state = "RESOLVED"
		}
		if state != "WAITING" && state != "ACTION_REQUIRED" {
			e.State = stateReported
		}
		e.Reports = append(e.Reports, rep)
		s.st.Reports++
		s.st.ReportsByProfileStatus[state]++
		if kind == "lost_answer" {
			// Recorded, but the answer never reaches the client: its retry is a repeat (409).
			s.st.Faulted["report_lost_answer"]++
			fakekit.Abort()
		}
		fakekit.WriteJSON(w, http.StatusOK, struct{}{})
	}
}

// reportFields are the fields a report body may have, each with its documented values (nil:
// any string; profiles is read apart).
var reportFields = map[string][]string{
	"status":        {"READY", "RESOLVED", "SKIPPED", "SKIPPED_DUE_TO_EXCEPTION", "ACTION_REQUIRED", "WAITING"},
	"profileStatus": {"RESOLVED", "SKIPPED", "SKIPPED_DUE_TO_EXCEPTION", "WAITING", "ERROR"},
	"message":       nil, "pollId": nil, "retryAfterDate": nil, "profiles": nil,
}

// parseReport reads a PUT body by the reference, strictly: field names exactly as documented
// (a misspelt "profile_status" would otherwise pass unnoticed), enums as listed. An empty body
// is {}: Sombra 7.199.0 and later take the identifier from the nonce. It returns the report,
// the profileIds it names, and what is wrong with it.
func parseReport(contentType string, body []byte) (rep Report, profileIDs []string, problem string) {
	mediaType, _, _ := strings.Cut(contentType, ";")
	switch {
	case strings.TrimSpace(string(body)) == "":
		body = []byte("{}")
	case !strings.EqualFold(strings.TrimSpace(mediaType), "application/json"):
		return rep, nil, "content-type must be application/json"
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return rep, nil, "body must be a JSON object"
	}
	str := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(top)) {
		allowed, known := reportFields[k]
		var v string
		switch {
		case !known:
			return rep, nil, fmt.Sprintf("unknown field %q", k)
		case k == "profiles":
			continue
		case json.Unmarshal(top[k], &v) != nil:
			return rep, nil, k + " must be a string"
		case allowed != nil && !slices.Contains(allowed, v):
			return rep, nil, k + " is not one of the documented values"
		}
		str[k] = v
	}
	if raw, ok := top["profiles"]; ok {
		var profiles []map[string]json.RawMessage
		if json.Unmarshal(raw, &profiles) != nil {
			return rep, nil, "profiles must be an array of objects"
		}
		for _, p := range profiles {
			var id string
			switch {
			case len(p) != 1 || p["profileId"] == nil:
				return rep, nil, `each profile must be {"profileId": …}`
			case json.Unmarshal(p["profileId"], &id) != nil || id == "":
				return rep, nil, "profiles[].profileId must be a non-empty string"
			}
			profileIDs = append(profileIDs, id)
		}
	}
	rep = Report{Status: str["status"], ProfileStatus: str["profileStatus"], Message: str["message"]}
	return rep, profileIDs, ""
}

// enter refuses any method but the door's, and applies the door's latency, outage, rejected
// credentials and the credential check. It returns the door's faults, or false when it
// answered.
func (s *Server) enter(w http.ResponseWriter, r *http.Request, door, method string) (FaultSet, bool) {
	all := s.Faults()
	f := all.Pull
	if door == "report" {
		f = all.Report
	}
	// Both keys are always compared, in constant time.
	authorized := bearer(r.Header.Get("Authorization"), s.opts.APIKey)
	sombra := s.opts.SombraKey == "" || bearer(r.Header.Get("X-Sombra-Authorization"), s.opts.SombraKey)
	switch {
	case r.Method != method:
		w.Header().Set("Allow", method)
		s.Refuse(w, http.StatusMethodNotAllowed, "Method Not Allowed")
	case !fakekit.Sleep(r, time.Duration(f.Latency)):
		// The client went away; nobody to answer.
	case s.opts.Now().Before(f.OutageUntil):
		s.fault(w, door, "outage", http.StatusInternalServerError)
	case f.RejectCredentials:
		s.fault(w, door, "reject_credentials", http.StatusUnauthorized)
	case !authorized || !sombra:
		s.refuseCounted(w, http.StatusUnauthorized, &s.st.BadCredentials, "Unauthorized")
	default:
		return f, true
	}
	return f, false
}

func bearer(header, key string) bool {
	scheme, token, _ := strings.Cut(header, " ")
	match := subtle.ConstantTimeCompare([]byte(token), []byte(key)) == 1
	return strings.EqualFold(scheme, "Bearer") && key != "" && match
}

// randomFault draws the door's random fault and answers those both doors have. It returns
// "answered", the kind left to the door ("truncated", "conflict", "lost_answer"), or "" for none.
func (s *Server) randomFault(w http.ResponseWriter, r *http.Request, door string, f FaultSet) string {
	switch kind := fakekit.Draw(f); kind {
	case "hang":
		s.count(door + "_hang")
		fakekit.Hang(r)
	case "rate_limit":
		fakekit.RetryAfter(w, f.RetryAfter)
		s.fault(w, door, kind, http.StatusTooManyRequests)
	case "error":
		s.fault(w, door, kind, http.StatusInternalServerError)
	default:
		return kind
	}
	return "answered"
}

func (s *Server) count(fault string) {
	s.mu.Lock()
	s.st.Faulted[fault]++
	s.mu.Unlock()
}

func (s *Server) fault(w http.ResponseWriter, door, kind string, status int) {
	s.count(door + "_" + kind)
	s.Refuse(w, status, http.StatusText(status))
}

// refuseCounted adds one to counter, a field of s.st, and answers status with text.
func (s *Server) refuseCounted(w http.ResponseWriter, status int, counter *int64, text string) {
	s.mu.Lock()
	*counter++
	s.mu.Unlock()
	s.Refuse(w, status, text)
}

// Stats is what the fake saw since New or the last Reset.
type Stats struct {
	ItemsPending  int64 `json:"items_pending"`  // waiting for a report
	ItemsReported int64 `json:"items_reported"` // closed by one
	ItemsRevoked  int64 `json:"items_revoked"`  // closed by the conflict fault
	Reports       int64 `json:"reports"`        // accepted PUTs
	// ReportsByProfileStatus counts accepted PUTs by the profile's state after the report:
	// profileStatus when given, else RESOLVED for no status, READY or RESOLVED, else status.
	ReportsByProfileStatus map[string]int64 `json:"reports_by_profile_status"`
	DuplicateReports       int64            `json:"duplicate_reports"`      // 409s for an item already reported
	BadNonces              int64            `json:"bad_nonces"`             // 400s: nonce missing or unknown
	MismatchedProfileIDs   int64            `json:"mismatched_profile_ids"` // 400s for another's profileId
	MalformedReports       int64            `json:"malformed_reports"`      // PUT bodies refused with 400 or 413
	// BadCredentials counts 401s for a wrong or missing key (not the reject_credentials fault).
	BadCredentials int64 `json:"bad_credentials"`
	// Faulted counts injected faults by door and kind: "pull_error", "report_lost_answer", ...
	Faulted map[string]int64 `json:"faulted"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fakekit.Snapshot(s.st)
	byState := map[string]*int64{
		statePending: &st.ItemsPending, stateReported: &st.ItemsReported, stateRevoked: &st.ItemsRevoked}
	for _, e := range s.items {
		*byState[e.State]++
	}
	return st
}

// Faults are injected into the two doors separately. Rates are shares in [0, 1] of the calls
// that pass the credential check; the faults of one door must not add up to more than 1.
type Faults struct {
	Pull   FaultSet `json:"pull"`
	Report FaultSet `json:"report"`
}

// FaultSet is the faults of one door.
type FaultSet struct {
	ErrorRate         float64   `json:"error_rate"`            // answered 500
	RateLimitRate     float64   `json:"rate_limit_rate"`       // answered 429
	RetryAfter        Duration  `json:"retry_after"`           // sent with 429s, in whole seconds (at least 1)
	HangRate          float64   `json:"hang_rate"`             // never answered, until the client goes away
	Latency           Duration  `json:"latency"`               // added to every call
	OutageUntil       time.Time `json:"outage_until,omitzero"` // every call answers 500 until then
	RejectCredentials bool      `json:"reject_credentials"`    // every call answers 401
	TruncatedRate     float64   `json:"truncated_rate"`        // pull only: 200 with cut-off JSON
	// ConflictRate (report only) is answered 409 as if the request had been revoked meanwhile:
	// the item leaves the pending list, unreported.
	ConflictRate float64 `json:"conflict_rate"`
	// LostAnswerRate (report only) is recorded, then its connection dropped without an answer:
	// the client's retry is then a second report of the item (409).
	LostAnswerRate float64 `json:"lost_answer_rate"`
}

// Validate reports a fault on a door that has no such thing, a rate outside [0, 1], rates of
// one door that add up above 1, or a negative duration, naming the field.
func (f Faults) Validate() error {
	switch {
	case f.Pull.ConflictRate != 0:
		return errors.New("pull.conflict_rate: only reports can conflict")
	case f.Pull.LostAnswerRate != 0:
		return errors.New("pull.lost_answer_rate: only reports are recorded")
	case f.Report.TruncatedRate != 0:
		return errors.New("report.truncated_rate: only pulls have a body to truncate")
	}
	return cmp.Or(fakekit.Validate("pull", f.Pull), fakekit.Validate("report", f.Report))
}

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration = fakekit.Duration
