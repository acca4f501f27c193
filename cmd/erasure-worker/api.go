package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/worker"
)

// maxAPIBody bounds a body on every door: an erasure request is a few hundred bytes.
const maxAPIBody = 64 << 10

// doors serves the HTTP doors on API_LISTEN_ADDR: the generic API for in-house systems and
// scripts, and Ketch's push. Every handler authenticates before it reads the body, and answers a
// body it refuses with what is wrong, naming the field.
type doors struct {
	q        *queue.Queue
	cfg      doorsConfig
	keys     worker.IdentifierKeys // to recognise a repeat of a request whose id was pseudonymised
	log      *slog.Logger
	requests *prometheus.CounterVec // erasure_api_requests_total{door,code}
}

func newDoors(q *queue.Queue, cfg doorsConfig, keys worker.IdentifierKeys, log *slog.Logger, reg prometheus.Registerer) *doors {
	d := &doors{q: q, cfg: cfg, keys: keys, log: log, requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erasure_api_requests_total",
		Help: "Requests to the HTTP doors on API_LISTEN_ADDR, by door (api, ketch) and HTTP status of the answer.",
	}, []string{"door", "code"})}
	if reg != nil {
		reg.MustRegister(d.requests)
	}
	return d
}

func (d *doors) handler() http.Handler {
	mux := http.NewServeMux()
	if d.cfg.api() {
		mux.Handle("POST /v1/erasure-requests", d.counted("api", d.authenticated(d.submit)))
		mux.Handle("GET /v1/erasure-requests/{ref}", d.counted("api", d.authenticated(d.lookup)))
	}
	if d.cfg.ketch() {
		mux.Handle("POST /v1/ketch", d.counted("ketch", http.HandlerFunc(d.ketch)))
	}
	return mux
}

// statusRecorder keeps the status a handler answered with, for the counter.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (d *doors) counted(door string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		d.requests.WithLabelValues(door, strconv.Itoa(rec.status)).Inc()
	})
}

// equalSecret compares in constant time, whatever the lengths.
func equalSecret(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1 && len(want) > 0
}

