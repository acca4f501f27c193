// Package transcendfake is a stand-in for the Sombra gateway's "cron" integration, as knotfake is
// for Knot: an http.Handler that holds one data silo's pending erasures, serves them on GET
// /v1/data-silo/{id}/pending-requests/{type} page by page (they stay pending until reported, so
// they come back on every pull), takes reports on PUT /v1/data-silo with each item's nonce,
// injects faults on demand and counts what clients did.
//
// What the reference leaves open, the fake decides and says so: an unknown data silo is
// answered 401 (the key is scoped to its silo), an unknown nonce and a profileId that is not
// the item's identifier 400, error bodies are {"message": …}, and a report other than WAITING
// closes the item (a second one is 409).
//
// Admin endpoints live under /_fake/ (stats, faults, reset, items). They have no
// authentication: the fake is meant for loopback and test networks only.
package transcendfake

import (
	crand "crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	// Now is the clock for deadlines, outages and timestamps; nil means time.Now. Injected
	// latency always uses real time.
	Now func() time.Time
}

// Item is one pending erasure as the fake holds it. Add fills in what is left empty.
type Item struct {
	RequestID  string `json:"requestId"`
	Identifier string `json:"identifier"`
	// Type is the identifier's name; default "userId".
	Type  string `json:"type"`
	Nonce string `json:"nonce"`
	// DaysUntilOverdue counts from when the item is added; pulls show what is left of it.
	DaysUntilOverdue float64 `json:"daysUntilOverdue"`
}

// Report is one accepted PUT /v1/data-silo.
type Report struct {
	RequestID string `json:"request_id"`
	// ProfileIDs are the body's profiles[].profileId (each checked against the identifier);
	// empty when the body left the deprecated profiles out.
	ProfileIDs    []string `json:"profile_ids,omitempty"`
	ProfileStatus string   `json:"profile_status,omitempty"`
	Status        string   `json:"status,omitempty"`
	Message       string   `json:"message,omitempty"`
	// Effective is the profile's state after the report: ProfileStatus when given, else
	// RESOLVED for no status, READY or RESOLVED, else Status.
	Effective string    `json:"effective"`
	At        time.Time `json:"at"`
}

// Item states.
const (
	statePending  = "pending"
	stateReported = "reported"
	stateRevoked  = "revoked" // closed by the conflict fault, as if the request were revoked
)

type entry struct {
	item    Item
	added   time.Time
	due     time.Time
	state   string
	reports []Report
}

// Server is the fake. It implements http.Handler and is safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	apiKey, sombraKey []byte
	silo              string
	now               func() time.Time

	mu      sync.Mutex
	items   []*entry // oldest first, as the reference lists them
	byNonce map[string]*entry
	seq     int64 // numbers generated identifiers
	st      Stats // counts; the items' states are counted at read time
}

// New returns a fake Sombra gateway with no items.
func New(opts Options) *Server {
	s := &Server{apiKey: []byte(opts.APIKey), sombraKey: []byte(opts.SombraKey), silo: opts.DataSiloID, now: opts.Now}
	if s.now == nil {
		s.now = time.Now
	}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("/v1/data-silo", s.serveReport)
	wire.HandleFunc("/v1/data-silo/{silo}/pending-requests/{type}", s.servePull)
	wire.HandleFunc("/v1/data-silo/", func(w http.ResponseWriter, r *http.Request) {
		s.arrive()
		s.respond(w, "pull", http.StatusNotFound, message("Not Found"))
	})
	wire.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fakekit.WriteJSON(w, http.StatusNotFound, message("Not Found"))
	})
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Stats: func() any { return s.Stats() }, Reset: s.Reset, Now: s.now})
	// POST /_fake/items {"count":N,"prefix":"p","days_until_overdue":30} adds N pending items
	// p-000001, … and answers {"added":N,"pending":M}; GET /_fake/items lists every item with
	// its state and reports.
	s.HandleFunc("POST /_fake/items", func(w http.ResponseWriter, r *http.Request) {
		req, err := decodeGenerate(r.Body)
		if err != nil {
			s.Refuse(w, http.StatusBadRequest, err.Error())
			return
		}
		added := s.Generate(req.Count, req.Prefix, *req.DaysUntilOverdue)
		fakekit.WriteJSON(w, http.StatusOK, map[string]int64{"added": int64(len(added)), "pending": s.Stats().ItemsPending})
	})
	s.HandleFunc("GET /_fake/items", func(w http.ResponseWriter, _ *http.Request) {
		fakekit.WriteJSON(w, http.StatusOK, s.itemViews())
	})
	return s
}

