// Package fidesfake is a stand-in for Fides (ethyca/fides), as knotfake is for Knot. It plays
// both of Fides' parts with a custom SaaS connector whose erasure uses the callback strategy:
//
//   - it sends erasure requests as Fides' SaaS connector would (ErasureRequest, Push): POST with
//     Authorization: Bearer, Content-Type: application/json, the headers reply-to
//     (/api/v1/request-task/callback) and reply-to-token (new for each request task), and the
//     body {"privacy_request_id", "external_user_id"};
//   - it serves POST /api/v1/request-task/callback as request_task_async_callback does
//     (src/fides/api/v1/endpoints/privacy_request_endpoints.py): 401 without a bearer token, 403
//     for a token it did not issue or that expired, 404 for a task it no longer has, 422 for a
//     malformed body, 400 for a task that is not awaiting a callback, else 200
//     {"task_queued": true}.
//
// A task awaits its callback only ParkDelay after the door's 2xx answer reached the fake (Fides'
// worker parks it then); a callback before that, or after the task was completed, gets 400.
// Faults (5xx, 429, hangs, lost answers, outages) are injected in front of Fides' own answers,
// and the admin endpoints under /_fake/ (stats, faults, reset, push, tasks) have no
// authentication: the fake is meant for loopback and test networks only.
//
// The package knows nothing of package fides on purpose: it reads the wire on its own, so a
// misreading of Fides in one does not hide in the other.
package fidesfake

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

// CallbackPath is Fides' callback route: V1_URL_PREFIX + REQUEST_TASK_CALLBACK.
const CallbackPath = "/api/v1/request-task/callback"

// DefaultTokenLifetime is how long a reply-to-token is taken:
// FIDES__EXECUTION__PRIVACY_REQUEST_DELAY_TIMEOUT, 3600 minutes by default.
const DefaultTokenLifetime = 60 * time.Hour

// DefaultParkDelay is how long after the door's 2xx a task starts to await its callback.
const DefaultParkDelay = time.Second

// Options configures a Server.
type Options struct {
	// TokenLifetime is how long a reply-to-token is taken after it was issued; 0 means
	// DefaultTokenLifetime.
	TokenLifetime time.Duration
	// ParkDelay is how long after the door's 2xx answer a task awaits its callback; a task whose
	// request the fake did not send itself (a test sent it) counts from when it was built. 0
	// means DefaultParkDelay; a negative value means none.
	ParkDelay time.Duration
	// Faults are the callback faults injected from the start.
	Faults Faults
	// Now is the fake's clock; nil means time.Now.
	Now func() time.Time
	// Client sends pushed requests; nil means a client with a 30 s timeout.
	Client *http.Client
}

// Server is the fake. It implements http.Handler and is safe for concurrent use.
type Server struct {
	// Admin holds the faults and serves /_fake/; every other call goes to the wire.
	*fakekit.Admin[Faults]
	now    func() time.Time
	client *http.Client

	mu       sync.Mutex
	lifetime time.Duration
	park     time.Duration
	tasks    map[string]*task // by privacy request id
	tokens   map[string]*task // by reply-to-token
	st       Stats
}

// task is the one erasure task of a privacy request for the connector, and what it was told.
type task struct {
	id, privacyRequestID, user, token string
	callback                          bool // the request carried reply-to headers
	issued                            time.Time
	answer                            int       // the door's status; 0 before (or without) one
	awaitingFrom                      time.Time // zero: it never awaits (the door refused it)
	dropped                           bool
	completions, premature, repeats   int64
	refusedToken                      int64 // 403s to this task's token once expired
	rowsMasked                        []int // per completion; -1 when the body gave none
	retryAt                           time.Time
}

