package transcend

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testKey    = "tk_SECRETAPIKEY0001"
	testSombra = "sk_SECRETSOMBRA0002"
	testSilo   = "9d5a7a41-f102-435c-b80d-38c2b378ecac"
)

// captured is what the test server saw of one request.
type captured struct {
	method, path, rawQuery string
	header                 http.Header
	body                   string
}

type testBundle struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []captured
}

func (b *testBundle) requests() []captured {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]captured(nil), b.got...)
}

// setup returns a Client pointed at a server that records each request and answers with h.
func setup(t *testing.T, cfg Config, h http.HandlerFunc) (*Client, *testBundle) {
	t.Helper()
	b := &testBundle{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.got = append(b.got, captured{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Clone(), string(body)})
		b.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(b.srv.Close)
	cfg.BaseURL = b.srv.URL + cfg.BaseURL
	if cfg.APIKey == "" {
		cfg.APIKey = testKey
	}
	if cfg.DataSiloID == "" {
		cfg.DataSiloID = testSilo
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 2 * time.Second}
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, b
}

func TestNewRefusesBadSettingsByName(t *testing.T) {
	t.Parallel()
	good := Config{BaseURL: "https://multi-tenant.sombra.transcend.io", APIKey: testKey, DataSiloID: testSilo}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
		secret  string // must not appear in the error
	}{
		{"no url", func(c *Config) { c.BaseURL = "" }, "TRANSCEND_URL is empty", ""},
		{"relative url", func(c *Config) { c.BaseURL = "sombra.example.com/v1" }, "TRANSCEND_URL must be an absolute http or https URL", ""},
		{"ftp url", func(c *Config) { c.BaseURL = "ftp://sombra.example.com" }, "TRANSCEND_URL must be an absolute http or https URL", ""},
		{"no host", func(c *Config) { c.BaseURL = "https:///v1" }, "TRANSCEND_URL has no host", ""},
		{"user info", func(c *Config) { c.BaseURL = "https://me:SECRETPW@sombra.example.com" }, "TRANSCEND_URL must not contain user info", "SECRETPW"},
		{"query", func(c *Config) { c.BaseURL = "https://sombra.example.com/?token=SECRETQ" }, "TRANSCEND_URL must not have a query", "SECRETQ"},
		{"unparsable", func(c *Config) { c.BaseURL = "https://SECRETHOST\x7f.example.com" }, "TRANSCEND_URL is not a valid URL", "SECRETHOST"},
		{"no key", func(c *Config) { c.APIKey = "" }, "TRANSCEND_API_KEY is empty", ""},
		{"key with newline", func(c *Config) { c.APIKey = testKey + "\n" }, "TRANSCEND_API_KEY contains whitespace or control characters", testKey},
		{"key with space", func(c *Config) { c.APIKey = "Bearer " + testKey }, "TRANSCEND_API_KEY contains whitespace", testKey},
		{"sombra key with newline", func(c *Config) { c.SombraKey = testSombra + "\r\n" }, "TRANSCEND_SOMBRA_KEY contains whitespace", testSombra},
		{"no silo", func(c *Config) { c.DataSiloID = " " }, "TRANSCEND_DATA_SILO_ID is empty", ""},
		{"silo with newline", func(c *Config) { c.DataSiloID = testSilo + "\n" }, "TRANSCEND_DATA_SILO_ID must not contain whitespace", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := good
			tt.mutate(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("the error %q repeats the value", err)
			}
		})
	}
	for _, base := range []string{"https://multi-tenant.sombra.transcend.io", "http://127.0.0.1:8082/", "https://sombra.example.com/prefix/"} {
		cfg := good
		cfg.BaseURL = base
		if _, err := New(cfg); err != nil {
			t.Errorf("New(%q): %v", base, err)
		}
	}
}

// A redirect must not carry the keys and the nonce elsewhere, even with the caller's own client.
func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	var elsewhere int
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere++ }))
	defer other.Close()
	c, b := setup(t, Config{SombraKey: testSombra, HTTP: &http.Client{}}, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/steal", http.StatusTemporaryRedirect)
	})
	_, err := c.PendingPage(t.Context(), 10, 0)
	if err == nil {
		t.Fatal("a redirect gave a page")
	}
	d := c.Report(t.Context(), "nonce-1", "user-1", "deleted", "")
	if d.Result.Done() {
		t.Fatalf("a redirect counted as delivered: %+v", d)
	}
	if elsewhere != 0 || len(b.requests()) != 2 {
		t.Errorf("the redirect target saw %d requests; the gateway %d", elsewhere, len(b.requests()))
	}
}