// apiError is the generic API's error body.
type apiError struct {
	Error struct {
		Field   string `json:"field,omitempty"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeAPIError(w http.ResponseWriter, status int, field, message string) {
	var e apiError
	e.Error.Field, e.Error.Message = field, message
	writeJSONBody(w, status, e)
}

func writeJSONBody(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"message":"cannot encode the answer"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func (d *doors) authenticated(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !equalSecret(token, d.cfg.apiToken) {
			// Nothing past the headers is read.
			w.Header().Set("WWW-Authenticate", `Bearer realm="erasure-worker"`)
			writeAPIError(w, http.StatusUnauthorized, "", "missing or wrong bearer token (Authorization: Bearer <API_TOKEN>)")
			return
		}
		h(w, r)
	})
}

// readBody reads at most maxAPIBody bytes; false when it answered the request already.
func readBody(w http.ResponseWriter, r *http.Request, tooLarge func()) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAPIBody))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		tooLarge()
		return nil, false
	}
	if err != nil {
		return nil, false // the client went away
	}
	return body, true
}

func isJSON(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// requestState is the generic API's view of a request, and `evidence --json`'s record.
type requestState struct {
	RequestRef    string        `json:"request_ref"`
	Status        string        `json:"status"`
	Outcome       string        `json:"outcome,omitempty"`
	Attempts      int           `json:"attempts"`
	ReceivedAt    time.Time     `json:"received_at"`
	DueAt         time.Time     `json:"due_at"`
	CompletedAt   *time.Time    `json:"completed_at"`
	LastErrorCode string        `json:"last_error_code,omitempty"`
	LastError     string        `json:"last_error,omitempty"`
	Calls         []callState   `json:"calls"`
	Reports       []reportState `json:"reports"`
}

type callState struct {
	Attempt    int       `json:"attempt"`
	Worker     string    `json:"worker"`
	StartedAt  time.Time `json:"started_at"`
	DurationMS int64     `json:"duration_ms"`
	HTTPStatus *int      `json:"http_status"`
	ErrorCode  string    `json:"error_code,omitempty"`
	Result     string    `json:"result"`
}

type reportState struct {
	Connector   string     `json:"connector"`
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	DeliveredAt *time.Time `json:"delivered_at"`
	LastResult  string     `json:"last_result,omitempty"`
	HTTPStatus  *int       `json:"http_status,omitempty"`
}

func stateOf(rec queue.Record) requestState {
	s := requestState{
		RequestRef: rec.RequestRef, Status: rec.Status, Outcome: rec.Outcome, Attempts: rec.Attempts,
		ReceivedAt: rec.ReceivedAt, DueAt: rec.DueAt, CompletedAt: timeOrNil(rec.CompletedAt),
		LastErrorCode: rec.LastErrorCode, LastError: rec.LastError,
		Calls: []callState{}, Reports: []reportState{},
	}
	for _, c := range rec.Calls {
		s.Calls = append(s.Calls, callState{Attempt: c.Attempt, Worker: c.Worker, StartedAt: c.StartedAt,
			DurationMS: c.Duration.Milliseconds(), HTTPStatus: intOrNil(c.HTTPStatus), ErrorCode: c.ErrorCode, Result: c.Result})
	}
	for _, p := range rec.Reports {
		s.Reports = append(s.Reports, reportState{Connector: p.Connector, Status: p.Status, Attempts: p.Attempts,
			DeliveredAt: timeOrNil(p.DeliveredAt), LastResult: p.LastResult, HTTPStatus: intOrNil(p.HTTPStatus)})
	}
	return s
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func intOrNil(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}

// sameID tells whether a repeated request names the id the stored one does: the raw id, or once
// IDENTIFIER_RETENTION has passed, its pseudonym under any key. Without keys a pseudonym cannot be
// checked, and the repeat is taken for what it says it is.
func (d *doors) sameID(stored, given string) bool {
	if !strings.HasPrefix(stored, worker.PseudonymPrefix) {
		return equalSecret(stored, given)
	}
	if d.keys.Len() == 0 {
		return true
	}
	for _, p := range d.keys.Pseudonyms(given) {
		if equalSecret(stored, p) {
			return true
		}
	}
	return false
}

// submit is POST /v1/erasure-requests.
func (d *doors) submit(w http.ResponseWriter, r *http.Request) {
	if !isJSON(r) {
		writeAPIError(w, http.StatusUnsupportedMediaType, "", "the body must be JSON (Content-Type: application/json)")
		return
	}
	body, ok := readBody(w, r, func() {
		writeAPIError(w, http.StatusRequestEntityTooLarge, "", "the body is larger than 64 KiB")
	})
	if !ok {
		return
	}
	sub, err := webhook.ParseSubmission(body)
	if err != nil {
		var fe *webhook.FieldError
		if errors.As(err, &fe) {
			writeAPIError(w, http.StatusBadRequest, fe.Field, err.Error())
			return
		}
		writeAPIError(w, http.StatusBadRequest, "", err.Error())
		return
	}
	if strings.HasPrefix(sub.RequestRef, ketchRefPrefix) || strings.HasPrefix(sub.RequestRef, transcendRefPrefix) {
		writeAPIError(w, http.StatusBadRequest, "request_ref", "request_ref: the prefixes ketch: and transcend: are kept for the connectors' requests")
		return
	}
	req := queue.NewRequest{RequestRef: sub.RequestRef, ExternalUserID: sub.ExternalUserID, DueAt: sub.DueAt}
	if d.cfg.webhook() {
		req.Reports = []queue.NewReport{{Connector: queue.ConnectorWebhook}}
	}
	res, err := d.q.Enqueue(r.Context(), []queue.NewRequest{req})
	if err != nil {
		d.unavailable(w, r, "api", err)
		return
	}
	switch res[0].Admission {
	case queue.Rejected:
		field := ""
		if msg := res[0].Err.Error(); strings.HasPrefix(msg, "request_ref") {
			field = "request_ref"
		} else if strings.HasPrefix(msg, "external_user_id") {
			field = "external_user_id"
		}
		writeAPIError(w, http.StatusBadRequest, field, res[0].Err.Error())
		return
	}
	rec, err := d.q.Lookup(r.Context(), sub.RequestRef)
	if err != nil {
		d.unavailable(w, r, "api", err)
		return
	}
	switch {
	case res[0].Admission == queue.Inserted:
		writeJSONBody(w, http.StatusAccepted, stateOf(rec))
	case !d.sameID(rec.ExternalUserID, sub.ExternalUserID):
		writeAPIError(w, http.StatusConflict, "request_ref", "request_ref: already used by a request for another external_user_id")
	default:
		writeJSONBody(w, http.StatusOK, stateOf(rec))
	}
}

// lookup is GET /v1/erasure-requests/{ref}.
func (d *doors) lookup(w http.ResponseWriter, r *http.Request) {
	rec, err := d.q.Lookup(r.Context(), r.PathValue("ref"))
	switch {
	case errors.Is(err, queue.ErrNotFound):
		writeAPIError(w, http.StatusNotFound, "request_ref", "no request has this request_ref")
	case err != nil:
		d.unavailable(w, r, "api", err)
	default:
		writeJSONBody(w, http.StatusOK, stateOf(rec))
	}
}

// unavailable answers a request the database could not take: nothing was stored, and the
// sender should try again.
func (d *doors) unavailable(w http.ResponseWriter, r *http.Request, door string, err error) {
	if r.Context().Err() != nil {
		return // the sender went away
	}
	d.log.Error("a door could not reach the database; the sender is told to retry", "door", door, "err", err)
	w.Header().Set("Retry-After", "5")
	if door == "ketch" {
		writeKetch(w, http.StatusServiceUnavailable, ketch.ErrorBody(nil, http.StatusServiceUnavailable, ketch.ErrorUnavailable, "the database is unavailable; try again (repeating the same request is safe)"))
		return
	}
	writeAPIError(w, http.StatusServiceUnavailable, "", "the database is unavailable; try again (repeating the same request is safe)")
}

func writeKetch(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// ketch is POST /v1/ketch: the Ketch Forwarder protocol's DeleteRequest.
func (d *doors) ketch(w http.ResponseWriter, r *http.Request) {
	if !equalSecret(r.Header.Get(d.cfg.ketchHeader), d.cfg.ketchValue) {
		writeKetch(w, http.StatusUnauthorized, ketch.ErrorBody(nil, http.StatusUnauthorized, ketch.ErrorForbidden,
			"missing or wrong "+d.cfg.ketchHeader+" header"))
		return
	}
	body, ok := readBody(w, r, func() {
		writeKetch(w, http.StatusRequestEntityTooLarge, ketch.ErrorBody(nil, http.StatusRequestEntityTooLarge, ketch.ErrorInvalid, "the body is larger than 64 KiB"))
	})
	if !ok {
		return
	}
	now := time.Now()
	req, err := ketch.ParseDeleteRequest(body, d.cfg.ketchSpace)
	if err != nil {
		var re *ketch.RequestError
		if errors.As(err, &re) {
			status, answer := re.Answer(now)
			writeKetch(w, status, answer)
			return
		}
		writeKetch(w, http.StatusBadRequest, ketch.ErrorBody(nil, http.StatusBadRequest, ketch.ErrorInvalid, err.Error()))
		return
	}
	nr := queue.NewRequest{RequestRef: ketchRefPrefix + req.Metadata.UID, ExternalUserID: req.ExternalUserID, DueAt: req.DueAt}
	for i, cb := range req.Callbacks {
		creds, err := json.Marshal(ketchReport{Callback: cb, Metadata: req.Metadata})
		if err != nil {
			writeKetch(w, http.StatusInternalServerError, ketch.ErrorBody(&req.Metadata, http.StatusInternalServerError, ketch.ErrorInternal, "cannot keep the callback"))
			return
		}
		nr.Reports = append(nr.Reports, queue.NewReport{Connector: queue.ConnectorKetch, Target: i, Credentials: creds})
	}
	res, err := d.q.Enqueue(r.Context(), []queue.NewRequest{nr})
	if err != nil {
		d.unavailable(w, r, "ketch", err)
		return
	}
	if res[0].Admission == queue.Rejected {
		writeKetch(w, http.StatusBadRequest, ketch.ErrorBody(&req.Metadata, http.StatusBadRequest, ketch.ErrorInvalid, res[0].Err.Error()))
		return
	}
	rec, err := d.q.Lookup(r.Context(), nr.RequestRef)
	if err != nil {
		d.unavailable(w, r, "ketch", err)
		return
	}
	if res[0].Admission == queue.Duplicate && !d.sameID(rec.ExternalUserID, req.ExternalUserID) {
		writeKetch(w, http.StatusConflict, ketch.ErrorBody(&req.Metadata, http.StatusConflict, ketch.ErrorConflict,
			"metadata.uid: already used by a request for another identity"))
		return
	}
	status, reason := ketch.StatusInProgress, ketch.Reason("")
	expected := rec.DueAt
	if !rec.CompletedAt.IsZero() {
		status, reason = ketch.FinalEvent(rec.Outcome)
		expected = rec.CompletedAt
	}
	writeKetch(w, http.StatusOK, ketch.DeleteResponseBody(req.Metadata, status, reason, strconv.FormatInt(rec.ID, 10), expected))
}