// New returns a fake Fides.
func New(opts Options) *Server {
	s := &Server{now: opts.Now, client: opts.Client,
		lifetime: cmp.Or(opts.TokenLifetime, DefaultTokenLifetime), park: cmp.Or(opts.ParkDelay, DefaultParkDelay)}
	if opts.Now == nil {
		s.now = time.Now
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 30 * time.Second}
	}
	s.Reset()
	wire := http.NewServeMux()
	wire.HandleFunc("POST "+CallbackPath, s.serveCallback)
	wire.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { detail(w, http.StatusNotFound, "Not Found") })
	s.Admin = fakekit.NewAdmin(opts.Faults, fakekit.AdminOptions{Wire: wire, Stats: func() any { return s.Stats() },
		Reset: s.Reset, Now: s.now, ErrorKey: "detail"})
	s.HandleFunc("POST /_fake/push", fakekit.PushHandler(s.Admin, s.Push, func(r PushResult) int { return r.Sent }))
	s.HandleFunc("GET /_fake/tasks/{privacy_request_id}", func(w http.ResponseWriter, r *http.Request) {
		rec, ok := s.Task(r.PathValue("privacy_request_id"))
		if !ok {
			s.Refuse(w, http.StatusNotFound, "no task for this privacy request id")
			return
		}
		fakekit.WriteJSON(w, http.StatusOK, rec)
	})
	return s
}

// SetParkDelay changes the park delay of tasks answered from now on (negative: none).
func (s *Server) SetParkDelay(d time.Duration) {
	s.mu.Lock()
	s.park = d
	s.mu.Unlock()
}

// SetTokenLifetime changes how long every reply-to-token, issued or not, is taken.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	s.lifetime = d
	s.mu.Unlock()
}

// Reset forgets every task (and its token) and clears the stats; faults stay.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tasks, s.tokens = map[string]*task{}, map[string]*task{}
	s.st = Stats{Answers: map[string]int64{}, RowsMasked: map[string]int64{}, Faulted: map[string]int64{}}
}

// DropTask forgets the task of a privacy request but keeps its token valid, as when its
// privacy request was deleted in Fides: its callback gets 404.
func (s *Server) DropTask(privacyRequestID string) {
	s.mu.Lock()
	if t := s.tasks[privacyRequestID]; t != nil {
		t.dropped = true
	}
	s.mu.Unlock()
}

// detail answers as FastAPI does: {"detail": ...}.
func detail(w http.ResponseWriter, status int, v any) {
	fakekit.WriteJSON(w, status, map[string]any{"detail": v})
}

func (s *Server) serveCallback(w http.ResponseWriter, r *http.Request) {
	arrived := s.now()
	body, readErr := readBody(r)
	token, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	f := s.Faults()

	s.mu.Lock()
	s.st.Callbacks++
	s.st.FirstCallback, s.st.LastCallback = fakekit.Span(s.st.FirstCallback, s.st.LastCallback, arrived)
	if t := s.tokens[token]; t != nil && !t.retryAt.IsZero() {
		if arrived.Before(t.retryAt) {
			s.st.EarlyRetries++
		} else {
			t.retryAt = time.Time{}
		}
	}
	s.mu.Unlock()

	if !fakekit.Sleep(r, fakekit.Latency(f.Latency, f.LatencyJitter)) {
		fakekit.Abort()
	}
	now := s.now()
	if now.Before(f.OutageUntil) {
		s.fault(w, "outage", http.StatusServiceUnavailable)
		return
	}
	kind := fakekit.Draw(f)
	switch kind {
	case "hang":
		s.fault(nil, kind, 0)
		fakekit.Hang(r)
		fakekit.Abort()
	case "rate_limit":
		secs := fakekit.RetryAfter(w, f.RetryAfter)
		s.mu.Lock()
		if t := s.tokens[token]; t != nil {
			t.retryAt = now.Add(time.Duration(secs) * time.Second)
		}
		s.mu.Unlock()
		s.fault(w, kind, http.StatusTooManyRequests)
		return
	case "error":
		s.fault(w, kind, http.StatusInternalServerError)
		return
	}

	status, answer := s.take(token, bearer, body, readErr, r.Header.Get("Content-Type"), now)
	if kind == "lost_answer" && status == http.StatusOK {
		// Taken, but the answer never reaches the sender: it will call again, and get 400.
		s.fault(nil, kind, 0)
		fakekit.Abort()
	}
	fakekit.WriteJSON(w, status, answer)
}

// fault counts an injected fault and, with a status, answers it.
func (s *Server) fault(w http.ResponseWriter, kind string, status int) {
	s.mu.Lock()
	s.st.Faulted[kind]++
	s.mu.Unlock()
	if w != nil {
		detail(w, status, http.StatusText(status))
	}
}

