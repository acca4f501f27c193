package ketchfake

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
	"golang.org/x/net/http/httpguts"
)

// RequestOption changes one DeleteRequest the fake builds.
type RequestOption func(*requestSpec)

type requestSpec struct {
	space, kind               string
	omitIdentity, noCallbacks bool
}

// InSpace puts the identity in another space than the configured one.
func InSpace(space string) RequestOption { return func(r *requestSpec) { r.space = space } }

// WithoutIdentity leaves out the identity in the configured space (the others stay).
func WithoutIdentity() RequestOption { return func(r *requestSpec) { r.omitIdentity = true } }

// Kind sets the message kind ("AccessRequest", say); the default is "DeleteRequest".
func Kind(kind string) RequestOption { return func(r *requestSpec) { r.kind = kind } }

// NoCallbacks builds a request without callbacks (they are optional in Delete.md). It applies
// only the first time a uid is built.
func NoCallbacks() RequestOption { return func(r *requestSpec) { r.noCallbacks = true } }

// Subject is the data subject of a request the fake built: personal data the forwarder must
// neither store nor log.
type Subject struct {
	Email     string `json:"email"`
	FirstName string `json:"firstName"`
	LastName  string `json:"lastName"`
}

type identity struct {
	Space  string `json:"identitySpace"`
	Format string `json:"identityFormat"`
	Value  string `json:"identityValue"`
}

// DeleteRequest builds the body Ketch would send for uid, naming the Knot user identityValue,
// and remembers the request so that its callbacks are served. Building a uid again (Ketch
// retrying its forward) keeps its callbacks and their credentials. As in Delete.md's example,
// the body has identities in several spaces, a subject, claims, callbacks, submitted and due
// (30 days on) timestamps, and the codes of controller, property, regulation and the like.
func (s *Server) DeleteRequest(uid, identityValue string, opts ...RequestOption) []byte {
	spec := requestSpec{space: s.space, kind: "DeleteRequest"}
	for _, o := range opts {
		o(&spec)
	}
	s.mu.Lock()
	rq := s.reqs[uid]
	if rq == nil {
		short := uid[:min(8, len(uid))]
		rq = &RequestRecord{UID: uid, Subject: Subject{Email: "subject-" + short + "@example.invalid",
			FirstName: "Test", LastName: "Subject-" + short}}
		n := s.perRequest
		if spec.noCallbacks {
			n = 0
		}
		for i := range n {
			cred := "cb-" + fakekit.NewUUID()
			if i == 0 {
				cred = "Bearer " + cred
			}
			cb := CallbackRecord{Name: callbackName(i), Credential: cred, Pairs: map[string]int64{}}
			rq.Callbacks = append(rq.Callbacks, cb)
			s.tokens[cred] = callbackRef{uid: uid, index: i}
		}
		s.reqs[uid] = rq
	}
	cbs := []map[string]any{}
	for i, cb := range rq.Callbacks {
		cbs = append(cbs, map[string]any{"url": s.base + "/callbacks/" + cb.Name,
			"headers": map[string]string{callbackHeader(i): cb.Credential}})
	}
	subject := rq.Subject
	s.mu.Unlock()

	// The identity in the configured space among others; none of them in that space too.
	hash := fmt.Sprintf("%x", sha256.Sum256([]byte(subject.Email)))
	ids := []identity{{"email", "raw", subject.Email}, {"email_hash", "sha256", hash}}
	ids = slices.DeleteFunc(ids, func(id identity) bool { return id.Space == spec.space })
	if !spec.omitIdentity {
		ids = slices.Insert(ids, min(1, len(ids)), identity{spec.space, "raw", identityValue})
	}
	now := time.Now()
	b, err := json.Marshal(map[string]any{
		"apiVersion": "dsr/v1", "kind": spec.kind, "metadata": metadata{UID: uid, Tenant: tenant},
		"request": map[string]any{
			"controller": tenant, "property": "website", "environment": "production",
			"regulation": "gdpr", "jurisdiction": "eugdpr",
			"identities": ids, "callbacks": cbs, "subject": subject,
			"claims":             map[string]string{"customer_type": "consumer"},
			"submittedTimestamp": now.Unix(),
			"dueTimestamp":       now.Add(30 * 24 * time.Hour).Unix(),
		},
	})
	if err != nil {
		panic("ketchfake: " + err.Error())
	}
	return b
}

