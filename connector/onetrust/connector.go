// Package onetrust is OneTrust's Privacy Automation as a connector: a customer's Integrations
// workflow, triggered by "Data Subject Request System Subtask Created", pushes each system
// subtask to POST /v1/onetrust/subtasks, and the subtask is told how the erasure went through
// OneTrust's subtask API (PUT /api/datasubject/v2/subtasks/{subtaskId}/status): IN_PROGRESS as
// soon as the request is stored, then COMPLETED or FAILED.
//
// Reports authenticate with an OAuth 2 client of ours (client credentials, scopes DSAR_WRITE and DSAR_READ):
// one access token serves every report, fetched again before it expires or when OneTrust
// refuses it. The token lives in memory only. Nothing this package returns or logs holds the
// token, the client's id or secret, or an external_user_id.
package onetrust

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/settings"
)

// The settings, named in every error they cause.
const (
	settingInboundToken = "ONETRUST_INBOUND_TOKEN"
	settingURL          = "ONETRUST_URL"
	settingClientID     = "ONETRUST_CLIENT_ID"
	settingClientSecret = "ONETRUST_CLIENT_SECRET"
	settingReportRate   = "ONETRUST_REPORT_RATE"
)

// DefaultReportRate is the reports a second one reporter sends to OneTrust by default. OneTrust
// allows an account 20,000 calls a minute and 200,000 an hour; the hourly limit is the one a
// sustained load meets (55.5 a second). 50 a second stays under both, with room for the token
// fetches and for the customer's other integrations only if they are light: lower it with
// several replicas or a busy account.
const DefaultReportRate = 50

// Connector is OneTrust: subtasks pushed by a workflow, outcomes put to the subtask's status.
type Connector struct{}

// Info: requests are stored as "onetrust:" and the subtask id.
func (Connector) Info() connector.Info {
	return connector.Info{Name: "onetrust", RefPrefix: "onetrust:"}
}

// Declare declares ONETRUST_INBOUND_TOKEN, ONETRUST_URL, ONETRUST_CLIENT_ID,
// ONETRUST_CLIENT_SECRET and ONETRUST_REPORT_RATE.
func (c Connector) Declare(s *settings.Set) func() *connector.Parts {
	var (
		inbound = s.Secret(settingInboundToken, "bearer token the OneTrust workflow's HTTP action sends to POST /v1/onetrust/subtasks; the OneTrust door is off when not set", "file holding "+settingInboundToken)
		base    = s.Add(settingURL, "", "the OneTrust host the subtask statuses are put to, e.g. https://app-eu.onetrust.com (required with "+settingInboundToken+")")
		id      = s.Add(settingClientID, "", "client id of the OneTrust OAuth 2 client (client credentials, scopes DSAR_WRITE and DSAR_READ) that reports use (required with "+settingInboundToken+")")
		secret  = s.Secret(settingClientSecret, "client secret of that OAuth 2 client (required with "+settingInboundToken+")", "file holding "+settingClientSecret)
		pace    = s.Add(settingReportRate, fmt.Sprint(DefaultReportRate), "status updates a second each replica sends OneTrust at most; OneTrust allows an account 200,000 an hour (55 a second) and 20,000 a minute, shared by the replicas and the account's other integrations")
	)
	return func() *connector.Parts {
		token, u, cid, csec := s.Verbatim(inbound), s.String(base), s.String(id), s.Verbatim(secret)
		perSecond := s.Number(pace)
		if s.Err() != nil {
			return nil
		}
		if token == "" {
			for _, st := range []*settings.Setting{base, id, secret} {
				if st.Raw() != "" {
					s.Fail(st, "is set but %s is not: reports go only to subtasks that came through the OneTrust door, which is off", settingInboundToken)
					return nil
				}
			}
			return nil
		}
		switch {
		case u == "":
			s.Fail(base, "is required with %s: it is where the subtasks' statuses are put", settingInboundToken)
		case cid == "":
			s.Fail(id, "is required with %s: reports authenticate with OneTrust's OAuth 2 client credentials", settingInboundToken)
		case csec == "":
			s.Fail(secret, "is required with %s (or %s_FILE): reports authenticate with OneTrust's OAuth 2 client credentials", settingInboundToken, settingClientSecret)
		case hasSpaceOrControl(token):
			s.Fail(inbound, "contains whitespace or control characters (a trailing newline from a file?)")
		case hasSpaceOrControl(cid):
			s.Fail(id, "contains whitespace or control characters")
		case hasSpaceOrControl(csec):
			s.Fail(secret, "contains whitespace or control characters (a trailing newline from a file?)")
		case perSecond > 20_000.0/60:
			s.Fail(pace, "%v a second is above OneTrust's limit of 20,000 a minute", perSecond)
		}
		if s.Err() != nil {
			return nil
		}
		b, err := checkURL(u)
		if err != nil {
			s.Fail(base, "%v", err)
			return nil
		}
		// No timeout of its own: the reporter bounds each delivery (REPORT_TIMEOUT).
		cl := NewClient(b, cid, csec, &http.Client{})
		return &connector.Parts{
			Door:      &door{info: c.Info(), token: token},
			Deliverer: deliverer{c: cl, limit: rate.Limit(perSecond)},
			OnBy:      settingInboundToken,
		}
	}
}

// checkURL reads ONETRUST_URL: an absolute http or https URL of a host, and nothing that would
// be sent elsewhere (user info, query, fragment). A trailing slash is dropped.
func checkURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("is not a URL")
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		return "", errors.New("must be an absolute https URL such as https://app-eu.onetrust.com")
	case u.User != nil, u.RawQuery != "", u.ForceQuery, u.Fragment != "":
		return "", errors.New("must hold no user info, query or fragment: the client credentials are their own settings")
	}
	return strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), nil
}

func hasSpaceOrControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f })
}
