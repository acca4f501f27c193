package transcend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/settings"
)

// Connector is Transcend's data silo integration: pending erasures are pulled from a Sombra
// gateway, and each is reported back with its nonce.
type Connector struct{}

// Info: requests are stored as "transcend:", the data silo id, ":" and the request id.
func (Connector) Info() connector.Info {
	return connector.Info{Name: "transcend", RefPrefix: "transcend:"}
}

// Declare declares TRANSCEND_URL, TRANSCEND_API_KEY, TRANSCEND_SOMBRA_KEY,
// TRANSCEND_DATA_SILO_ID and TRANSCEND_POLL_INTERVAL.
func (c Connector) Declare(s *settings.Set) func() *connector.Parts {
	var (
		url    = s.Add(settingURL, "", "the Sombra gateway to pull pending erasures from, e.g. https://multi-tenant.sombra.transcend.io; the Transcend puller is off when not set")
		key    = s.Secret(settingAPIKey, "Transcend API key scoped to the data silo (required with TRANSCEND_URL)", "file holding TRANSCEND_API_KEY")
		sombra = s.Secret(settingSombraKey, "the internal key of a self-hosted Sombra, sent as x-sombra-authorization; not needed for the multi-tenant gateway", "file holding TRANSCEND_SOMBRA_KEY")
		silo   = s.Add(settingDataSiloID, "", "the data silo whose pending erasures are pulled (required with TRANSCEND_URL)")
		poll   = s.Add("TRANSCEND_POLL_INTERVAL", "1m", "how often one replica pulls Transcend's pending erasures")
	)
	return func() *connector.Parts {
		cfg := Config{BaseURL: s.String(url), APIKey: s.Verbatim(key), SombraKey: s.Verbatim(sombra), DataSiloID: s.String(silo)}
		interval := s.Duration(poll)
		if s.Err() != nil || (cfg.BaseURL == "" && cfg.APIKey == "" && cfg.DataSiloID == "") {
			return nil
		}
		client, err := New(cfg)
		if err != nil {
			s.SetErr(err)
			return nil
		}
		// A report has no timeout of its own: the reporter bounds each delivery (REPORT_TIMEOUT).
		cfg.HTTP = &http.Client{}
		reporter, err := New(cfg)
		if err != nil {
			s.SetErr(err)
			return nil
		}
		return &connector.Parts{
			Puller:    &puller{c: client, info: c.Info(), interval: interval, pageSize: MaxPageSize},
			Deliverer: deliverer{reporter},
		}
	}
}

// report is what a Transcend report keeps until delivered: the item's nonce, and the identifier
// that names the person in the deprecated profiles, which older Sombra versions still need. The
// identifier is the report's own copy of the raw id: the request is pseudonymised on time
// whatever its report does, and the queue deletes this copy when the report fails or gives up.
type report struct {
	Nonce      string `json:"nonce"`
	Identifier string `json:"identifier,omitempty"` // connector.IdentifierCredential
}

type deliverer struct{ c *Client }

// Deliver reports one item's outcome with its nonce, naming the person by the report's own copy
// of the identifier. A report stored before reports kept that copy, or one that lost it when it
// failed and was requeued, falls back to the request's raw id, and leaves the profiles out once
// the request is pseudonymised (ExternalUserID is then empty): Sombra 7.199.0 and later, and the
// multi-tenant gateway, take the identifier from the nonce.
func (d deliverer) Deliver(ctx context.Context, r connector.Report) connector.Delivery {
	var rep report
	if err := json.Unmarshal(r.Credentials, &rep); err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: errors.New("transcend: the stored nonce cannot be read")}
	}
	identifier := rep.Identifier
	if identifier == "" {
		identifier = r.ExternalUserID
	}
	return d.c.Report(ctx, rep.Nonce, identifier, r.Outcome, r.ErrorCode)
}

// puller pages through the data silo's pending erasures and takes each in once, with its
// nonce kept for the report.
type puller struct {
	c        *Client
	info     connector.Info
	interval time.Duration
	pageSize int
}

func (p *puller) PullInterval() time.Duration { return p.interval }

func (p *puller) Pull(ctx context.Context, in connector.Intake, log *slog.Logger) error {
	for offset := 0; ; {
		page, err := p.c.PendingPage(ctx, p.pageSize, offset)
		if err != nil {
			var pe *PullError
			if errors.As(err, &pe) && pe.Result == connector.Unauthorized {
				return fmt.Errorf("Transcend refused TRANSCEND_API_KEY (or TRANSCEND_SOMBRA_KEY): %w", err)
			}
			return err
		}
		for _, bad := range page.Invalid {
			in.Refused(connector.RefusedInvalid, bad.Field)
			log.Warn("Transcend sent a pending erasure that cannot be carried out; it stays pending there", "item", bad.Error())
		}
		now := time.Now()
		reqs := make([]connector.Request, 0, len(page.Items))
		for _, it := range page.Items {
			nonce, _ := json.Marshal(report{Nonce: it.Nonce, Identifier: it.Identifier})
			r := connector.Request{
				ID: it.DataSiloID + ":" + it.RequestID, ExternalUserID: it.Identifier,
				IDField: "requestId", UserField: "identifier",
				Reports: []connector.NewReport{{Credentials: nonce}},
				// A request of several identifiers lists an item for each, with its own nonce:
				// each is carried out and reported, the first under the request's ref and the
				// others under ref#2, ref#3, ...
				Several: true,
			}
			if it.HasDeadline {
				r.DueAt = DueAt(now, it.DaysUntilOverdue)
			}
			reqs = append(reqs, r)
		}
		got, err := in.Submit(ctx, reqs...)
		if err != nil {
			return err
		}
		for i, a := range got {
			switch a.Admission {
			case connector.Refused:
				log.Warn("a pending erasure from Transcend was refused; it stays pending there",
					"request_ref", p.info.RefPrefix+reqs[i].ID, "reason", a.Err)
			case connector.Conflict:
				log.Warn(fmt.Sprintf("a pending erasure from Transcend is the request's identifier number %d or more, beyond what the worker takes; it stays pending there", connector.MaxPeople+1),
					"request_ref", p.info.RefPrefix+reqs[i].ID)
			}
		}
		if page.Len() < p.pageSize {
			return nil
		}
		offset += page.Len()
	}
}
