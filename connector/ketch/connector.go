package ketch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/settings"
	"golang.org/x/net/http/httpguts"
)

// Connector is Ketch's Forwarder protocol: Ketch pushes DeleteRequests to POST /v1/ketch, and
// each request's callbacks are told its final status.
type Connector struct{}

// Info: requests are stored as "ketch:" and Ketch's metadata.uid.
func (Connector) Info() connector.Info { return connector.Info{Name: "ketch", RefPrefix: "ketch:"} }

// Declare declares KETCH_AUTH_HEADER, KETCH_AUTH_VALUE and KETCH_IDENTITY_SPACE.
func (c Connector) Declare(s *settings.Set) func() *connector.Parts {
	var (
		header = s.Add("KETCH_AUTH_HEADER", "Authorization", "the header Ketch is configured to send with every request to POST /v1/ketch")
		value  = s.Secret("KETCH_AUTH_VALUE", "the value Ketch sends in KETCH_AUTH_HEADER; the Ketch door is off when not set", "file holding KETCH_AUTH_VALUE")
		space  = s.Add("KETCH_IDENTITY_SPACE", "", "the identitySpace of the Ketch identity that is Knot's external_user_id (required with KETCH_AUTH_VALUE)")
		allow  = s.Add("KETCH_CALLBACK_ALLOW", "", "callback hosts that may be called though they are not public https addresses: host, host:port or CIDR, separated by commas (plain http included); for tests and self-hosted setups. Without it a callback must be https to a public address, checked on the address dialled")
	)
	return func() *connector.Parts {
		d := &door{info: c.Info(), header: s.String(header), value: s.Verbatim(value), space: s.String(space)}
		out, err := connector.ParseOutbound(allow.Name(), s.String(allow))
		if err != nil {
			s.SetErr(err)
			return nil
		}
		d.outbound = out
		switch {
		case d.value == "":
			return nil
		case d.space == "":
			s.Fail(space, "is required with KETCH_AUTH_VALUE: it names the identity that is Knot's external_user_id")
		case !httpguts.ValidHeaderFieldName(d.header):
			s.Fail(header, "%q is not an HTTP header name", d.header)
		}
		if s.Err() != nil {
			return nil
		}
		return &connector.Parts{Door: d, Deliverer: deliverer{client: out.Client()}, OnBy: "KETCH_AUTH_VALUE"}
	}
}

// report is what a Ketch report keeps until delivered: the callback (its headers are Ketch's
// credential) and the request's metadata, which every event repeats.
type report struct {
	Callback Callback `json:"callback"`
	Metadata Metadata `json:"metadata"`
}

type door struct {
	info                 connector.Info
	header, value, space string
	outbound             connector.Outbound // where callbacks may go
}

func (d *door) Routes(in connector.Intake, log *slog.Logger) map[string]http.Handler {
	return map[string]http.Handler{"POST /v1/ketch": handler{door: d, in: in, log: log}}
}

type handler struct {
	*door
	in  connector.Intake
	log *slog.Logger
}

