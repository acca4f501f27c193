// Package knotclient is a typed client for Knot's POST /user/delete, the call
// that erases a user and their data. It turns every answer into either a
// Result (the user is gone) or an *Error whose Class tells the worker what to
// do next: fail the request, retry it, slow down, or pause for credentials.
//
// The package speaks HTTP only; it knows nothing of the queue.
package knotclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

const (
	defaultUserAgent = "erasure-worker"
	defaultTimeout   = 10 * time.Second

	// maxResponseBytes bounds what we read of an answer: Knot's answers are
	// tiny, and a misconfigured base URL must not make us buffer a web page.
	maxResponseBytes = 64 << 10

	deletePath = "/user/delete"
)

// Config configures a Client. BaseURL, ClientID and Secret are required.
type Config struct {
	// BaseURL is Knot's API root, e.g. https://development.knotapi.com.
	// It must be an absolute http or https URL without user info, query or
	// fragment; a path prefix is kept.
	BaseURL  string
	ClientID string
	Secret   string
	// Version is sent as the Knot-Version header when non-empty.
	Version string
	// UserAgent defaults to "erasure-worker".
	UserAgent string
	// Timeout bounds each DeleteUser call as a whole (connect, send, wait,
	// read). Default 10s.
	Timeout time.Duration
	// HTTPClient is used as given when set. The default client has transport
	// timeouts, keeps enough idle connections for ~64 concurrent calls, and
	// does not follow redirects (a redirected POST would become a GET, or
	// carry the credentials somewhere else).
	HTTPClient *http.Client
}

// Client calls Knot. It is safe for concurrent use.
type Client struct {
	endpoint  string
	version   string
	userAgent string
	timeout   time.Duration
	hc        *http.Client

	mu       sync.RWMutex
	clientID string
	secret   string
}

// New validates cfg and returns a Client. Errors name the offending field
// and never contain the secret.
func New(cfg Config) (*Client, error) {
	endpoint, err := endpointURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(cfg.ClientID) == "" {
		return nil, errors.New("knotclient: ClientID is required")
	}
	if strings.TrimSpace(cfg.Secret) == "" {
		return nil, errors.New("knotclient: Secret is required")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("knotclient: Timeout must not be negative, got %v", cfg.Timeout)
	}
	// Header values with CR/LF would be rejected by net/http on every call;
	// say so once, at start-up, naming the field.
	if strings.ContainsAny(cfg.Version, "\r\n") {
		return nil, errors.New("knotclient: Version must not contain line breaks")
	}
	if strings.ContainsAny(cfg.UserAgent, "\r\n") {
		return nil, errors.New("knotclient: UserAgent must not contain line breaks")
	}
	c := &Client{
		endpoint:  endpoint,
		version:   cfg.Version,
		userAgent: cfg.UserAgent,
		timeout:   cfg.Timeout,
		hc:        cfg.HTTPClient,
		clientID:  cfg.ClientID,
		secret:    cfg.Secret,
	}
	if c.userAgent == "" {
		c.userAgent = defaultUserAgent
	}
	if c.timeout == 0 {
		c.timeout = defaultTimeout
	}
	if c.hc == nil {
		c.hc = defaultHTTPClient(c.timeout)
	}
	return c, nil
}

