package fides

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/settings"
)

// The settings, by the names operators configure.
const (
	SettingAuthToken     = "FIDES_AUTH_TOKEN"
	SettingURL           = "FIDES_URL"
	SettingCallbackDelay = "FIDES_CALLBACK_DELAY"
)

// DefaultCallbackDelay is FIDES_CALLBACK_DELAY's default. Fides parks a task as awaiting its
// callback only once our 2xx has reached its worker and the worker has committed the task's new
// status; a callback before that is answered 400 like one for a task already done. The outcome
// is often known within a second, so the callback is held this long after intake.
const DefaultCallbackDelay = 30 * time.Second

// MaxCallbackDelay bounds FIDES_CALLBACK_DELAY well inside the reply-to-token's life (60 h by
// default) and REPORT_MAX_AGE.
const MaxCallbackDelay = time.Hour

// Connector is Fides' custom SaaS connector (deploy/fides): Fides pushes erasures to
// POST /v1/fides/erasures and either polls GET /v1/fides/erasures/{correlation_id} or is called
// back at its reply-to path.
type Connector struct{}

// Info: requests are stored as "fides:" and Fides' privacy request id.
func (Connector) Info() connector.Info { return connector.Info{Name: "fides", RefPrefix: "fides:"} }

// Declare declares FIDES_AUTH_TOKEN, FIDES_URL and FIDES_CALLBACK_DELAY.
func (c Connector) Declare(s *settings.Set) func() *connector.Parts {
	var (
		token = s.Secret(SettingAuthToken, "the bearer token Fides' custom SaaS connector sends to /v1/fides/erasures (its connector_params token); the Fides door is off when not set", "file holding FIDES_AUTH_TOKEN")
		base  = s.Add(SettingURL, "", "the Fides server's base URL, e.g. https://fides.example.com: callbacks go to this URL followed by the reply-to path Fides sends (required with FIDES_AUTH_TOKEN)")
		delay = s.Add(SettingCallbackDelay, DefaultCallbackDelay.String(), "how long after intake a Fides callback is held back: Fides takes a callback only once its worker has parked the task, after our answer reached it; a callback refused before then is sent again, one refused after it counts as delivered (the task was done or closed). At most 1h")
	)
	return func() *connector.Parts {
		tok, u := s.Verbatim(token), s.String(base)
		hold := s.Duration(delay)
		switch {
		case s.Err() != nil:
			return nil
		case tok == "" && u != "":
			s.Fail(base, "is set but FIDES_AUTH_TOKEN is not: it is where the Fides door's callbacks go, and that door is off")
			return nil
		case tok == "":
			return nil
		case u == "":
			s.Fail(base, "is required with FIDES_AUTH_TOKEN: callbacks go to the Fides server's base URL followed by the reply-to path")
			return nil
		case hold > MaxCallbackDelay:
			s.Fail(delay, "must be at most %s, got %s: Fides' reply-to-token expires (60 h by default) and reports give up after REPORT_MAX_AGE", MaxCallbackDelay, hold)
			return nil
		}
		fidesURL, reason := parseBaseURL(u)
		if reason != "" {
			s.Fail(base, "%s", reason)
			return nil
		}
		d := &door{info: c.Info(), token: tok, hold: hold, now: time.Now}
		// No timeout of its own: the reporter bounds each delivery (REPORT_TIMEOUT).
		return &connector.Parts{Door: d, Deliverer: deliverer{base: fidesURL, client: &http.Client{}, now: time.Now}, OnBy: SettingAuthToken}
	}
}

// parseBaseURL checks FIDES_URL, an absolute http(s) URL with nothing after its path, and
// returns it without a trailing slash.
func parseBaseURL(raw string) (string, string) {
	u, err := url.Parse(raw)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "":
		return "", "must be an absolute http or https URL, like https://fides.example.com"
	case u.User != nil:
		return "", "must hold no user or password"
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(raw, "?") || strings.HasSuffix(raw, "#"):
		return "", "must hold no query or fragment: the reply-to path is appended to it"
	}
	return strings.TrimRight(raw, "/"), ""
}

