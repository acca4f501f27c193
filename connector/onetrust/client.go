package onetrust

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

// Statuses of OneTrust's UpdateSubtaskStatusRequest that we send.
const (
	StatusInProgress = "IN_PROGRESS"
	StatusCompleted  = "COMPLETED"
	StatusFailed     = "FAILED"
)

const (
	tokenPath = "/api/access/v1/oauth/token"
	// statusPath is followed by the subtask id and "/status"; getting the subtask is the same
	// path without "/status".
	subtaskPath = "/api/datasubject/v2/subtasks/"
	// maxAnswer bounds what is read of an answer.
	maxAnswer = 64 << 10
)

// Client puts subtask statuses to one OneTrust host with one OAuth 2 client. It is safe for
// concurrent use: its deliveries share one access token.
type Client struct {
	base       string
	id, secret string
	hc         *http.Client
	now        func() time.Time

	// sem is held by whoever reads or fetches the token: one fetch at a time, and a caller that
	// waits for it can give up with its context.
	sem     chan struct{}
	token   string
	renewAt time.Time // zero: until OneTrust refuses it
}

// NewClient returns a client of the host base (https://app-eu.onetrust.com) with the OAuth 2
// client id and secret; hc nil means http.DefaultClient's settings. Redirects are never followed:
// net/http would carry the token wherever one points.
func NewClient(base, id, secret string, hc *http.Client) *Client {
	c := http.Client{}
	if hc != nil {
		c = *hc
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{base: strings.TrimRight(base, "/"), id: id, secret: secret, hc: &c, now: time.Now, sem: make(chan struct{}, 1)}
}

// Update is one status update of one subtask.
type Update struct {
	SubtaskID string
	Status    string // StatusInProgress, StatusCompleted or StatusFailed
	Comment   string
}

// Put sends u, with the shared access token, fetched first if there is none or it is about to
// expire. A 401 fetches a new token and sends u once more with it; a second 401 is
// connector.Unauthorized. A 400 is checked against the subtask: one that already has u's status,
// or is closed, counts as connector.Closed (a repeat after a lost answer, or a subtask a person
// closed meanwhile), since OneTrust documents no answer for an update of a closed subtask.
func (c *Client) Put(ctx context.Context, u Update) connector.Delivery {
	body, err := json.Marshal(map[string]string{"status": u.Status, "comment": u.Comment})
	if err != nil {
		return rejected(errors.New("cannot encode the status update"))
	}
	path := subtaskPath + url.PathEscape(u.SubtaskID) + "/status"
	token, d := c.accessToken(ctx, "")
	if d != nil {
		return *d
	}
	resp, err := c.call(ctx, http.MethodPut, path, token, body)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		resp.Body.Close()
		// Expired early or revoked: one new token, one more try.
		if token, d = c.accessToken(ctx, token); d != nil {
			return *d
		}
		resp, err = c.call(ctx, http.MethodPut, path, token, body)
	}
	if err != nil {
		d := connector.FromError(ctx, err)
		d.Err = fmt.Errorf("onetrust status update: %w", d.Err)
		return d
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusOK:
		// The documented answer is a boolean; false would say the status was not changed.
		if strings.TrimSpace(string(answer)) == "false" {
			return connector.Delivery{Result: connector.Rejected, HTTPStatus: http.StatusOK,
				Err: errors.New("onetrust status update: OneTrust answered false: the status was not changed")}
		}
	case http.StatusBadRequest:
		if d := c.checkSubtask(ctx, token, u); d != nil {
			return *d
		}
	}
	d = new(connector.Delivery)
	*d = connector.FromAnswer(resp.StatusCode, resp.Header, c.now())
	switch {
	case d.Err == nil:
	case d.Result == connector.Unauthorized:
		d.Err = fmt.Errorf("onetrust status update: %w twice, with a new access token: check %s and %s", d.Err, settingClientID, settingClientSecret)
	case resp.StatusCode == http.StatusForbidden:
		// Our client lacks the scope: every report would be refused alike, so pause the lane.
		d.Result = connector.Unauthorized
		d.Err = fmt.Errorf("onetrust status update: %w: the OAuth 2 client of %s needs the DSAR_WRITE scope", d.Err, settingClientID)
	case d.Result == connector.RateLimited:
		d.RetryAfter = max(d.RetryAfter, periodWait(resp.Header))
		d.Err = fmt.Errorf("onetrust status update: %w%s", d.Err, limitNote(resp.Header))
	default:
		d.Err = fmt.Errorf("onetrust status update: %w", d.Err)
	}
	return *d
}

// periodWait is how long a 429 without a usable Retry-After is waited out: the rest of a
// minute, or ten minutes (connector.MaxRetryAfter) for the hourly limit.
func periodWait(h http.Header) time.Duration {
	if h.Get("Retry-After") != "" {
		return 0
	}
	switch strings.ToUpper(h.Get("ot-period")) {
	case "MINUTE":
		return time.Minute
	case "HOUR":
		return connector.MaxRetryAfter
	}
	return 0
}