// ServeHTTP is POST /v1/ketch: the Ketch Forwarder protocol's DeleteRequest.
func (h handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !connector.EqualSecret(r.Header.Get(h.header), h.value) {
		h.in.Refused(connector.RefusedUnauthenticated, "")
		connector.CloseAfter(w) // nothing past the headers is read
		connector.WriteRaw(w, http.StatusUnauthorized, ErrorBody(nil, http.StatusUnauthorized, ErrorForbidden,
			"missing or wrong "+h.header+" header"))
		return
	}
	body, ok := connector.ReadBody(w, r, func() {
		h.in.Refused(connector.RefusedTooLarge, "")
		connector.WriteRaw(w, http.StatusRequestEntityTooLarge, ErrorBody(nil, http.StatusRequestEntityTooLarge, ErrorInvalid, "the body is larger than 64 KiB"))
	})
	if !ok {
		return
	}
	now := time.Now()
	req, err := ParseDeleteRequest(body, h.space)
	if err != nil {
		var re *RequestError
		if errors.As(err, &re) {
			// A denial for want of an identity reads like an answer to Ketch; said here, a
			// KETCH_IDENTITY_SPACE that names no identity Ketch sends is seen.
			if re.Kind == Unidentified && re.Metadata != nil {
				// Final for Ketch, which closes the request: keep its record.
				if err := h.in.Denied(r.Context(), re.Metadata.UID, connector.RefusedUnidentified, re.Field); err != nil {
					h.log.Warn("the record of a denied Ketch request could not be kept; Ketch is told all the same", "err", err)
				}
			} else {
				h.in.Refused(connector.RefusedInvalid, re.Field)
			}
			status, answer := re.Answer(now)
			connector.WriteRaw(w, status, answer)
			return
		}
		h.in.Refused(connector.RefusedInvalid, "")
		connector.WriteRaw(w, http.StatusBadRequest, ErrorBody(nil, http.StatusBadRequest, ErrorInvalid, err.Error()))
		return
	}
	for i, cb := range req.Callbacks {
		if err := h.outbound.CheckURL(cb.URL); err != nil {
			field := fmt.Sprintf("request.callbacks[%d].url", i)
			h.in.Refused(connector.RefusedInvalid, field)
			connector.WriteRaw(w, http.StatusBadRequest, ErrorBody(&req.Metadata, http.StatusBadRequest, ErrorInvalid, field+": "+err.Error()))
			return
		}
	}
	nr := connector.Request{ID: req.Metadata.UID, ExternalUserID: req.ExternalUserID, DueAt: req.DueAt,
		IDField: "metadata.uid", UserField: "request.identities"}
	for _, cb := range req.Callbacks {
		creds, err := json.Marshal(report{Callback: cb, Metadata: req.Metadata})
		if err != nil {
			connector.WriteRaw(w, http.StatusInternalServerError, ErrorBody(&req.Metadata, http.StatusInternalServerError, ErrorInternal, "cannot keep the callback"))
			return
		}
		nr.Reports = append(nr.Reports, connector.NewReport{Lane: laneOf(cb.URL), Credentials: creds})
	}
	got, err := h.in.Submit(r.Context(), nr)
	if err != nil {
		h.unavailable(w, r, err)
		return
	}
	a := got[0]
	switch a.Admission {
	case connector.Refused:
		connector.WriteRaw(w, http.StatusBadRequest, ErrorBody(&req.Metadata, http.StatusBadRequest, ErrorInvalid, a.Err.Error()))
		return
	case connector.Conflict:
		connector.WriteRaw(w, http.StatusConflict, ErrorBody(&req.Metadata, http.StatusConflict, ErrorConflict,
			"metadata.uid: already used by a request for another identity"))
		return
	}
	// A request just stored is in progress, even if it was carried out before this answer:
	// its callbacks tell the outcome, and Ketch takes no event after a final answer.
	status, reason := StatusInProgress, Reason("")
	expected := a.Record.DueAt
	if a.Admission == connector.Duplicate && a.Record.Finished() {
		status, reason = FinalEvent(a.Record.Outcome)
		expected = *a.Record.CompletedAt
	}
	connector.WriteRaw(w, http.StatusOK, DeleteResponseBody(req.Metadata, status, reason, strconv.FormatInt(a.Record.ID, 10), expected))
}

// unavailable answers a request the database could not take: nothing was stored, and Ketch
// should try again.
func (h handler) unavailable(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the sender went away
	}
	h.log.Error("a door could not reach the database; the sender is told to retry", "door", h.info.DoorName(), "err", err)
	w.Header().Set("Retry-After", connector.RetryLater)
	connector.WriteRaw(w, http.StatusServiceUnavailable, ErrorBody(nil, http.StatusServiceUnavailable, ErrorUnavailable, "the database is unavailable; try again (repeating the same request is safe)"))
}

// laneOf is a callback's lane: its host, so that one hung callback host holds back only the
// reports to it.
func laneOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

// deliverer calls callbacks through the Outbound policy's client.
type deliverer struct{ client *http.Client }

// Deliver tells one callback the request's final status.
func (d deliverer) Deliver(ctx context.Context, r connector.Report) connector.Delivery {
	var rep report
	if err := json.Unmarshal(r.Credentials, &rep); err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: errors.New("ketch: the stored callback cannot be read")}
	}
	status, reason := FinalEvent(r.Outcome)
	return Notify(ctx, d.client, rep.Callback, rep.Metadata, Event{
		Status: status, Reason: reason, RequestID: strconv.FormatInt(r.RequestID, 10), ExpectedCompletion: r.CompletedAt,
	})
}