// Add queues items as pending, oldest first, and returns them as stored: an empty RequestID,
// Nonce or Identifier is generated (identifiers "user-000001", …), an empty Type is "userId".
// A nonce already held panics: it is what reports are matched by.
func (s *Server) Add(items ...Item) []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	out := make([]Item, 0, len(items))
	for _, it := range items {
		if it.RequestID == "" {
			it.RequestID = fakekit.NewUUID()
		}
		if it.Nonce == "" {
			it.Nonce = newNonce()
		}
		if it.Identifier == "" {
			s.seq++
			it.Identifier = fmt.Sprintf("user-%06d", s.seq)
		}
		if it.Type == "" {
			it.Type = "userId"
		}
		if _, dup := s.byNonce[it.Nonce]; dup {
			panic("transcendfake: Add: nonce already held by another item")
		}
		e := &entry{item: it, added: now, due: now.Add(days(it.DaysUntilOverdue)), state: statePending}
		s.items = append(s.items, e)
		s.byNonce[it.Nonce] = e
		out = append(out, it)
	}
	return out
}

// Generate adds count items with identifiers prefix-000001, … (the number is shared with Add's
// generated identifiers and goes on across calls, so identifiers never repeat), due in
// daysUntilOverdue days, and returns them.
func (s *Server) Generate(count int, prefix string, daysUntilOverdue float64) []Item {
	items := make([]Item, count)
	s.mu.Lock()
	for i := range items {
		s.seq++
		items[i] = Item{Identifier: fmt.Sprintf("%s-%06d", prefix, s.seq), DaysUntilOverdue: daysUntilOverdue}
	}
	s.mu.Unlock()
	return s.Add(items...)
}

func days(d float64) time.Duration { return time.Duration(d * float64(24*time.Hour)) }

// newNonce looks like Transcend's: a JWT, three base64url parts.
func newNonce() string {
	var p, sig [24]byte
	crand.Read(p[:])
	crand.Read(sig[:])
	enc := base64.RawURLEncoding
	return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + enc.EncodeToString(p[:]) + "." + enc.EncodeToString(sig[:])
}

// Pending returns the items not yet reported, oldest first.
func (s *Server) Pending() []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Item
	for _, e := range s.items {
		if e.state == statePending {
			out = append(out, e.item)
		}
	}
	return out
}

// Reports returns every accepted report, keyed by request id, in the order they came.
func (s *Server) Reports() map[string][]Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]Report{}
	for _, e := range s.items {
		if len(e.reports) > 0 {
			out[e.item.RequestID] = append(out[e.item.RequestID], e.reports...)
		}
	}
	return out
}

// Reset forgets every item and clears the stats; faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items, s.byNonce, s.seq = nil, map[string]*entry{}, 0
	s.st = Stats{ReportsByProfileStatus: map[string]int64{}, ByStatus: map[string]int64{}, Faulted: map[string]int64{}}
}

type errorBody struct {
	Message string `json:"message"`
}

func message(m string) errorBody { return errorBody{Message: m} }

// requestTypes are the reference's DSR types; the fake holds ERASURE items only, so the others
// list nothing.
var requestTypes = map[string]bool{
	"ACCESS": true, "ERASURE": true, "RECTIFICATION": true, "RESTRICTION": true, "BUSINESS_PURPOSE": true,
	"PLACE_ON_LEGAL_HOLD": true, "REMOVE_FROM_LEGAL_HOLD": true, "AUTOMATED_DECISION_MAKING_OPT_OUT": true,
	"USE_OF_SENSITIVE_INFORMATION_OPT_OUT": true, "CONTACT_OPT_OUT": true, "SALE_OPT_OUT": true,
	"TRACKING_OPT_OUT": true, "CUSTOM_OPT_OUT": true, "AUTOMATED_DECISION_MAKING_OPT_IN": true,
	"USE_OF_SENSITIVE_INFORMATION_OPT_IN": true, "SALE_OPT_IN": true, "TRACKING_OPT_IN": true,
	"CONTACT_OPT_IN": true, "CUSTOM_OPT_IN": true,
}

