// Package transcend speaks Transcend's "cron" integration, the pull door: it lists the erasure
// requests a data silo has pending on the Sombra gateway (GET
// /v1/data-silo/{id}/pending-requests/ERASURE) and reports each one's outcome with that item's
// nonce (PUT /v1/data-silo).
//
// The package holds no state and knows nothing of the queue: the worker decides what to enqueue
// and when to report. What it hands back never shows a key, a nonce or an identifier in an error,
// a String method or a log value.
package transcend

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The settings a Config comes from, named in every configuration error.
const (
	settingURL        = "TRANSCEND_URL"
	settingAPIKey     = "TRANSCEND_API_KEY"
	settingSombraKey  = "TRANSCEND_SOMBRA_KEY"
	settingDataSiloID = "TRANSCEND_DATA_SILO_ID"
)

const (
	defaultTimeout = 30 * time.Second
	// maxHeaderValue bounds the keys and nonces we put in a header.
	maxHeaderValue = 16 << 10
)

// Config configures a Client. BaseURL, APIKey and DataSiloID are required.
type Config struct {
	// BaseURL is the Sombra gateway: https://multi-tenant.sombra.transcend.io or the customer's
	// own. An absolute http or https URL without user info, query or fragment; a path prefix is
	// kept.
	BaseURL string
	// APIKey is a Transcend API key scoped to the data silo, sent as "authorization: Bearer …".
	APIKey string
	// SombraKey is the internal key of a self-hosted Sombra, sent as
	// "x-sombra-authorization: Bearer …"; empty for the multi-tenant gateway.
	SombraKey string
	// DataSiloID is the integration whose pending erasures are pulled.
	DataSiloID string
	// HTTP is the client to use; nil means one with a 30 s timeout. Redirects are never
	// followed, whichever client it is: net/http would forward the nonce and the Sombra key to
	// wherever a redirect points.
	HTTP *http.Client
}

// Client talks to one data silo on one Sombra gateway. It is safe for concurrent use.
type Client struct {
	base      string // scheme://host/prefix, no trailing slash
	apiKey    string
	sombraKey string
	silo      string
	hc        *http.Client
	now       func() time.Time
}

// New validates cfg and returns a Client. Errors name the setting at fault and never repeat its
// value.
func New(cfg Config) (*Client, error) {
	base, err := baseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if err := checkKey(settingAPIKey, cfg.APIKey, true); err != nil {
		return nil, err
	}
	if err := checkKey(settingSombraKey, cfg.SombraKey, false); err != nil {
		return nil, err
	}
	switch {
	case strings.TrimSpace(cfg.DataSiloID) == "":
		return nil, fmt.Errorf("transcend: %s is empty", settingDataSiloID)
	case cfg.DataSiloID != strings.TrimSpace(cfg.DataSiloID) || hasControl(cfg.DataSiloID):
		return nil, fmt.Errorf("transcend: %s must not contain whitespace at its ends or control characters", settingDataSiloID)
	case len(cfg.DataSiloID) > 255:
		return nil, fmt.Errorf("transcend: %s is longer than 255 bytes", settingDataSiloID)
	}
	return &Client{
		base:      base,
		apiKey:    cfg.APIKey,
		sombraKey: cfg.SombraKey,
		silo:      cfg.DataSiloID,
		hc:        noRedirects(cfg.HTTP),
		now:       time.Now,
	}, nil
}

// DataSiloID is the data silo this client pulls from (it is not secret).
func (c *Client) DataSiloID() string { return c.silo }

func baseURL(raw string) (string, error) {
	if strings.TrimSpace(raw) == "" {
		return "", fmt.Errorf("transcend: %s is empty", settingURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the input; say only what is wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("transcend: %s is not a valid URL: %v", settingURL, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("transcend: %s must be an absolute http or https URL", settingURL)
	case u.Host == "":
		return "", fmt.Errorf("transcend: %s has no host", settingURL)
	case u.User != nil:
		return "", fmt.Errorf("transcend: %s must not contain user info; set %s instead", settingURL, settingAPIKey)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("transcend: %s must not have a query or fragment", settingURL)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u.String(), nil
}

// checkKey refuses a key net/http would refuse on every call, at start-up and by name. A key
// read from a _FILE with its trailing newline is the usual culprit.
func checkKey(setting, key string, required bool) error {
	switch {
	case key == "" && required:
		return fmt.Errorf("transcend: %s is empty", setting)
	case key == "":
		return nil
	case !validHeaderValue(key) || strings.ContainsAny(key, " \t"):
		return fmt.Errorf("transcend: %s contains whitespace or control characters (a trailing newline from a file?)", setting)
	case len(key) > maxHeaderValue:
		return fmt.Errorf("transcend: %s is longer than %d bytes", setting, maxHeaderValue)
	}
	return nil
}

// validHeaderValue reports whether v can be sent as a header value as it is: visible ASCII,
// spaces and tabs, nothing else (net/http refuses CR, LF and NUL; proxies mangle the rest).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		b := v[i]
		if (b < 0x20 && b != '\t') || b >= 0x7f {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return true
		}
	}
	return false
}

func noRedirects(hc *http.Client) *http.Client {
	var c http.Client
	if hc != nil {
		c = *hc
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		t.TLSHandshakeTimeout = 5 * time.Second
		c = http.Client{Transport: t, Timeout: defaultTimeout}
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

// authorize sets the headers every Sombra call carries.
func (c *Client) authorize(req *http.Request) {
	req.Header.Set("Authorization", "Bearer "+c.apiKey)
	if c.sombraKey != "" {
		req.Header.Set("X-Sombra-Authorization", "Bearer "+c.sombraKey)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "erasure-worker")
}
