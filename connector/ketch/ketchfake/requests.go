package ketchfake

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
	"golang.org/x/net/http/httpguts"
)

// RequestOption changes one DeleteRequest the fake builds.
type RequestOption func(*requestSpec)

type requestSpec struct {
	space        string
	omitIdentity bool
	due          time.Time
	kind         string
	noCallbacks  bool
}

// InSpace puts the identity in another space than the configured one.
func InSpace(space string) RequestOption { return func(r *requestSpec) { r.space = space } }

// WithoutIdentity leaves out the identity in the configured space (the others stay).
func WithoutIdentity() RequestOption { return func(r *requestSpec) { r.omitIdentity = true } }

// Due sets dueTimestamp; the default is 30 days after now, the zero time leaves it out.
func Due(t time.Time) RequestOption { return func(r *requestSpec) { r.due = t } }

// Kind sets the message kind ("AccessRequest", say); the default is "DeleteRequest".
func Kind(kind string) RequestOption { return func(r *requestSpec) { r.kind = kind } }

// NoCallbacks builds a request without callbacks (they are optional in Delete.md). It applies
// only the first time a uid is built.
func NoCallbacks() RequestOption { return func(r *requestSpec) { r.noCallbacks = true } }

// Subject is the data subject of a request the fake built: personal data the forwarder must
// neither store nor log. Tests look for these values in logs and tables.
type Subject struct {
	Email        string `json:"email"`
	FirstName    string `json:"firstName"`
	LastName     string `json:"lastName"`
	AddressLine1 string `json:"addressLine1"`
	AddressLine2 string `json:"addressLine2"`
	City         string `json:"city"`
	StateRegion  string `json:"stateRegionCode"`
	PostalCode   string `json:"postalCode"`
	CountryCode  string `json:"countryCode"`
	Description  string `json:"description"`
}

func subjectFor(uid string) Subject {
	short := uid
	if len(short) > 8 {
		short = short[:8]
	}
	return Subject{
		Email:        "subject-" + short + "@example.invalid",
		FirstName:    "Test",
		LastName:     "Subject-" + short,
		AddressLine1: short + " Main St",
		AddressLine2: "Apt " + short[:min(3, len(short))],
		City:         "Anytown-" + short,
		StateRegion:  "MA",
		PostalCode:   "10123",
		CountryCode:  "US",
		Description:  "Delete my data (" + short + ")",
	}
}

type identity struct {
	Space  string `json:"identitySpace"`
	Format string `json:"identityFormat"`
	Value  string `json:"identityValue"`
}

type callbackSpec struct {
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
}

type deleteRequest struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   metadata `json:"metadata"`
	Request    struct {
		Controller   string            `json:"controller"`
		Property     string            `json:"property"`
		Environment  string            `json:"environment"`
		Regulation   string            `json:"regulation"`
		Jurisdiction string            `json:"jurisdiction"`
		Identities   []identity        `json:"identities"`
		Callbacks    []callbackSpec    `json:"callbacks,omitempty"`
		Subject      Subject           `json:"subject"`
		Claims       map[string]string `json:"claims"`
		Submitted    int64             `json:"submittedTimestamp"`
		Due          int64             `json:"dueTimestamp,omitempty"`
	} `json:"request"`
}