// Query limits, from the reference: limit defaults to 50, from 1 to 100; offset from 0.
const (
	defaultLimit = 50
	maxLimit     = 100
)

// wireItem is an item as the reference's example shows it. The fields the connector does not
// use are there so that a client proves it ignores them.
type wireItem struct {
	Identifier       string          `json:"identifier"`
	Type             string          `json:"type"`
	CoreIdentifier   string          `json:"coreIdentifier"`
	DataSiloID       string          `json:"dataSiloId"`
	RequestID        string          `json:"requestId"`
	Nonce            string          `json:"nonce"`
	RequestCreatedAt string          `json:"requestCreatedAt"`
	DaysUntilOverdue float64         `json:"daysUntilOverdue"`
	Attributes       []wireAttribute `json:"attributes"`
	Locale           string          `json:"locale"`
	DataSubjectType  string          `json:"dataSubjectType"`
}

type wireAttribute struct {
	Key    string   `json:"key"`
	Values []string `json:"values"`
}

func (s *Server) servePull(w http.ResponseWriter, r *http.Request) {
	f, ok := s.enter(w, r, "pull", http.MethodGet)
	if !ok {
		return
	}
	typ := r.PathValue("type")
	if r.PathValue("silo") != s.silo {
		s.count(func(st *Stats) { st.UnknownDataSilos++ })
		s.respond(w, "pull", http.StatusUnauthorized, message("Unauthorized"))
		return
	}
	switch kind := s.randomFault(w, r, "pull", f); kind {
	case "answered":
		return
	case "truncated":
		s.count(func(st *Stats) { st.Faulted["pull_truncated"]++; st.ByStatus["pull 200"]++ })
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"items":[{"identifier":"`)
		return
	}

	limit, offset, problem := pageQuery(r.URL.Query())
	switch {
	case problem == "" && !requestTypes[typ]:
		problem = "type must be one of the DSR types, such as ERASURE"
	}
	if problem != "" {
		s.count(func(st *Stats) { st.InvalidPulls++ })
		s.respond(w, "pull", http.StatusBadRequest, message(problem))
		return
	}

	now := s.now()
	page := []wireItem{}
	s.mu.Lock()
	if typ == "ERASURE" {
		skipped := 0
		for _, e := range s.items {
			if e.state != statePending {
				continue
			}
			if skipped < offset {
				skipped++
				continue
			}
			if len(page) == limit {
				break
			}
			page = append(page, s.wire(e, now))
		}
	}
	s.st.Pulls++
	s.st.ItemsServed += int64(len(page))
	s.mu.Unlock()
	s.respond(w, "pull", http.StatusOK, struct {
		Items []wireItem `json:"items"`
	}{page})
}

func (s *Server) wire(e *entry, now time.Time) wireItem {
	return wireItem{
		Identifier:       e.item.Identifier,
		Type:             e.item.Type,
		CoreIdentifier:   e.item.Identifier,
		DataSiloID:       s.silo,
		RequestID:        e.item.RequestID,
		Nonce:            e.item.Nonce,
		RequestCreatedAt: e.added.UTC().Format(time.RFC3339Nano),
		DaysUntilOverdue: e.due.Sub(now).Hours() / 24,
		Attributes:       []wireAttribute{},
		Locale:           "en",
		DataSubjectType:  "customer",
	}
}

// pageQuery reads limit and offset as the reference defines them: whole numbers, limit 1 to
// 100 (default 50), offset 0 or more (default 0).
func pageQuery(q url.Values) (limit, offset int, problem string) {
	limit, offset = defaultLimit, 0
	if v, ok := q["limit"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil || n < 1 || n > maxLimit || len(v) > 1 {
			return 0, 0, fmt.Sprintf("limit must be a whole number from 1 to %d", maxLimit)
		}
		limit = n
	}
	if v, ok := q["offset"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil || n < 0 || len(v) > 1 {
			return 0, 0, "offset must be a whole number, 0 or more"
		}
		offset = n
	}
	return limit, offset, ""
}

// maxReportBody is where the fake answers 413. The reference documents a 413 without saying
// the size; a report is a few hundred bytes.
const maxReportBody = 1 << 20

func (s *Server) serveReport(w http.ResponseWriter, r *http.Request) {
	// POST /v1/data-silo is the access-request answer; an erasure is confirmed with PUT.
	f, ok := s.enter(w, r, "report", http.MethodPut)
	if !ok {
		return
	}
	nonce := r.Header.Get("X-Transcend-Nonce")
	s.mu.Lock()
	e := s.byNonce[nonce]
	s.mu.Unlock()
	if e == nil {
		s.count(func(st *Stats) { st.BadNonces++ })
		s.respond(w, "report", http.StatusBadRequest, message("x-transcend-nonce is missing or not a nonce of this data silo"))
		return
	}

	kind := s.randomFault(w, r, "report", f)
	switch kind {
	case "answered":
		return
	case "conflict":
		// The request was revoked meanwhile: it leaves the pending list, unreported.
		s.mu.Lock()
		if e.state == statePending {
			e.state = stateRevoked
		}
		s.mu.Unlock()
		s.fault(w, "report", kind, http.StatusConflict, message("Conflict"))
		return
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReportBody))
	if err != nil {
		s.count(func(st *Stats) { st.MalformedReports++ })
		s.respond(w, "report", http.StatusRequestEntityTooLarge, message("Payload Too Large"))
		return
	}
	rep, problem := parseReport(r.Header.Get("Content-Type"), body)
	if problem != "" {
		s.count(func(st *Stats) { st.MalformedReports++ })
		s.respond(w, "report", http.StatusBadRequest, message(problem))
		return
	}

	s.mu.Lock()
	if e.state != statePending {
		s.st.DuplicateReports++
		s.mu.Unlock()
		s.respond(w, "report", http.StatusConflict, message("Conflict"))
		return
	}
	for _, id := range rep.ProfileIDs {
		if subtle.ConstantTimeCompare([]byte(id), []byte(e.item.Identifier)) != 1 {
			s.st.MismatchedProfileIDs++
			s.mu.Unlock()
			s.respond(w, "report", http.StatusBadRequest, message("profiles[].profileId is not the identifier of this nonce's request"))
			return
		}
	}
	rep.RequestID, rep.At = e.item.RequestID, s.now()
	e.reports = append(e.reports, rep)
	if rep.Effective != "WAITING" && rep.Effective != "ACTION_REQUIRED" {
		e.state = stateReported
	}
	s.st.Reports++
	s.st.ReportsByProfileStatus[rep.Effective]++
	s.mu.Unlock()
	if kind == "lost_answer" {
		// Recorded, but the answer never reaches the client: its retry is a repeat (409).
		s.count(func(st *Stats) { st.Faulted["report_lost_answer"]++ })
		fakekit.Abort()
	}
	s.respond(w, "report", http.StatusOK, struct{}{})
}

var (
	statusValues        = map[string]bool{"READY": true, "RESOLVED": true, "SKIPPED": true, "SKIPPED_DUE_TO_EXCEPTION": true, "ACTION_REQUIRED": true, "WAITING": true}
	profileStatusValues = map[string]bool{"RESOLVED": true, "SKIPPED": true, "SKIPPED_DUE_TO_EXCEPTION": true, "WAITING": true, "ERROR": true}
	reportFields        = map[string]bool{"profiles": true, "status": true, "profileStatus": true, "pollId": true, "message": true, "retryAfterDate": true}
)

// parseReport reads a PUT body by the reference, strictly: field names exactly as documented
// (a misspelt "profile_status" would otherwise pass unnoticed), enums as listed. An empty body
// is {}: Sombra 7.199.0 and later take the identifier from the nonce.
func parseReport(contentType string, body []byte) (Report, string) {
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	} else if mt := strings.TrimSpace(strings.Split(contentType, ";")[0]); !strings.EqualFold(mt, "application/json") {
		return Report{}, "content-type must be application/json"
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return Report{}, "body must be a JSON object"
	}
	for k := range top {
		if !reportFields[k] {
			return Report{}, fmt.Sprintf("unknown field %q", k)
		}
	}
	var rep Report
	str := func(key string, allowed map[string]bool) (string, string) {
		raw, ok := top[key]
		if !ok {
			return "", ""
		}
		var v string
		if json.Unmarshal(raw, &v) != nil {
			return "", key + " must be a string"
		}
		if allowed != nil && !allowed[v] {
			return "", key + " is not one of the documented values"
		}
		return v, ""
	}
	var problem string
	if rep.Status, problem = str("status", statusValues); problem != "" {
		return Report{}, problem
	}
	if rep.ProfileStatus, problem = str("profileStatus", profileStatusValues); problem != "" {
		return Report{}, problem
	}
	if rep.Message, problem = str("message", nil); problem != "" {
		return Report{}, problem
	}
	for _, k := range []string{"pollId", "retryAfterDate"} {
		if _, problem = str(k, nil); problem != "" {
			return Report{}, problem
		}
	}
	if raw, ok := top["profiles"]; ok {
		var profiles []map[string]json.RawMessage
		if json.Unmarshal(raw, &profiles) != nil {
			return Report{}, "profiles must be an array of objects"
		}
		for _, p := range profiles {
			if len(p) != 1 || p["profileId"] == nil {
				return Report{}, "each profile must be {\"profileId\": …}"
			}
			var id string
			if json.Unmarshal(p["profileId"], &id) != nil || id == "" {
				return Report{}, "profiles[].profileId must be a non-empty string"
			}
			rep.ProfileIDs = append(rep.ProfileIDs, id)
		}
	}
	switch {
	case rep.ProfileStatus != "":
		rep.Effective = rep.ProfileStatus
	case rep.Status == "" || rep.Status == "READY" || rep.Status == "RESOLVED":
		rep.Effective = "RESOLVED"
	default:
		rep.Effective = rep.Status
	}
	return rep, ""
}

