package webhook

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/settings"
)

// Connector is the generic HTTP API, for in-house systems and scripts: requests are pushed to
// POST /v1/erasure-requests with a bearer token, read back at GET /v1/erasure-requests/{ref},
// and their outcomes sent as Standard Webhooks messages to REPORT_WEBHOOK_URL.
type Connector struct{}

// Info: reports are "webhook", the door is "api", and callers choose their refs.
func (Connector) Info() connector.Info { return connector.Info{Name: "webhook", Door: "api"} }

// Declare declares API_TOKEN, REPORT_WEBHOOK_URL and REPORT_WEBHOOK_SECRET.
func (c Connector) Declare(s *settings.Set) func() *connector.Parts {
	var (
		token     = s.Secret("API_TOKEN", "bearer token that POST and GET /v1/erasure-requests require; the generic API is off when not set", "file holding API_TOKEN")
		url       = s.Add("REPORT_WEBHOOK_URL", "", "where the outcomes of requests that came through the HTTP API are sent, as Standard Webhooks messages; none are sent when not set")
		secretSet = s.Secret("REPORT_WEBHOOK_SECRET", "whsec_ and base64: the key that signs the outcome webhooks (required with REPORT_WEBHOOK_URL)", "file holding REPORT_WEBHOOK_SECRET")
	)
	return func() *connector.Parts {
		tok, u, secret := s.Verbatim(token), s.String(url), s.Verbatim(secretSet)
		switch {
		case u != "" && secret == "":
			s.Fail(secretSet, "is required with REPORT_WEBHOOK_URL: outcome webhooks are always signed")
		case secret != "" && u == "":
			s.Fail(url, "is required with REPORT_WEBHOOK_SECRET")
		case u != "" && tok == "":
			s.Fail(url, "is set but API_TOKEN is not: it reports the outcomes of the HTTP API's requests, and that door is off")
		}
		if tok == "" || s.Err() != nil {
			return nil
		}
		d := &door{token: tok, info: c.Info()}
		parts := &connector.Parts{Door: d, OnBy: "API_TOKEN"}
		if u != "" {
			// No timeout of its own: the reporter bounds each delivery (REPORT_TIMEOUT).
			sender, err := NewSender(u, secret, &http.Client{})
			if err != nil {
				s.SetErr(err)
				return nil
			}
			d.reports = true
			parts.Deliverer = deliverer{sender}
		}
		return parts
	}
}

// door serves the generic API.
type door struct {
	info    connector.Info
	token   string
	reports bool // REPORT_WEBHOOK_URL is set: each request gets a report
}

func (d *door) Routes(in connector.Intake, log *slog.Logger) map[string]http.Handler {
	h := handler{door: d, in: in, log: log}
	return map[string]http.Handler{
		"POST /v1/erasure-requests":      connector.Bearer(h.token, "API_TOKEN", in, h.submit),
		"GET /v1/erasure-requests/{ref}": connector.Bearer(h.token, "API_TOKEN", in, h.lookup),
	}
}

type handler struct {
	*door
	in  connector.Intake
	log *slog.Logger
}

// submit is POST /v1/erasure-requests.
func (h handler) submit(w http.ResponseWriter, r *http.Request) {
	body, ok := connector.ReadJSON(w, r, h.in)
	if !ok {
		return
	}
	sub, err := connector.ParseSubmission(body)
	if err != nil {
		var fe *connector.FieldError
		field := ""
		if errors.As(err, &fe) {
			field = fe.Field
		}
		h.in.Refused(connector.RefusedInvalid, field)
		connector.Refuse(w, http.StatusBadRequest, field, err.Error())
		return
	}
	req := connector.Request{ID: sub.RequestRef, ExternalUserID: sub.ExternalUserID, DueAt: sub.DueAt}
	if h.reports {
		req.Reports = []connector.NewReport{{}}
	}
	got, err := h.in.Submit(r.Context(), req)
	if err != nil {
		connector.Unavailable(w, r, h.log, h.info.DoorName(), err)
		return
	}
	switch a := got[0]; a.Admission {
	case connector.Refused:
		connector.Refuse(w, http.StatusBadRequest, a.Err.Field, a.Err.Error())
	case connector.Conflict:
		connector.Refuse(w, http.StatusConflict, "request_ref", "request_ref: already used by a request for another external_user_id")
	case connector.Inserted:
		connector.WriteJSON(w, http.StatusAccepted, a.Record)
	default:
		connector.WriteJSON(w, http.StatusOK, a.Record)
	}
}

// lookup is GET /v1/erasure-requests/{ref}.
func (h handler) lookup(w http.ResponseWriter, r *http.Request) {
	rec, err := h.in.Lookup(r.Context(), r.PathValue("ref"))
	switch {
	case errors.Is(err, connector.ErrNotFound):
		connector.Refuse(w, http.StatusNotFound, "request_ref", "no request has this request_ref")
	case err != nil:
		connector.Unavailable(w, r, h.log, h.info.DoorName(), err)
	default:
		connector.WriteJSON(w, http.StatusOK, rec)
	}
}

// deliverer sends each report as a Standard Webhooks message.
type deliverer struct{ s *Sender }

// messageID is a report's webhook-id: the same on every attempt of one outcome, so that the
// receiver drops repeats, and a new one when a requeued request's outcome changed, so that the
// receiver does not drop the new outcome as a repeat of the old.
func messageID(r connector.Report) string {
	return "msg_" + strconv.FormatInt(r.ID, 10) + "_" + r.Outcome
}

func (d deliverer) Deliver(ctx context.Context, r connector.Report) connector.Delivery {
	return d.s.Send(ctx, messageID(r), Outcome{
		RequestRef: r.RequestRef, Outcome: r.Outcome, ErrorCode: r.ErrorCode, CompletedAt: r.CompletedAt,
	}, time.Now())
}
