package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

// The event types of an outcome webhook.
const (
	EventSucceeded = "erasure.succeeded"
	EventFailed    = "erasure.failed"
)

// eventTypes maps each outcome of the erasure_requests table to its event
// (migrations/001_erasure_requests.sql, constraint outcome_matches_status).
var eventTypes = map[string]string{
	"deleted":   EventSucceeded,
	"not_found": EventSucceeded,
	"rejected":  EventFailed,
	"invalid":   EventFailed,
	"exhausted": EventFailed,
}

// EventType returns the event type for a request's outcome, and false for an outcome that is not
// final (or not known).
func EventType(outcome string) (string, bool) {
	t, ok := eventTypes[outcome]
	return t, ok
}

// Outcome is what an outcome webhook says of one finished request. It holds no external_user_id:
// the receiver knows the person by its own request_ref.
type Outcome struct {
	RequestRef string
	// Outcome is deleted or not_found (erasure.succeeded), or rejected, invalid or exhausted
	// (erasure.failed).
	Outcome string
	// ErrorCode is Knot's error_code or ours; empty (sent as null) when there is none.
	ErrorCode   string
	CompletedAt time.Time
}

type eventBody struct {
	Type      string    `json:"type"`
	Timestamp string    `json:"timestamp"`
	Data      eventData `json:"data"`
}

type eventData struct {
	RequestRef  string  `json:"request_ref"`
	Outcome     string  `json:"outcome"`
	ErrorCode   *string `json:"error_code"`
	CompletedAt string  `json:"completed_at"`
}

// timeFormat is RFC 3339 in UTC with microseconds, as the spec's examples and PostgreSQL's
// timestamptz have them.
const timeFormat = "2006-01-02T15:04:05.000000Z07:00"

// encodeOutcome returns the body of o's webhook. The payload's timestamp is "when the event
// occurred (not necessarily the same of when it was delivered)" in the spec's words: the
// request's completion. The body is then the same on every retry of one report, as its
// webhook-id is.
func encodeOutcome(o Outcome) ([]byte, error) {
	typ, ok := EventType(o.Outcome)
	switch {
	case o.RequestRef == "":
		return nil, errors.New("outcome: request_ref is empty")
	case !ok:
		return nil, fmt.Errorf("outcome: outcome %q is not deleted, not_found, rejected, invalid or exhausted", o.Outcome)
	case o.CompletedAt.IsZero():
		return nil, errors.New("outcome: completed_at is missing")
	}
	at := o.CompletedAt.UTC().Format(timeFormat)
	b := eventBody{Type: typ, Timestamp: at, Data: eventData{RequestRef: o.RequestRef, Outcome: o.Outcome, CompletedAt: at}}
	if o.ErrorCode != "" {
		b.Data.ErrorCode = &o.ErrorCode
	}
	return json.Marshal(b)
}

// Sender delivers outcome webhooks to one URL, signed with one secret. It is safe for concurrent
// use.
type Sender struct {
	url    string
	host   string
	signer signer
	client *http.Client
}

// requestTimeout is used when NewSender is given no client: the spec recommends 15 to 30 s.
const requestTimeout = 30 * time.Second

// maxAnswerBytes is how much of an answer is read (and dropped) so the connection can be reused.
const maxAnswerBytes = 4 << 10

// NewSender returns a Sender for REPORT_WEBHOOK_URL and REPORT_WEBHOOK_SECRET (whsec_ and the
// base64 of 24 to 64 random bytes). A nil client means one with a 30 s timeout. The client is
// copied and never follows redirects: the spec counts a 3xx as a failure, and a redirect could
// carry the signed outcome elsewhere. Errors name the setting at fault and never show the secret
// or the URL (its query may hold a token).
func NewSender(rawURL string, secret string, client *http.Client) (*Sender, error) {
	u, err := url.Parse(rawURL)
	switch {
	case rawURL == "":
		return nil, errors.New("REPORT_WEBHOOK_URL: empty")
	case err != nil:
		return nil, errors.New("REPORT_WEBHOOK_URL: not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("REPORT_WEBHOOK_URL: must be an http:// or https:// URL")
	case u.Host == "":
		return nil, errors.New("REPORT_WEBHOOK_URL: has no host")
	case u.Fragment != "":
		return nil, errors.New("REPORT_WEBHOOK_URL: must not have a #fragment")
	}
	key, err := parseSecret("REPORT_WEBHOOK_SECRET", secret)
	if err != nil {
		return nil, err
	}
	c := &http.Client{Timeout: requestTimeout}
	if client != nil {
		copied := *client
		c = &copied
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Sender{url: u.String(), host: u.Host, signer: newSigner(key), client: c}, nil
}

// String names the receiver's host only.
func (s Sender) String() string { return "webhook.Sender{" + s.host + "}" }

// GoString does the same for %#v, which would otherwise print the key.
func (s Sender) GoString() string { return s.String() }

// Send delivers one outcome as a Standard Webhooks message. msgID is the report's webhook-id: the
// caller gives the same one on every attempt for one report, so that the receiver can drop
// repeats (letters, digits, _ and -, at most 128 bytes; "msg_" and the report's id does). now
// is the attempt's webhook-timestamp, and the clock for Retry-After.
//
// An outcome or id that cannot be sent is Rejected: sending it again will not help.
func (s *Sender) Send(ctx context.Context, msgID string, o Outcome, now time.Time) connector.Delivery {
	if err := checkID(msgID); err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf("webhook: message id: %v", err)}
	}
	body, err := encodeOutcome(o)
	if err != nil {
		return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf("webhook: %v", err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		// The URL was checked by NewSender; do not repeat it here.
		return connector.Delivery{Result: connector.Retry, Err: fmt.Errorf("webhook: building the request to %s failed", s.host)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderID, msgID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(HeaderSignature, s.signer.sign(msgID, now, body))

	resp, err := s.client.Do(req)
	if err != nil {
		return connector.FromError(ctx, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes))
	resp.Body.Close()
	// Standard Webhooks: only a 2xx is a success. No status means "already closed" here.
	return connector.FromAnswer(resp.StatusCode, resp.Header, now)
}