func endpointURL(base string) (string, error) {
	if strings.TrimSpace(base) == "" {
		return "", errors.New("knotclient: BaseURL is required")
	}
	u, err := url.Parse(base)
	if err != nil {
		// url.Error repeats the input, which could hold a password if someone
		// pasted one into the URL; report only what is wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("knotclient: BaseURL is not a valid URL: %v", err)
	}
	if u.User != nil {
		return "", errors.New("knotclient: BaseURL must not contain user info; set ClientID and Secret instead")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("knotclient: BaseURL %q must be an absolute http or https URL", u.Redacted())
	}
	if u.Host == "" {
		return "", fmt.Errorf("knotclient: BaseURL %q has no host", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return "", fmt.Errorf("knotclient: BaseURL %q must not have a query or fragment", u.Redacted())
	}
	u.Path = strings.TrimRight(u.Path, "/") + deletePath
	u.RawPath = ""
	return u.String(), nil
}

func defaultHTTPClient(timeout time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 5 * time.Second
	// The per-call context deadline is the real bound; this is a backstop in
	// case a caller's context has no deadline at all.
	t.ResponseHeaderTimeout = timeout
	// The worker runs up to 256 calls at once against one host (CONCURRENCY=auto's ceiling).
	// Keep a connection for each: with fewer idle slots than calls in flight, every call past
	// them opens a new TLS connection and closes it after one request.
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	return &http.Client{
		Transport: t,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// SetCredentials replaces the client id and secret used by later calls, for
// when a rotated secret file is re-read. Calls in flight keep the old ones.
func (c *Client) SetCredentials(clientID, secret string) {
	c.mu.Lock()
	c.clientID, c.secret = clientID, secret
	c.mu.Unlock()
}

func (c *Client) credentials() (string, string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.clientID, c.secret
}

// DeleteUser asks Knot to delete the user with this external_user_id.
//
// A nil error means the user is gone: Result.Outcome is Deleted, or NotFound
// when Knot did not know the user (which is also what a repeated delete
// answers). Every failure is an *Error; its Class says how to treat it.
func (c *Client) DeleteUser(ctx context.Context, externalUserID string) (Result, error) {
	// Validate before encoding: encoding/json would silently replace invalid
	// UTF-8 with U+FFFD and we would delete someone else.
	if err := ValidateExternalUserID(externalUserID); err != nil {
		return Result{}, err
	}
	body, err := json.Marshal(struct {
		ExternalUserID string `json:"external_user_id"`
	}{externalUserID})
	if err != nil {
		// Unreachable for a validated string; keep the id out of the message.
		return Result{}, &Error{Class: Permanent, ErrorCode: codeInvalidID, Message: "cannot encode external_user_id"}
	}

	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(callCtx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		// The endpoint was validated in New, so this is a programming error.
		return Result{}, &Error{Class: Permanent, ErrorCode: "invalid_request", Message: "cannot build request", Err: err}
	}
	id, secret := c.credentials()
	req.SetBasicAuth(id, secret)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if c.version != "" {
		req.Header.Set("Knot-Version", c.version)
	}

	// Knot does not echo the id or credentials today, but whatever the
	// server or a proxy says ends up in Message, and Message goes to logs
	// and last_error; scrub them, including the encoded Authorization value.
	scrub := []string{externalUserID, secret, id, strings.TrimPrefix(req.Header.Get("Authorization"), "Basic "),
		// the id as it appears JSON-escaped, if an echo quotes our body
		string(body[len(`{"external_user_id":"`) : len(body)-len(`"}`)])}

	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		e := c.transportError(ctx, err, time.Since(start))
		e.Message = cleanMessage(e.Message, scrub)
		return Result{}, e
	}
	respBody, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	resp.Body.Close()
	elapsed := time.Since(start)
	if err != nil {
		// The status line arrived but the body did not: for a 200 we cannot
		// tell whether Knot deleted the user, and a retry is harmless.
		e := c.transportError(ctx, err, elapsed)
		e.StatusCode = resp.StatusCode
		e.Message = cleanMessage(e.Message, scrub)
		return Result{}, e
	}

	res, err := classify(resp.StatusCode, resp.Header, respBody, time.Now(), scrub)
	if err != nil {
		e := err.(*Error)
		e.Duration = elapsed
		return Result{}, e
	}
	res.Duration = elapsed
	return res, nil
}

// transportError classifies a failure that left us without a complete
// response. ctx is the caller's context, not the one with our timeout, so
// that a caller's cancellation is told apart from our own deadline.
func (c *Client) transportError(ctx context.Context, err error, d time.Duration) *Error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		code := "canceled"
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			code = "timeout"
		}
		return &Error{Class: Retryable, ErrorCode: code, Message: "call abandoned: " + ctxErr.Error(), Duration: d, Err: ctxErr}
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return &Error{Class: Retryable, ErrorCode: "timeout", Message: "timeout after " + c.timeout.String(), Duration: d, Err: err}
	}
	// *url.Error repeats the method and URL; the inner error says what went
	// wrong (connection refused, no such host, EOF).
	inner := err
	var ue *url.Error
	if errors.As(err, &ue) {
		inner = ue.Err
	}
	return &Error{Class: Retryable, ErrorCode: "connection", Message: "connection failed: " + inner.Error(), Duration: d, Err: err}
}
