package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/connector/transcend"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/worker"
)

// doorsConfig is how requests come in besides the table and `enqueue`, and where their outcomes
// go: the HTTP API and Ketch on API_LISTEN_ADDR, Transcend pulled. Each is off until set.
type doorsConfig struct {
	apiAddr  string
	apiToken string // the generic API's bearer token; "" turns that door off

	webhookURL, webhookSecret string

	ketchHeader, ketchValue, ketchSpace string // ketchValue "" turns the Ketch door off

	transcend     transcend.Config // BaseURL "" turns the puller off
	transcendPoll time.Duration
}

func (d doorsConfig) api() bool          { return d.apiToken != "" }
func (d doorsConfig) ketch() bool        { return d.ketchValue != "" }
func (d doorsConfig) webhook() bool      { return d.webhookURL != "" }
func (d doorsConfig) transcendOn() bool  { return d.transcend.BaseURL != "" }
func (d doorsConfig) listening() bool    { return d.apiAddr != "" && (d.api() || d.ketch()) }
func (d doorsConfig) anyReporting() bool { return d.webhook() || d.ketch() || d.transcendOn() }

// declareDoors declares the doors' settings on s and returns what reads them once s is parsed.
func declareDoors(s *settingSet) func() doorsConfig {
	var (
		apiAddr       = s.add("API_LISTEN_ADDR", "", "address serving the HTTP doors (POST /v1/erasure-requests, GET /v1/erasure-requests/{ref}, POST /v1/ketch), apart from LISTEN_ADDR; nothing is served there until API_TOKEN or KETCH_AUTH_VALUE turns a door on")
		apiToken      = s.secret("API_TOKEN", "bearer token that POST and GET /v1/erasure-requests require; the generic API is off when not set", "file holding API_TOKEN")
		webhookURL    = s.add("REPORT_WEBHOOK_URL", "", "where the outcomes of requests that came through the HTTP API are sent, as Standard Webhooks messages; none are sent when not set")
		webhookSecret = s.secret("REPORT_WEBHOOK_SECRET", "whsec_ and base64: the key that signs the outcome webhooks (required with REPORT_WEBHOOK_URL)", "file holding REPORT_WEBHOOK_SECRET")
		ketchHeader   = s.add("KETCH_AUTH_HEADER", "Authorization", "the header Ketch is configured to send with every request to POST /v1/ketch")
		ketchValue    = s.secret("KETCH_AUTH_VALUE", "the value Ketch sends in KETCH_AUTH_HEADER; the Ketch door is off when not set", "file holding KETCH_AUTH_VALUE")
		ketchSpace    = s.add("KETCH_IDENTITY_SPACE", "", "the identitySpace of the Ketch identity that is Knot's external_user_id (required with KETCH_AUTH_VALUE)")
		tURL          = s.add("TRANSCEND_URL", "", "the Sombra gateway to pull pending erasures from, e.g. https://multi-tenant.sombra.transcend.io; the Transcend puller is off when not set")
		tKey          = s.secret("TRANSCEND_API_KEY", "Transcend API key scoped to the data silo (required with TRANSCEND_URL)", "file holding TRANSCEND_API_KEY")
		tSombra       = s.secret("TRANSCEND_SOMBRA_KEY", "the internal key of a self-hosted Sombra, sent as x-sombra-authorization; not needed for the multi-tenant gateway", "file holding TRANSCEND_SOMBRA_KEY")
		tSilo         = s.add("TRANSCEND_DATA_SILO_ID", "", "the data silo whose pending erasures are pulled (required with TRANSCEND_URL)")
		tPoll         = s.add("TRANSCEND_POLL_INTERVAL", "1m", "how often one replica pulls Transcend's pending erasures")
	)
	return func() doorsConfig {
		d := doorsConfig{
			apiAddr:       s.str(apiAddr),
			apiToken:      s.verbatim(apiToken),
			webhookURL:    s.str(webhookURL),
			webhookSecret: s.verbatim(webhookSecret),
			ketchHeader:   s.str(ketchHeader),
			ketchValue:    s.verbatim(ketchValue),
			ketchSpace:    s.str(ketchSpace),
			transcend: transcend.Config{
				BaseURL: s.str(tURL), APIKey: s.verbatim(tKey), SombraKey: s.verbatim(tSombra), DataSiloID: s.str(tSilo),
			},
			transcendPoll: s.duration(tPoll),
		}
		switch {
		case d.api() && d.apiAddr == "":
			s.fail(apiToken, "is set but API_LISTEN_ADDR is not: the HTTP API would not be served")
		case d.ketch() && d.apiAddr == "":
			s.fail(ketchValue, "is set but API_LISTEN_ADDR is not: Ketch would have nowhere to push")
		case d.webhook() && d.webhookSecret == "":
			s.fail(webhookSecret, "is required with REPORT_WEBHOOK_URL: outcome webhooks are always signed")
		case d.webhookSecret != "" && !d.webhook():
			s.fail(webhookURL, "is required with REPORT_WEBHOOK_SECRET")
		case d.webhook() && !d.api():
			s.fail(webhookURL, "is set but API_TOKEN is not: it reports the outcomes of the HTTP API's requests, and that door is off")
		case d.ketch() && d.ketchSpace == "":
			s.fail(ketchSpace, "is required with KETCH_AUTH_VALUE: it names the identity that is Knot's external_user_id")
		case d.ketch() && !validHeaderName(d.ketchHeader):
			s.fail(ketchHeader, "%q is not an HTTP header name", d.ketchHeader)
		}
		if s.err == nil && d.webhook() {
			if _, err := webhook.NewSender(d.webhookURL, d.webhookSecret, nil); err != nil {
				s.err = err
			}
		}
		if s.err == nil && (d.transcendOn() || d.transcend.APIKey != "" || d.transcend.DataSiloID != "") {
			if _, err := transcend.New(d.transcend); err != nil {
				s.err = err
			}
		}
		return d
	}
}

func validHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for _, c := range h {
		if c > 127 || !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
			strings.ContainsRune("!#$%&'*+.^`|~", c)) {
			return false
		}
	}
	return true
}

// Request refs of the connectors: a system's own id, prefixed, so that ids of two systems never
// meet. The HTTP API refuses refs with these prefixes.
const (
	ketchRefPrefix     = "ketch:"
	transcendRefPrefix = "transcend:"
)

// deliverers makes the Deliverer of every connector that is configured.
func (d doorsConfig) deliverers(client *http.Client) (map[string]worker.Deliverer, error) {
	out := map[string]worker.Deliverer{}
	if d.webhook() {
		s, err := webhook.NewSender(d.webhookURL, d.webhookSecret, client)
		if err != nil {
			return nil, err
		}
		out[queue.ConnectorWebhook] = webhookDeliverer{s}
	}
	if d.ketch() {
		out[queue.ConnectorKetch] = ketchDeliverer{client}
	}
	if d.transcendOn() {
		cfg := d.transcend
		cfg.HTTP = client
		c, err := transcend.New(cfg)
		if err != nil {
			return nil, err
		}
		out[queue.ConnectorTranscend] = transcendDeliverer{c}
	}
	return out, nil
}

type webhookDeliverer struct{ s *webhook.Sender }

func (w webhookDeliverer) Deliver(ctx context.Context, r queue.Report) connector.Delivery {
	return w.s.Send(ctx, "msg_"+strconv.FormatInt(r.ID, 10), webhook.Outcome{
		RequestRef: r.RequestRef, Outcome: r.Outcome, ErrorCode: r.ErrorCode, CompletedAt: r.CompletedAt,
	}, time.Now())
}

// ketchReport is what a Ketch report keeps until delivered: the callback (its headers are
// Ketch's credential) and the request's metadata, which every event repeats.
type ketchReport struct {
	Callback ketch.Callback `json:"callback"`
	Metadata ketch.Metadata `json:"metadata"`
}

type ketchDeliverer struct{ client *http.Client }

func (k ketchDeliverer) Deliver(ctx context.Context, r queue.Report) connector.Delivery {
	var rep ketchReport
	if err := json.Unmarshal(r.Credentials, &rep); err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: errors.New("ketch: the stored callback cannot be read")}
	}
	status, reason := ketch.FinalEvent(r.Outcome)
	return ketch.Notify(ctx, k.client, rep.Callback, rep.Metadata, ketch.Event{
		Status: status, Reason: reason, RequestID: strconv.FormatInt(r.RequestID, 10), ExpectedCompletion: r.CompletedAt,
	})
}

// transcendReport is what a Transcend report keeps until delivered.
type transcendReport struct {
	Nonce string `json:"nonce"`
}

type transcendDeliverer struct{ c *transcend.Client }

func (t transcendDeliverer) Deliver(ctx context.Context, r queue.Report) connector.Delivery {
	var rep transcendReport
	if err := json.Unmarshal(r.Credentials, &rep); err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: errors.New("transcend: the stored nonce cannot be read")}
	}
	return t.c.Report(ctx, rep.Nonce, r.ExternalUserID, r.Outcome, r.ErrorCode)
}

// transcendPuller is the Transcend duty: page through the data silo's pending erasures and
// enqueue each once, with its nonce kept for the report.
type transcendPuller struct {
	c        *transcend.Client
	q        *queue.Queue
	log      *slog.Logger
	pageSize int
	pulled   func(admission queue.Admission)
}

func (p transcendPuller) pull(ctx context.Context) error {
	for offset := 0; ; {
		page, err := p.c.PendingPage(ctx, p.pageSize, offset)
		if err != nil {
			var pe *transcend.PullError
			if errors.As(err, &pe) && pe.Result == connector.Unauthorized {
				return fmt.Errorf("Transcend refused TRANSCEND_API_KEY (or TRANSCEND_SOMBRA_KEY): %w", err)
			}
			return err
		}
		for _, bad := range page.Invalid {
			p.log.Warn("Transcend sent a pending erasure that cannot be carried out; it stays pending there", "item", bad.Error())
		}
		now := time.Now()
		reqs := make([]queue.NewRequest, 0, len(page.Items))
		for _, it := range page.Items {
			nonce, _ := json.Marshal(transcendReport{Nonce: it.Nonce})
			r := queue.NewRequest{
				RequestRef:     transcendRefPrefix + it.DataSiloID + ":" + it.RequestID,
				ExternalUserID: it.Identifier,
				Reports:        []queue.NewReport{{Connector: queue.ConnectorTranscend, Credentials: nonce}},
			}
			if it.HasDeadline {
				r.DueAt = transcend.DueAt(now, it.DaysUntilOverdue)
			}
			reqs = append(reqs, r)
		}
		res, err := p.q.Enqueue(ctx, reqs)
		if err != nil {
			return err
		}
		for i, r := range res {
			if r.Admission == queue.Rejected {
				p.log.Warn("a pending erasure from Transcend was refused; it stays pending there",
					"request_ref", reqs[i].RequestRef, "reason", r.Err)
			}
			if p.pulled != nil {
				p.pulled(r.Admission)
			}
		}
		if page.Len() < p.pageSize {
			return nil
		}
		offset += page.Len()
	}
}