// DeleteRequest builds the body Ketch would send for uid, naming the Knot user identityValue,
// and remembers the request so that its callbacks are served. Building a uid again (Ketch
// retrying its forward) keeps its callbacks and their credentials. The body has identities in
// several spaces (the configured one among them), a subject, claims, callbacks below the
// callback base URL, submitted and due timestamps, and the controller, property, environment,
// regulation and jurisdiction codes, as Delete.md's example does.
func (s *Server) DeleteRequest(uid, identityValue string, opts ...RequestOption) []byte {
	now := s.now()
	spec := requestSpec{space: s.space, due: now.Add(30 * 24 * time.Hour), kind: "DeleteRequest"}
	for _, o := range opts {
		o(&spec)
	}

	s.mu.Lock()
	rq := s.reqs[uid]
	if rq == nil {
		rq = &request{uid: uid, subject: subjectFor(uid)}
		if !spec.noCallbacks {
			for i := range s.perRequest {
				cb := &callback{name: callbackName(i), header: callbackHeader(i), value: newToken(), pairs: map[string]int64{}}
				if cb.header == "Authorization" {
					cb.value = "Bearer " + cb.value
				}
				cb.url = s.base + callbackPath + cb.name
				rq.callbacks = append(rq.callbacks, cb)
				s.tokens[cb.value] = callbackRef{uid: uid, index: i}
			}
		}
		s.reqs[uid] = rq
	}
	rq.identityValue = identityValue
	var cbs []callbackSpec
	for _, cb := range rq.callbacks {
		cbs = append(cbs, callbackSpec{URL: cb.url, Headers: map[string]string{cb.header: cb.value}})
	}
	subject := rq.subject
	s.mu.Unlock()

	var d deleteRequest
	d.APIVersion = "dsr/v1"
	d.Kind = spec.kind
	d.Metadata = metadata{UID: uid, Tenant: s.tenant}
	r := &d.Request
	r.Controller = s.tenant
	r.Property = "website"
	r.Environment = "production"
	r.Regulation = "gdpr"
	r.Jurisdiction = "eugdpr"
	extra := []identity{
		{Space: "email", Format: "raw", Value: subject.Email},
		{Space: "crm_id", Format: "raw", Value: "crm-" + uid},
		{Space: "email_hash", Format: "sha256", Value: "5d41402abc4b2a76b9719d911017c592" + uid[:min(8, len(uid))]},
	}
	for i, id := range extra {
		if i == 1 && !spec.omitIdentity {
			r.Identities = append(r.Identities, identity{Space: spec.space, Format: "raw", Value: identityValue})
		}
		if id.Space != spec.space {
			r.Identities = append(r.Identities, id)
		}
	}
	r.Callbacks = cbs
	r.Subject = subject
	r.Claims = map[string]string{"customer_type": "consumer"}
	r.Submitted = now.Unix()
	if !spec.due.IsZero() {
		r.Due = spec.due.Unix()
	}
	b, err := json.Marshal(d)
	if err != nil {
		panic("ketchfake: " + err.Error())
	}
	return b
}

// Response is what the forwarder answered to one pushed DeleteRequest.
type Response struct {
	// HTTPStatus is 0 when no answer came.
	HTTPStatus int `json:"http_status"`
	// Status, Reason, RequestID and ExpectedCompletion come from a DeleteResponse.
	Status             string `json:"status,omitempty"`
	Reason             string `json:"reason,omitempty"`
	RequestID          string `json:"request_id,omitempty"`
	ExpectedCompletion int64  `json:"expected_completion_timestamp,omitempty"`
	// ErrorStatus is the error.status of a Ketch Error answer.
	ErrorStatus string `json:"error_status,omitempty"`
	// Malformed names the field at fault when the answer broke the spec, and why.
	Malformed string `json:"malformed,omitempty"`
}

// key is the answer's name in Stats.Responses.
func (r Response) key() string {
	switch {
	case r.HTTPStatus == 0:
		return "no_answer"
	case r.HTTPStatus == http.StatusOK && r.Malformed == "":
		return pairKey(r.Status, r.Reason)
	}
	return "http_" + strconv.Itoa(r.HTTPStatus)
}

var errorStatuses = map[string]bool{"conflict": true, "internal": true, "unavailable": true, "invalid": true,
	"not_found": true, "timeout": true, "canceled": true, "forbidden": true, "configuration": true, "unimplemented": true}