// report is what a Fides report keeps until delivered: the callback's path and token (Fides'
// credential for that one task), and when the callback may go, so that a release that does not
// know holds still waits.
type report struct {
	ReplyTo   string    `json:"reply_to"`
	Token     string    `json:"token"`
	NotBefore time.Time `json:"not_before"`
}

type door struct {
	info  connector.Info
	token string
	hold  time.Duration
	now   func() time.Time
}

// The door's routes.
const (
	routeSubmit = "POST /v1/fides/erasures"
	routeStatus = "GET /v1/fides/erasures/{correlation_id}"
)

func (d *door) Routes(in connector.Intake, log *slog.Logger) map[string]http.Handler {
	h := handler{door: d, in: in, log: log}
	return map[string]http.Handler{
		routeSubmit: connector.Bearer(h.token, SettingAuthToken, in, h.submit),
		routeStatus: connector.Bearer(h.token, SettingAuthToken, in, h.status),
	}
}

type handler struct {
	*door
	in  connector.Intake
	log *slog.Logger
}

// Answer is the body of an accepted request: Fides' polling strategy reads the correlation id
// (correlation_id_path: correlation_id) and asks GET /v1/fides/erasures/<correlation_id>.
type Answer struct {
	CorrelationID string `json:"correlation_id"`
}

// submit is POST /v1/fides/erasures.
func (h handler) submit(w http.ResponseWriter, r *http.Request) {
	body, ok := connector.ReadJSON(w, r, h.in)
	if !ok {
		return
	}
	id, user, err := ParseBody(body)
	if err == nil {
		err = ParseReplyTo(r.Header.Get(HeaderReplyTo), r.Header.Get(HeaderReplyToToken))
	}
	if err != nil {
		var fe *connector.FieldError
		errors.As(err, &fe)
		h.in.Refused(connector.RefusedInvalid, fe.Field)
		connector.Refuse(w, http.StatusBadRequest, fe.Field, fe.Error())
		return
	}
	req := connector.Request{ID: id, ExternalUserID: user, IDField: FieldPrivacyRequestID, UserField: FieldExternalUserID}
	if replyTo := r.Header.Get(HeaderReplyTo); replyTo != "" {
		creds, err := json.Marshal(report{ReplyTo: replyTo, Token: r.Header.Get(HeaderReplyToToken), NotBefore: h.now().Add(h.hold).UTC()})
		if err != nil {
			connector.Refuse(w, http.StatusInternalServerError, "", "cannot keep the callback")
			return
		}
		// Renewed: Fides sends a retried privacy request again with a new reply-to-token, and
		// only that one completes the task.
		req.Reports = []connector.NewReport{{Credentials: creds, Hold: h.hold, Renewed: true}}
	}
	got, err := h.in.Submit(r.Context(), req)
	if err != nil {
		connector.Unavailable(w, r, h.log, h.info.DoorName(), err) // Fides retries a 503
		return
	}
	switch a := got[0]; a.Admission {
	case connector.Refused:
		connector.Refuse(w, http.StatusBadRequest, a.Err.Field, a.Err.Error())
	case connector.Conflict:
		connector.Refuse(w, http.StatusConflict, FieldPrivacyRequestID, "privacy_request_id: already used by a request for another external_user_id")
	case connector.Inserted:
		connector.WriteJSON(w, http.StatusAccepted, Answer{CorrelationID: id})
	default:
		// A repeat (Fides retrying its send) is the same request: the same correlation id, and
		// the callback of the first stays the one that is sent.
		connector.WriteJSON(w, http.StatusOK, Answer{CorrelationID: id})
	}
}

// status is GET /v1/fides/erasures/{correlation_id}: 200 while pending or once completed, 422
// once failed, so that Fides' polling fails the task with our reason.
func (h handler) status(w http.ResponseWriter, r *http.Request) {
	rec, err := h.in.Lookup(r.Context(), r.PathValue("correlation_id"))
	switch {
	case errors.Is(err, connector.ErrNotFound):
		connector.Refuse(w, http.StatusNotFound, "correlation_id", "no request has this correlation_id")
		return
	case err != nil:
		connector.Unavailable(w, r, h.log, h.info.DoorName(), err) // Fides retries a 503
		return
	}
	st := StatusOf(rec)
	code := http.StatusOK
	if st.Status == StatusFailed {
		code = http.StatusUnprocessableEntity
	}
	connector.WriteJSON(w, code, st)
}