// limitNote says which of OneTrust's limits a 429 met, from its ot-* headers, for the operator
// who reads the report's last error.
func limitNote(h http.Header) string {
	period, allowed, made := h.Get("ot-period"), h.Get("ot-requests-allowed"), h.Get("ot-request-made")
	if period == "" || !isDigits(allowed) || !isDigits(made) || !isWord(period) {
		return ""
	}
	return fmt.Sprintf(" (OneTrust's limit: %s a %s, %s made; lower %s if it recurs)", allowed, strings.ToLower(period), made, settingReportRate)
}

func isDigits(s string) bool {
	return s != "" && len(s) <= 12 && strings.Trim(s, "0123456789") == ""
}

func isWord(s string) bool {
	return len(s) <= 16 && strings.Trim(strings.ToUpper(s), "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
}

// checkSubtask gets the subtask after a 400 to its update u. It returns connector.Closed when
// the subtask needs no more from u (it has u's status, or a final one), a retry when the get
// had no answer of its own, and nil when the 400 stands.
func (c *Client) checkSubtask(ctx context.Context, token string, u Update) *connector.Delivery {
	resp, err := c.call(ctx, http.MethodGet, subtaskPath+url.PathEscape(u.SubtaskID), token, nil)
	if err != nil {
		d := connector.FromError(ctx, err)
		d.Err = fmt.Errorf("onetrust status update refused (400); getting the subtask: %w", d.Err)
		return &d
	}
	defer resp.Body.Close()
	if d := connector.FromAnswer(resp.StatusCode, resp.Header, c.now()); d.Result == connector.Retry || d.Result == connector.RateLimited {
		d.Err = fmt.Errorf("onetrust status update refused (400); getting the subtask: %w", d.Err)
		return &d
	}
	var st struct {
		Status string `json:"status"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&st) != nil {
		return nil
	}
	// OneTrust writes statuses as IN_PROGRESS in some answers and "In Progress" in others.
	switch strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(st.Status), " ", "_")) {
	case u.Status, StatusCompleted, StatusFailed, "REJECTED":
		return &connector.Delivery{Result: connector.Closed, HTTPStatus: http.StatusBadRequest}
	}
	return nil
}

func (c *Client) call(ctx context.Context, method, path, token string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "erasure-worker")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.hc.Do(req)
}

// accessToken returns the shared token, fetching one when there is none, when it is about to
// expire, or when it is refused, the one the caller was refused: a caller refused a token
// that another has already replaced gets the new one without a fetch. A failure is the
// Delivery to return.
func (c *Client) accessToken(ctx context.Context, refused string) (string, *connector.Delivery) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		d := connector.FromError(ctx, ctx.Err())
		return "", &d
	}
	defer func() { <-c.sem }()
	fresh := c.token != "" && c.token != refused && (c.renewAt.IsZero() || c.now().Before(c.renewAt))
	if fresh {
		return c.token, nil
	}
	c.token = ""
	token, lifetime, d := c.fetch(ctx)
	if d != nil {
		return "", d
	}
	c.token, c.renewAt = token, time.Time{}
	if lifetime > 0 {
		// Renewed a little before it expires, so that no call carries a token that dies on the way.
		c.renewAt = c.now().Add(lifetime - min(time.Minute, lifetime/5))
	}
	return token, nil
}

// fetch asks the token endpoint for a token with the client credentials.
func (c *Client) fetch(ctx context.Context) (string, time.Duration, *connector.Delivery) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {c.id}, "client_secret": {c.secret}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+tokenPath, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, ptr(rejected(errors.New("cannot build the token request")))
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "erasure-worker")
	resp, err := c.hc.Do(req)
	if err != nil {
		d := connector.FromError(ctx, err)
		d.Err = fmt.Errorf("onetrust access token: %w", d.Err)
		return "", 0, &d
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
		d := connector.FromAnswer(resp.StatusCode, resp.Header, c.now())
		if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			// The client credentials are ours: every report would fail alike.
			d.Result = connector.Unauthorized
			d.Err = fmt.Errorf("onetrust access token: %w: OneTrust refused the client credentials; check %s and %s", d.Err, settingClientID, settingClientSecret)
		} else {
			d.Err = fmt.Errorf("onetrust access token: %w", d.Err)
		}
		return "", 0, &d
	}
	var tok struct {
		AccessToken string  `json:"access_token"`
		ExpiresIn   float64 `json:"expires_in"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&tok); err != nil || tok.AccessToken == "" || hasSpaceOrControl(tok.AccessToken) {
		return "", 0, &connector.Delivery{Result: connector.Retry, HTTPStatus: resp.StatusCode,
			Err: errors.New("onetrust access token: the token endpoint's answer holds no usable access_token")}
	}
	return tok.AccessToken, time.Duration(tok.ExpiresIn * float64(time.Second)), nil
}

func rejected(err error) connector.Delivery {
	return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf("onetrust status update: %w", err)}
}

func ptr[T any](v T) *T { return &v }