// readAnswer checks an answer to a DeleteRequest against Delete.md (200 with a DeleteResponse
// echoing the metadata) and Error.md (any other status with an Error whose code is that status).
func readAnswer(resp *http.Response, md metadata) Response {
	r := Response{HTTPStatus: resp.StatusCode}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	malformed := func(field, why string) Response { r.Malformed = field + ": " + why; return r }
	if err != nil {
		return malformed("body", "unreadable")
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return malformed("Content-Type", "must be application/json")
	}
	if resp.StatusCode != http.StatusOK {
		var e ketchError
		switch {
		case json.Unmarshal(body, &e) != nil:
			return malformed("body", "not a Ketch Error")
		case e.APIVersion != "dsr/v1":
			return malformed("apiVersion", `must be "dsr/v1"`)
		case e.Kind != "Error":
			return malformed("kind", `must be "Error"`)
		case e.Error.Code != resp.StatusCode:
			return malformed("error.code", "must be the HTTP status")
		case !errorStatuses[e.Error.Status]:
			return malformed("error.status", "not a status of Error.md")
		case e.Error.Message == "":
			return malformed("error.message", "missing")
		case e.Metadata != nil && e.Metadata.UID != "" && *e.Metadata != md:
			return malformed("metadata", "not the request's")
		}
		r.ErrorStatus = e.Error.Status
		return r
	}
	var dr struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Metadata   metadata `json:"metadata"`
		Response   *struct {
			Status    string `json:"status"`
			Reason    string `json:"reason"`
			Expected  *int64 `json:"expectedCompletionTimestamp"`
			RequestID string `json:"requestID"`
		} `json:"response"`
	}
	switch {
	case json.Unmarshal(body, &dr) != nil:
		return malformed("body", "not a DeleteResponse")
	case dr.APIVersion != "dsr/v1":
		return malformed("apiVersion", `must be "dsr/v1"`)
	case dr.Kind != "DeleteResponse":
		return malformed("kind", `must be "DeleteResponse"`)
	case dr.Metadata != md:
		return malformed("metadata", "not the request's uid and tenant")
	case dr.Response == nil:
		return malformed("response", "missing")
	}
	r.Status, r.Reason, r.RequestID = dr.Response.Status, dr.Response.Reason, dr.Response.RequestID
	if dr.Response.Expected != nil {
		r.ExpectedCompletion = *dr.Response.Expected
	}
	switch {
	case !validStatus(r.Status):
		return malformed("response.status", "not a status of Status.md")
	case !validPair(r.Status, r.Reason):
		return malformed("response.reason", "not a reason Status.md gives this status")
	case r.ExpectedCompletion < 0:
		return malformed("response.expectedCompletionTimestamp", "negative")
	}
	return r
}

// PushSpec is the body of POST /_fake/push.
type PushSpec struct {
	// Target is the forwarder's endpoint ("http://127.0.0.1:8090/v1/ketch").
	Target string `json:"target"`
	// AuthHeader and AuthValue are the header Ketch is configured to send; AuthHeader defaults
	// to "Authorization", an empty AuthValue sends none.
	AuthHeader string `json:"auth_header"`
	AuthValue  string `json:"auth_value"`
	// Count is how many requests to send.
	Count int `json:"count"`
	// Prefix starts every identity value; default "user-".
	Prefix string `json:"prefix"`
	// IdentitySpace puts the identity in this space instead of the configured one (a forwarder
	// configured for another space answers denied/insufficient_identification).
	IdentitySpace string `json:"identity_space"`
	// Kind replaces "DeleteRequest" (an unknown kind is answered with an Error).
	Kind string `json:"kind"`
}

// push is Push with a PushSpec, for POST /_fake/push.
func (s *Server) push(ctx context.Context, p PushSpec) (PushResult, error) {
	var opts []RequestOption
	if p.IdentitySpace != "" {
		opts = append(opts, InSpace(p.IdentitySpace))
	}
	if p.Kind != "" {
		opts = append(opts, Kind(p.Kind))
	}
	return s.Push(ctx, p.Target, cmp.Or(p.AuthHeader, "Authorization"), p.AuthValue, p.Count, cmp.Or(p.Prefix, "user-"), opts...)
}

// PushResult is what one Push did.
type PushResult struct {
	Sent int `json:"sent"`
	// Answers counts the answers as Stats.Responses does.
	Answers map[string]int `json:"answers"`
	// UIDs are the pushed requests' uids, in order.
	UIDs []string `json:"uids"`
}

// pushWorkers is how many requests Push has in flight at once.
const pushWorkers = 4