// take is request_task_async_callback once past the faults, in its order: the token (401, 403),
// the task (404), the body (422), the task's status (400).
func (s *Server) take(token string, bearer bool, body []byte, readErr error, contentType string, now time.Time) (int, any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !bearer || token == "" {
		s.st.Unauthenticated++
		return http.StatusUnauthorized, map[string]string{"detail": "Not authenticated"}
	}
	t := s.tokens[token]
	if t == nil {
		s.st.Forbidden++
		return http.StatusForbidden, map[string]string{"detail": "Not Authorized for this action"}
	}
	if !now.Before(t.issued.Add(s.lifetime)) {
		s.st.Expired++
		t.refusedToken++
		return http.StatusForbidden, map[string]string{"detail": "Not Authorized for this action"}
	}
	if t.dropped {
		s.st.UnknownTask++
		return http.StatusNotFound, map[string]string{"detail": "No Request Task found with id '" + t.id + "'."}
	}
	rows, problem := parseCallback(body, readErr, contentType)
	if problem != nil {
		s.st.MalformedBodies++
		return http.StatusUnprocessableEntity, map[string]any{"detail": []any{problem}}
	}
	if t.completions > 0 || t.awaitingFrom.IsZero() || now.Before(t.awaitingFrom) {
		status := "in_processing"
		if t.completions > 0 {
			status = "complete"
			t.repeats++
			s.st.RepeatCallbacks++
		} else {
			t.premature++
			s.st.PrematureCallbacks++
		}
		return http.StatusBadRequest, map[string]string{"detail": "Callback failed. Cannot queue erasure task '" + t.id + "' with request task status '" + status + "'"}
	}
	t.completions++
	t.rowsMasked = append(t.rowsMasked, rows)
	s.st.Completions++
	key := "none"
	if rows >= 0 {
		key = strconv.Itoa(rows)
	}
	s.st.RowsMasked[key]++
	return http.StatusOK, map[string]bool{"task_queued": true}
}

// maxCallbackBody bounds what is read of a callback.
const maxCallbackBody = 1 << 20

func readBody(r *http.Request) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(http.MaxBytesReader(nil, r.Body, maxCallbackBody))
	return b.Bytes(), err
}

// parseCallback checks a RequestTaskCallbackRequest: a JSON object whose rows_masked, when
// given, is an integer (or null), and whose access_results is a list of objects (or null);
// other fields are ignored, as pydantic does. It returns the rows masked (-1 when not given),
// or a FastAPI validation error. The fake is stricter than pydantic's lax mode, which would
// coerce "1" or 1.0: a sender should send the integer.
func parseCallback(body []byte, readErr error, contentType string) (int, map[string]any) {
	problem := func(loc, msg, typ string) map[string]any {
		l := []string{"body"}
		if loc != "" {
			l = append(l, loc)
		}
		return map[string]any{"loc": l, "msg": msg, "type": typ}
	}
	if mt, _, err := mime.ParseMediaType(contentType); contentType != "" && (err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json"))) {
		return -1, problem("", "Input should be a valid dictionary or object to extract fields from", "model_attributes_type")
	}
	if readErr != nil || len(bytes.TrimSpace(body)) == 0 {
		return -1, problem("", "Field required", "missing")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return -1, problem("", "JSON decode error or not an object", "json_invalid")
	}
	if raw, ok := fields["access_results"]; ok && string(raw) != "null" {
		var rows []map[string]any
		if json.Unmarshal(raw, &rows) != nil {
			return -1, problem("access_results", "Input should be a valid list of objects", "list_type")
		}
	}
	raw, ok := fields["rows_masked"]
	if !ok || string(raw) == "null" {
		return -1, nil
	}
	n, err := strconv.Atoi(string(raw))
	if err != nil {
		return -1, problem("rows_masked", "Input should be a valid integer", "int_type")
	}
	return max(n, 0), nil
}

// RequestOption changes one erasure request the fake builds.
type RequestOption func(*requestSpec)

type requestSpec struct{ polling bool }

// Polling builds the request of a SaaS config with the polling strategy: no reply-to headers.
func Polling() RequestOption { return func(r *requestSpec) { r.polling = true } }

// ErasureRequest builds the request Fides' SaaS connector sends to target (the door's URL,
// ".../v1/fides/erasures") for the privacy request id, naming the person user, with
// Authorization: Bearer bearer (none when empty). The first build of an id issues its task
// and reply-to-token; a build again (Fides retrying its send) sends the same ones.
func (s *Server) ErasureRequest(target, bearer, id, user string, opts ...RequestOption) (*http.Request, error) {
	var spec requestSpec
	for _, o := range opts {
		o(&spec)
	}
	body, err := json.Marshal(map[string]string{"privacy_request_id": id, "external_user_id": user})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	t := s.issue(id, user, !spec.polling)
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if t.callback {
		req.Header.Set("reply-to", CallbackPath)
		req.Header.Set("reply-to-token", t.token)
	}
	return req, nil
}