// enter counts a call at a door, refuses any method but the door's, and applies the door's
// latency, outage, rejected credentials and the credential check. It returns the door's
// faults, or false when it answered.
func (s *Server) enter(w http.ResponseWriter, r *http.Request, door, method string) (FaultSet, bool) {
	s.arrive()
	f := s.Faults().Pull
	if door == "report" {
		f = s.Faults().Report
	}
	switch {
	case r.Method != method:
		w.Header().Set("Allow", method)
		s.respond(w, door, http.StatusMethodNotAllowed, message("Method Not Allowed"))
	case !fakekit.Sleep(r, time.Duration(f.Latency)):
		// The client went away; nobody to answer.
	case s.now().Before(f.OutageUntil):
		s.fault(w, door, "outage", http.StatusInternalServerError, message("Internal Server Error"))
	case f.RejectCredentials:
		s.fault(w, door, "reject_credentials", http.StatusUnauthorized, message("Unauthorized"))
	case !s.authorized(r):
		s.count(func(st *Stats) { st.BadCredentials++ })
		s.respond(w, door, http.StatusUnauthorized, message("Unauthorized"))
	default:
		return f, true
	}
	return f, false
}

// randomFault draws the door's random fault and answers those both doors have. It returns
// "answered", the kind left to the door ("truncated", "conflict", "lost_answer"), or "" for none.
func (s *Server) randomFault(w http.ResponseWriter, r *http.Request, door string, f FaultSet) string {
	switch kind := fakekit.Draw(f); kind {
	case "hang":
		s.count(func(st *Stats) { st.Faulted[door+"_hang"]++ })
		fakekit.Hang(r)
	case "rate_limit":
		fakekit.RetryAfter(w, f.RetryAfter)
		s.fault(w, door, kind, http.StatusTooManyRequests, message("Too Many Requests"))
	case "error":
		s.fault(w, door, kind, http.StatusInternalServerError, message("Internal Server Error"))
	default:
		return kind
	}
	return "answered"
}