// deliverer calls Fides back at FIDES_URL followed by each request's reply-to path.
type deliverer struct {
	base   string
	client *http.Client
	now    func() time.Time
}

// maxAnswerBytes bounds what is read of Fides' answer, only so that the connection is reused.
const maxAnswerBytes = 4 << 10

// Deliver tells Fides that the request's task is done, with the rows it masked. A failed
// request is not called back: Fides has none to take.
func (d deliverer) Deliver(ctx context.Context, r connector.Report) connector.Delivery {
	var rep report
	if err := json.Unmarshal(r.Credentials, &rep); err != nil || rep.ReplyTo == "" || rep.Token == "" {
		return connector.Delivery{Result: connector.Rejected, Err: errors.New("fides: the stored callback cannot be read")}
	}
	rows, ok := RowsMasked(r.Outcome)
	if !ok {
		return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf(
			"fides: %s; Fides has no failure callback, so none was sent: the task awaits it in Fides until its reply-to-token expires or an admin acts",
			FailureReason(r.Outcome, r.ErrorCode, r.ExternalUserID))}
	}
	if err := ParseReplyTo(rep.ReplyTo, rep.Token); err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf("fides: the stored callback: %w", err)}
	}
	notBefore := rep.NotBefore
	if r.NotBefore.After(notBefore) {
		notBefore = r.NotBefore
	}
	if now := d.now(); now.Before(notBefore) {
		return connector.Delivery{Result: connector.Retry, RetryAfter: notBefore.Sub(now),
			Err: errors.New("fides: held back until FIDES_CALLBACK_DELAY after intake, so that Fides has parked the task")}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.base+rep.ReplyTo, bytes.NewReader(fmt.Appendf(nil, `{"rows_masked":%d}`, rows)))
	if err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: errors.New("fides: cannot build the callback request")}
	}
	req.Header.Set("Authorization", "Bearer "+rep.Token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	c := *d.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		return connector.FromError(ctx, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes))
	resp.Body.Close()
	return classify(resp.StatusCode, resp.Header, d.now(), notBefore)
}

// classify reads Fides' answer to a callback (request_task_async_callback). 400 is a task that no
// longer awaits a callback: told already (a lost answer), or its privacy request closed; before
// the hold ended it is a task not yet parked, and the callback goes again once it has. The
// token is this task's own, so no refusal of it concerns another report: 401 is not the
// connector's credential, and pauses nothing.
func classify(status int, header http.Header, now, notBefore time.Time) connector.Delivery {
	reject := func(why string) connector.Delivery {
		return connector.Delivery{Result: connector.Rejected, HTTPStatus: status,
			Err: fmt.Errorf("fides: Fides answered %d %s: %s", status, http.StatusText(status), why)}
	}
	switch status {
	case http.StatusBadRequest:
		if now.Before(notBefore) {
			return connector.Delivery{Result: connector.Retry, HTTPStatus: status, RetryAfter: notBefore.Sub(now),
				Err: errors.New("fides: Fides answered 400 Bad Request before FIDES_CALLBACK_DELAY ended: the task is not awaiting its callback yet")}
		}
		return connector.Delivery{Result: connector.Closed, HTTPStatus: status,
			Err: errors.New("fides: Fides answered 400 Bad Request: the task no longer awaits a callback (told before, or its privacy request is closed)")}
	case http.StatusUnauthorized:
		return reject("the callback carried no token Fides reads")
	case http.StatusForbidden:
		return reject("the reply-to-token is wrong or expired (it lives FIDES__EXECUTION__PRIVACY_REQUEST_DELAY_TIMEOUT, 60 h by default); retry the privacy request in Fides")
	case http.StatusNotFound:
		return reject("Fides has no such request task (its privacy request was deleted?)")
	case http.StatusUnprocessableEntity:
		return reject("Fides refused the callback body")
	}
	d := connector.FromAnswer(status, header, now)
	if d.Err != nil {
		d.Err = fmt.Errorf("fides: %w", d.Err)
	}
	return d
}