// issue returns the task of a privacy request, new with its token the first time. A task the
// fake does not see answered awaits from ParkDelay after it was built.
func (s *Server) issue(id, user string, callback bool) *task {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tasks[id]; t != nil {
		return t
	}
	now := s.now()
	t := &task{id: "rt_" + fakekit.NewUUID(), privacyRequestID: id, user: user, callback: callback, issued: now, token: newToken()}
	if callback {
		t.awaitingFrom = now.Add(max(s.park, 0))
	}
	s.tasks[id], s.tokens[t.token] = t, t
	return t
}

// Retry is an admin retrying the privacy request id in Fides after its task failed (an expired
// reply-to-token, say): the task gets a new reply-to-token, the old one is no longer taken, and
// the erasure request is sent to target again; the task awaits its callback once the door has
// answered. It returns the answer's key, as Push counts it ("http_200").
func (s *Server) Retry(ctx context.Context, target, bearer, id string) string {
	s.mu.Lock()
	t := s.tasks[id]
	if t == nil {
		s.mu.Unlock()
		return "unknown_task"
	}
	delete(s.tokens, t.token)
	t.token, t.issued, t.answer, t.awaitingFrom = newToken(), s.now(), 0, time.Time{}
	s.tokens[t.token] = t
	user, callback := t.user, t.callback
	s.mu.Unlock()
	var opts []RequestOption
	if !callback {
		opts = append(opts, Polling())
	}
	return s.send(ctx, target, bearer, id, user, opts)
}

// answered records the door's answer to a task's request: a 2xx parks the task ParkDelay later,
// anything else (Fides errs the task) never does.
func (s *Server) answered(id string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[id]
	if t == nil {
		return
	}
	t.answer = status
	switch {
	case !t.callback:
	case status >= 200 && status <= 299:
		t.awaitingFrom = s.now().Add(max(s.park, 0))
	default:
		t.awaitingFrom = time.Time{}
	}
}

// newToken stands for the JWE Fides issues: opaque to the door, one per task.
func newToken() string {
	var b [24]byte
	rand.Read(b[:])
	return "rtt-" + hex.EncodeToString(b[:])
}

// TaskRecord is what the fake knows of one task, for tests and GET /_fake/tasks/{id}.
type TaskRecord struct {
	ID               string `json:"id"`
	PrivacyRequestID string `json:"privacy_request_id"`
	ExternalUserID   string `json:"external_user_id"`
	// Token is the task's reply-to-token, so that a test can look for it where it must not be.
	Token     string    `json:"reply_to_token"`
	Callback  bool      `json:"callback"`
	Issued    time.Time `json:"issued"`
	Answer    int       `json:"answer"` // the door's status; 0 when the fake did not send it
	Awaiting  bool      `json:"awaiting"`
	Completed bool      `json:"completed"`
	// Completions counts callbacks taken (200): Fides takes one per task.
	Completions int64 `json:"completions"`
	// RowsMasked is the rows_masked of each completion, -1 where the body gave none.
	RowsMasked []int `json:"rows_masked"`
	// Premature counts callbacks answered 400 before the task awaited one; Repeats after its
	// completion; ExpiredToken 403s after the token expired.
	Premature    int64 `json:"premature"`
	Repeats      int64 `json:"repeats"`
	ExpiredToken int64 `json:"expired_token"`
}

// Task returns what the fake knows of a privacy request's task.
func (s *Server) Task(privacyRequestID string) (TaskRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[privacyRequestID]
	if !ok {
		return TaskRecord{}, false
	}
	now := s.now()
	return TaskRecord{ID: t.id, PrivacyRequestID: t.privacyRequestID, ExternalUserID: t.user, Token: t.token,
		Callback: t.callback, Issued: t.issued, Answer: t.answer,
		Awaiting:    t.completions == 0 && !t.awaitingFrom.IsZero() && !now.Before(t.awaitingFrom),
		Completed:   t.completions > 0,
		Completions: t.completions, RowsMasked: append([]int{}, t.rowsMasked...),
		Premature: t.premature, Repeats: t.repeats, ExpiredToken: t.refusedToken}, true
}