func (s *Server) authorized(r *http.Request) bool {
	// Always compare both, in constant time.
	ok := bearer(r.Header.Get("Authorization"), s.apiKey)
	sombra := len(s.sombraKey) == 0 || bearer(r.Header.Get("X-Sombra-Authorization"), s.sombraKey)
	return ok && sombra
}

func bearer(header string, key []byte) bool {
	const prefix = "Bearer "
	if len(header) < len(prefix) || !strings.EqualFold(header[:len(prefix)], prefix) || len(key) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(header[len(prefix):]), key) == 1
}

func (s *Server) arrive() {
	now := s.now()
	s.count(func(st *Stats) { st.FirstCall, st.LastCall = fakekit.Span(st.FirstCall, st.LastCall, now) })
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

func (s *Server) fault(w http.ResponseWriter, door, kind string, status int, body any) {
	s.count(func(st *Stats) { st.Faulted[door+"_"+kind]++ })
	s.respond(w, door, status, body)
}

// respond writes a JSON answer and counts its status by door ("pull 200", "report 409").
func (s *Server) respond(w http.ResponseWriter, door string, status int, body any) {
	s.count(func(st *Stats) { st.ByStatus[door+" "+strconv.Itoa(status)]++ })
	fakekit.WriteJSON(w, status, body)
}

// Stats is what the fake saw. Counts are since New or the last Reset.
type Stats struct {
	// Pulls counts pages served: 200 answers to GET pending-requests.
	Pulls int64 `json:"pulls"`
	// ItemsServed counts the items in those pages, repeats included.
	ItemsServed int64 `json:"items_served"`
	// ItemsPending, ItemsReported and ItemsRevoked count items by state: waiting for a report,
	// closed by one, closed by the conflict fault.
	ItemsPending  int64 `json:"items_pending"`
	ItemsReported int64 `json:"items_reported"`
	ItemsRevoked  int64 `json:"items_revoked"`
	// Reports counts accepted PUTs; ReportsByProfileStatus splits them by the profile's state
	// after the report (Report.Effective): RESOLVED, SKIPPED, ERROR, ...
	Reports                int64            `json:"reports"`
	ReportsByProfileStatus map[string]int64 `json:"reports_by_profile_status"`
	// DuplicateReports counts 409s for an item already reported.
	DuplicateReports int64 `json:"duplicate_reports"`
	// BadNonces counts PUTs whose x-transcend-nonce was missing or unknown (400).
	BadNonces int64 `json:"bad_nonces"`
	// MismatchedProfileIDs counts PUTs whose profileId was not the nonce's identifier (400).
	MismatchedProfileIDs int64 `json:"mismatched_profile_ids"`
	// MalformedReports counts PUT bodies refused with 400 or 413.
	MalformedReports int64 `json:"malformed_reports"`
	// InvalidPulls counts GETs refused with 400 (limit, offset or type).
	InvalidPulls int64 `json:"invalid_pulls"`
	// BadCredentials counts 401s for a wrong or missing key (not the reject_credentials fault).
	BadCredentials int64 `json:"bad_credentials"`
	// UnknownDataSilos counts GETs for another data silo (401).
	UnknownDataSilos int64 `json:"unknown_data_silos"`
	// ByStatus counts answers by door and status: "pull 200", "report 409", ...
	ByStatus map[string]int64 `json:"by_status"`
	// Faulted counts injected faults by door and kind: "pull_error", "report_rate_limit",
	// "pull_outage", "report_conflict", "pull_truncated", "report_hang", "report_lost_answer",
	// "pull_reject_credentials".
	Faulted   map[string]int64 `json:"faulted"`
	FirstCall time.Time        `json:"first_call,omitzero"`
	LastCall  time.Time        `json:"last_call,omitzero"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fakekit.Snapshot(s.st)
	for _, e := range s.items {
		switch e.state {
		case statePending:
			st.ItemsPending++
		case stateReported:
			st.ItemsReported++
		case stateRevoked:
			st.ItemsRevoked++
		}
	}
	return st
}

// itemView is an item with its state and reports, for GET /_fake/items.
type itemView struct {
	Item
	State   string   `json:"state"`
	Reports []Report `json:"reports"`
}

func (s *Server) itemViews() []itemView {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]itemView, 0, len(s.items))
	for _, e := range s.items {
		out = append(out, itemView{Item: e.item, State: e.state, Reports: slices.Clone(e.reports)})
	}
	return out
}

// Faults are injected into the two doors separately. Rates are shares in [0, 1] of the calls
// that pass the credential check; the faults of one door must not add up to more than 1.
type Faults struct {
	Pull   FaultSet `json:"pull"`
	Report FaultSet `json:"report"`
}

// FaultSet is the faults of one door.
type FaultSet struct {
	// ErrorRate is the share answered 500.
	ErrorRate float64 `json:"error_rate"`
	// RateLimitRate is the share answered 429 with Retry-After.
	RateLimitRate float64 `json:"rate_limit_rate"`
	// RetryAfter is sent with 429s, in whole seconds rounded up (at least 1).
	RetryAfter Duration `json:"retry_after"`
	// HangRate is the share never answered; they block until the client goes away.
	HangRate float64 `json:"hang_rate"`
	// Latency is added to every call.
	Latency Duration `json:"latency"`
	// OutageUntil: every call answers 500 until then.
	OutageUntil time.Time `json:"outage_until,omitzero"`
	// RejectCredentials: every call answers 401.
	RejectCredentials bool `json:"reject_credentials"`
	// TruncatedRate (pull only) is the share answered 200 with cut-off JSON.
	TruncatedRate float64 `json:"truncated_rate"`
	// ConflictRate (report only) is the share answered 409 as if the request had been revoked
	// meanwhile: the item leaves the pending list, unreported.
	ConflictRate float64 `json:"conflict_rate"`
	// LostAnswerRate (report only) is the share recorded whose connection is then dropped
	// without an answer: the client's retry is then a second report of the item (409).
	LostAnswerRate float64 `json:"lost_answer_rate"`
}

// Validate reports a rate outside [0, 1], rates of one door that add up above 1, a fault on a
// door that has no such thing, or a negative duration, naming the field.
func (f Faults) Validate() error {
	if err := fakekit.Validate("pull", f.Pull); err != nil {
		return err
	}
	if f.Pull.ConflictRate != 0 {
		return fmt.Errorf("pull.conflict_rate: only reports can conflict")
	}
	if f.Pull.LostAnswerRate != 0 {
		return fmt.Errorf("pull.lost_answer_rate: only reports are recorded")
	}
	if err := fakekit.Validate("report", f.Report); err != nil {
		return err
	}
	if f.Report.TruncatedRate != 0 {
		return fmt.Errorf("report.truncated_rate: only pulls have a body to truncate")
	}
	return nil
}

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration = fakekit.Duration

// maxGenerated bounds one POST /_fake/items.
const maxGenerated = 1_000_000

type generateRequest struct {
	Count            int      `json:"count"`
	Prefix           string   `json:"prefix"`
	DaysUntilOverdue *float64 `json:"days_until_overdue"`
}

func decodeGenerate(body io.Reader) (generateRequest, error) {
	var req generateRequest
	if err := fakekit.DecodeStrict(body, &req); err != nil {
		return req, fmt.Errorf("items: %v", err)
	}
	if req.Prefix == "" {
		req.Prefix = "user"
	}
	if req.DaysUntilOverdue == nil {
		thirty := 30.0
		req.DaysUntilOverdue = &thirty
	}
	switch {
	case req.Count < 1 || req.Count > maxGenerated:
		return req, fmt.Errorf("items: count must be between 1 and %d, got %d", maxGenerated, req.Count)
	case len(req.Prefix) > 64 || strings.ContainsFunc(req.Prefix, isControl):
		return req, errors.New("items: prefix must be at most 64 bytes without control characters")
	case *req.DaysUntilOverdue < -36500 || *req.DaysUntilOverdue > 36500:
		return req, errors.New("items: days_until_overdue must be within 36500 days either way")
	}
	return req, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