// Response is what the forwarder answered to one pushed DeleteRequest.
type Response struct {
	// HTTPStatus is 0 when no answer came.
	HTTPStatus int `json:"http_status"`
	// Status and Reason are a DeleteResponse's.
	Status string `json:"status,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Malformed names the field at fault when the answer broke the spec, and why.
	Malformed string `json:"malformed,omitempty"`
}

// key names the answer in PushResult.Answers.
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
	var a struct {
		APIVersion string    `json:"apiVersion"`
		Kind       string    `json:"kind"`
		Metadata   *metadata `json:"metadata"`
		Error      errorBody `json:"error"`
		Response   *struct {
			Status    string `json:"status"`
			Reason    string `json:"reason"`
			Expected  int64  `json:"expectedCompletionTimestamp"`
			RequestID string `json:"requestID"`
		} `json:"response"`
	}
	want := "DeleteResponse"
	if resp.StatusCode != http.StatusOK {
		want = "Error"
	}
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	mt, _, mtErr := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	decodeErr := json.Unmarshal(body, &a)
	rules := []rule{
		{readErr != nil, "body", "unreadable"},
		{mtErr != nil || mt != "application/json", "Content-Type", "must be application/json"},
		{decodeErr != nil, "body", "not a " + want},
		{a.APIVersion != "dsr/v1", "apiVersion", `must be "dsr/v1"`},
		{a.Kind != want, "kind", "must be " + strconv.Quote(want)},
	}
	r := Response{HTTPStatus: resp.StatusCode}
	if want == "Error" {
		r.Malformed = firstBroken(append(rules,
			rule{a.Error.Code != resp.StatusCode, "error.code", "must be the HTTP status"},
			rule{!errorStatuses[a.Error.Status], "error.status", "not a status of Error.md"},
			rule{a.Error.Message == "", "error.message", "missing"},
			rule{a.Metadata != nil && a.Metadata.UID != "" && *a.Metadata != md, "metadata", "not the request's"},
		)...)
		return r
	}
	if a.Response != nil {
		r.Status, r.Reason = a.Response.Status, a.Response.Reason
	}
	r.Malformed = firstBroken(append(rules,
		rule{a.Metadata == nil || *a.Metadata != md, "metadata", "not the request's uid and tenant"},
		rule{a.Response == nil, "response", "missing"},
		rule{!validStatus(r.Status), "response.status", "not a status of Status.md"},
		rule{!validReason(r.Status, r.Reason), "response.reason", "not a reason Status.md gives this status"},
		rule{a.Response != nil && a.Response.Expected < 0, "response.expectedCompletionTimestamp", "negative"},
	)...)
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
}

// PushResult is what one Push did.
type PushResult struct {
	Sent int `json:"sent"`
	// Answers counts the answers by DeleteResponse "status/reason" (the status alone when it gave
	// no reason); any other answer as "http_<code>", or "no_answer".
	Answers map[string]int `json:"answers"`
	// UIDs are the pushed requests' uids, in order.
	UIDs []string `json:"uids"`
}

// pushWorkers is how many requests Push has in flight at once.
const pushWorkers = 4

var client = &http.Client{Timeout: 30 * time.Second}

// Push sends p.Count DeleteRequests to p.Target as Ketch does: POST, JSON, and the configured
// header. Each gets a new UUIDv4 uid and the identity value p.Prefix followed by 1..Count. It
// records each answer (see Response) and returns when all are answered or ctx is done; the
// error is ctx's, or names the field of p at fault.
func (s *Server) Push(ctx context.Context, p PushSpec) (PushResult, error) {
	res := PushResult{Answers: map[string]int{}}
	p.AuthHeader, p.Prefix = cmp.Or(p.AuthHeader, "Authorization"), cmp.Or(p.Prefix, "user-")
	if err := fakekit.CheckPush(p.Count, p.Target); err != nil {
		return res, err
	}
	if p.AuthValue != "" && !httpguts.ValidHeaderFieldName(p.AuthHeader) {
		return res, errors.New("auth_header must be an HTTP header name")
	}
	s.mu.Lock()
	base := s.base
	s.mu.Unlock()
	if base == "" {
		return res, errors.New("the callback base URL is not set: the requests would name no callback the forwarder can reach")
	}

	answers := make([]Response, p.Count)
	slots := make(chan struct{}, pushWorkers)
	var wg sync.WaitGroup
	for i := 0; i < p.Count && ctx.Err() == nil; i++ {
		slots <- struct{}{}
		uid := fakekit.NewUUID()
		res.UIDs = append(res.UIDs, uid)
		body := s.DeleteRequest(uid, p.Prefix+strconv.Itoa(i+1), InSpace(cmp.Or(p.IdentitySpace, s.space)))
		wg.Go(func() {
			answers[i] = s.send(ctx, p, uid, body)
			<-slots
		})
	}
	wg.Wait()
	res.Sent = len(res.UIDs)
	for _, a := range answers[:res.Sent] {
		res.Answers[a.key()]++
	}
	if res.Sent < p.Count {
		return res, ctx.Err()
	}
	return res, nil
}

func (s *Server) send(ctx context.Context, p PushSpec, uid string, body []byte) Response {
	var ans Response
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Target, bytes.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		if p.AuthValue != "" {
			req.Header.Set(p.AuthHeader, p.AuthValue)
		}
		var resp *http.Response
		if resp, err = client.Do(req); err == nil {
			ans = readAnswer(resp, metadata{UID: uid, Tenant: tenant})
			resp.Body.Close()
		}
	}
	s.mu.Lock()
	if rq := s.reqs[uid]; rq != nil {
		rq.Response = &ans
	}
	s.mu.Unlock()
	return ans
}

// RequestRecord is what the fake knows of one request it built.
type RequestRecord struct {
	UID       string           `json:"uid"`
	Subject   Subject          `json:"subject"`
	Response  *Response        `json:"response,omitempty"`
	Callbacks []CallbackRecord `json:"callbacks"`
}

// answeredFinal is whether the forwarder's DeleteResponse closed the request; refused whether it
// answered with an error. Either way no event is due.
func (rq *RequestRecord) answeredFinal() bool {
	return rq.Response != nil && finalStatus(rq.Response.Status)
}

func (rq *RequestRecord) refused() bool {
	return rq.Response != nil && rq.Response.HTTPStatus != 0 && rq.Response.HTTPStatus != http.StatusOK
}

// CallbackRecord is one callback of a request and what it received.
type CallbackRecord struct {
	Name string `json:"name"`
	// Credential is the callback's header value as the request gave it, so that a test can look
	// for it where it must not be.
	Credential string `json:"credential"`
	// Finals counts its final events, Pairs its events by "status/reason".
	Finals int64            `json:"finals"`
	Pairs  map[string]int64 `json:"pairs"`
	// notBefore is when the Retry-After it was last told ends.
	notBefore time.Time
}

// Request returns what the fake knows of uid.
func (s *Server) Request(uid string) (RequestRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rq, ok := s.reqs[uid]
	if !ok {
		return RequestRecord{}, false
	}
	rec := *rq // Response is replaced, never changed
	rec.Callbacks = slices.Clone(rq.Callbacks)
	for i := range rec.Callbacks {
		rec.Callbacks[i].Pairs = maps.Clone(rec.Callbacks[i].Pairs)
	}
	return rec, true
}