// Stats is what the fake saw. All counts are since New or the last Reset.
type Stats struct {
	// Pushed counts erasure requests Push sent; Answers counts the door's answers to them as
	// "http_<status>", or "no_answer"; MalformedAnswers those whose 2xx body did not give the
	// privacy request id as correlation_id.
	Pushed           int64            `json:"pushed"`
	Answers          map[string]int64 `json:"answers"`
	MalformedAnswers int64            `json:"malformed_answers"`
	// Callbacks counts every POST to the callback path.
	Callbacks int64 `json:"callbacks"`
	// Completions counts callbacks taken (200 {"task_queued": true}); RowsMasked counts them by
	// the rows_masked they gave ("0", "1", ..., "none").
	Completions int64            `json:"completions"`
	RowsMasked  map[string]int64 `json:"rows_masked"`
	// PrematureCallbacks were answered 400 because their task did not await a callback yet;
	// RepeatCallbacks because it had been completed.
	PrematureCallbacks int64 `json:"premature_callbacks"`
	RepeatCallbacks    int64 `json:"repeat_callbacks"`
	// Unauthenticated (401) came without a bearer token, Forbidden (403) with one the fake did
	// not issue, Expired (403) with one past its lifetime; UnknownTask (404) for a dropped task;
	// MalformedBodies (422).
	Unauthenticated int64 `json:"unauthenticated"`
	Forbidden       int64 `json:"forbidden"`
	Expired         int64 `json:"expired"`
	UnknownTask     int64 `json:"unknown_task"`
	MalformedBodies int64 `json:"malformed_bodies"`
	// Faulted counts injected faults by kind: "error", "rate_limit", "hang", "lost_answer",
	// "outage".
	Faulted map[string]int64 `json:"faulted"`
	// EarlyRetries counts callbacks for a task told Retry-After that came back before it.
	EarlyRetries int64 `json:"early_retries"`
	// Of the tasks with a callback: TasksCompleted were completed, TasksAwaiting await one now,
	// TasksParking were answered 2xx but are not awaiting yet, TasksRefused were answered with
	// another status (Fides errs them).
	TasksCompleted int64     `json:"tasks_completed"`
	TasksAwaiting  int64     `json:"tasks_awaiting"`
	TasksParking   int64     `json:"tasks_parking"`
	TasksRefused   int64     `json:"tasks_refused"`
	FirstCallback  time.Time `json:"first_callback,omitzero"`
	LastCallback   time.Time `json:"last_callback,omitzero"`
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fakekit.Snapshot(s.st)
	now := s.now()
	for _, t := range s.tasks {
		switch {
		case !t.callback:
		case t.completions > 0:
			st.TasksCompleted++
		case t.awaitingFrom.IsZero():
			st.TasksRefused++
		case now.Before(t.awaitingFrom):
			st.TasksParking++
		default:
			st.TasksAwaiting++
		}
	}
	return st
}

// Faults are injected into the callbacks the fake serves, in front of Fides' own answers (a
// load balancer's 5xx comes before the application). Rates are shares in [0, 1]. A callback
// answered with a fault is not taken, so its retry is new; one whose answer was lost was
// taken, so its retry is a repeat (400). A field's help is its flag's in cmd/fidesfake.
type Faults struct {
	ErrorRate      float64   `json:"error_rate" help:"share of callbacks answered 500"`
	RateLimitRate  float64   `json:"rate_limit_rate" help:"share of callbacks answered 429"`
	RetryAfter     Duration  `json:"retry_after" help:"Retry-After sent with 429s (whole seconds, rounded up)"`
	HangRate       float64   `json:"hang_rate" help:"share of callbacks never answered"`
	LostAnswerRate float64   `json:"lost_answer_rate" help:"share of completions taken, then dropped without an answer"`
	Latency        Duration  `json:"latency" help:"latency added to every callback"`
	LatencyJitter  Duration  `json:"latency_jitter" help:"uniform extra latency, 0 up to this"`
	OutageUntil    time.Time `json:"outage_until,omitzero" help:"answer every callback 503 for this long after start"`
}

// Validate reports a rate outside [0, 1], rates that sum above 1, or a negative duration,
// naming the field.
func (f Faults) Validate() error { return fakekit.Validate("", f) }

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration = fakekit.Duration