// Push sends n DeleteRequests to forwarderURL, as Ketch does: POST, JSON, and the configured
// header authHeader: authValue (none when authValue is empty). The identity values are prefix
// followed by 1..n; each request gets a new UUIDv4 uid. It records each answer (see Response)
// and returns when all are answered or ctx is done; the error is ctx's, or says which argument
// is wrong.
func (s *Server) Push(ctx context.Context, forwarderURL, authHeader, authValue string, n int, prefix string, opts ...RequestOption) (PushResult, error) {
	res := PushResult{Answers: map[string]int{}}
	if err := fakekit.CheckPush(n, forwarderURL); err != nil {
		return res, err
	}
	switch {
	case authValue != "" && !httpguts.ValidHeaderFieldName(authHeader):
		return res, errors.New("auth_header must be an HTTP header name")
	}
	s.mu.Lock()
	base := s.base
	s.mu.Unlock()
	if base == "" {
		return res, errors.New("the callback base URL is not set: the requests would name no callback the forwarder can reach")
	}

	res.UIDs = make([]string, n)
	for i := range res.UIDs {
		res.UIDs[i] = newUUID()
	}
	answers := make([]Response, n)
	sent := make([]bool, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(pushWorkers, n) {
		wg.Go(func() {
			for i := range next {
				uid := res.UIDs[i]
				body := s.DeleteRequest(uid, prefix+strconv.Itoa(i+1), opts...)
				answers[i] = s.send(ctx, forwarderURL, authHeader, authValue, uid, body)
				sent[i] = true
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()

	for i := range n {
		if sent[i] {
			res.Sent++
			res.Answers[answers[i].key()]++
		}
	}
	res.UIDs = res.UIDs[:res.Sent]
	if res.Sent < n {
		return res, ctx.Err()
	}
	return res, nil
}

func (s *Server) send(ctx context.Context, target, authHeader, authValue, uid string, body []byte) Response {
	now := s.now()
	s.count(func(st *Stats) {
		st.RequestsPushed++
		st.FirstPush, st.LastPush = fakekit.Span(st.FirstPush, st.LastPush, now)
	})
	var ans Response
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		if authValue != "" {
			req.Header.Set(authHeader, authValue)
		}
		var resp *http.Response
		if resp, err = s.client.Do(req); err == nil {
			ans = readAnswer(resp, metadata{UID: uid, Tenant: s.tenant})
			resp.Body.Close()
		}
	}
	s.mu.Lock()
	if rq := s.reqs[uid]; rq != nil {
		rq.response = &ans
	}
	s.st.Responses[ans.key()]++
	if ans.Malformed != "" {
		s.st.MalformedResponses++
	}
	s.mu.Unlock()
	return ans
}

// RequestRecord is what the fake knows of one request it built.
type RequestRecord struct {
	UID           string           `json:"uid"`
	IdentityValue string           `json:"identity_value"`
	Subject       Subject          `json:"subject"`
	Response      *Response        `json:"response,omitempty"`
	Callbacks     []CallbackRecord `json:"callbacks"`
}

// CallbackRecord is one callback of a request and what it received.
type CallbackRecord struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// Header and Credential are the header the callback's credential travels in and its value
	// as the request gave it, so that a test can look for it where it must not be.
	Header     string           `json:"header"`
	Credential string           `json:"credential"`
	Events     int64            `json:"events"`
	Finals     int64            `json:"finals"`
	AfterFinal int64            `json:"after_final"`
	Pairs      map[string]int64 `json:"pairs"`
}

// Request returns what the fake knows of uid.
func (s *Server) Request(uid string) (RequestRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rq, ok := s.reqs[uid]
	if !ok {
		return RequestRecord{}, false
	}
	rec := RequestRecord{UID: uid, IdentityValue: rq.identityValue, Subject: rq.subject, Callbacks: []CallbackRecord{}}
	if rq.response != nil {
		r := *rq.response
		rec.Response = &r
	}
	for _, cb := range rq.callbacks {
		rec.Callbacks = append(rec.Callbacks, CallbackRecord{
			Name: cb.name, URL: cb.url, Header: cb.header, Credential: cb.value,
			Events: cb.events, Finals: cb.finals, AfterFinal: cb.afterFinal, Pairs: maps.Clone(cb.pairs),
		})
	}
	return rec, true
}
