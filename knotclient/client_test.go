package knotclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testClientID = "client-abc"
	testSecret   = "s3cr3t-value-xyz"
	testUserID   = "user-7f3a9c"
)

// answer is what the test server replies with.
type answer struct {
	status int
	header map[string]string
	body   string
}

type testBundle struct {
	srv *httptest.Server
	// last request the server saw
	mu       sync.Mutex
	method   string
	path     string
	header   http.Header
	body     []byte
	requests int
}

// setup starts a server that answers every request with a, and a client
// pointed at it.
func setup(t *testing.T, a answer, mod ...func(*Config)) (*Client, *testBundle) {
	t.Helper()
	b := &testBundle{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.method, b.path, b.header, b.body = r.Method, r.URL.Path, r.Header.Clone(), body
		b.requests++
		b.mu.Unlock()
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(b.srv.Close)
	cfg := Config{BaseURL: b.srv.URL, ClientID: testClientID, Secret: testSecret, Timeout: 2 * time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, b
}

func TestDeleteUserClassification(t *testing.T) {
	t.Parallel()
	const (
		invalidField = `{"error_type":"INVALID_REQUEST","error_code":"INVALID_FIELD","error_message":"The external user id field is required."}`
		userNotFound = `{"error_type":"USER_ERROR","error_code":"USER_NOT_FOUND","error_message":"The user was not found. Please check the external_user_id provided."}`
		badKeys      = `{"error_type":"INVALID_INPUT","error_code":"INVALID_API_KEYS","error_message":"Invalid client_id or secret provided."}`
		serverError  = `{"message":"Server Error"}`
		html502      = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
	)
	json := map[string]string{"Content-Type": "application/json"}
	tests := []struct {
		name string
		a    answer
		// success
		outcome Outcome
		// failure
		class      Class
		code       string
		errType    string
		message    string
		retryAfter time.Duration
	}{
		{name: "200 success", a: answer{200, json, `{"message":"Success"}`}, outcome: Deleted},
		{name: "200 empty object", a: answer{200, json, `{}`}, outcome: Deleted},
		{name: "200 empty body", a: answer{200, json, ``}, class: Retryable, code: "invalid_response"},
		{name: "200 html", a: answer{200, map[string]string{"Content-Type": "text/html"}, "<html>hello</html>"}, class: Retryable, code: "invalid_response"},
		{name: "200 truncated json", a: answer{200, json, `{"message":"Succ`}, class: Retryable, code: "invalid_response"},
		{name: "200 json array", a: answer{200, json, `[]`}, class: Retryable, code: "invalid_response"},
		{name: "200 json null", a: answer{200, json, `null`}, class: Retryable, code: "invalid_response"},
		{name: "400 user not found", a: answer{400, json, userNotFound}, outcome: NotFound},
		{name: "400 invalid field", a: answer{400, json, invalidField}, class: Permanent, code: "INVALID_FIELD", errType: "INVALID_REQUEST", message: "The external user id field is required."},
		{name: "400 unknown code and type", a: answer{400, json, `{"error_type":"BRAND_NEW_TYPE","error_code":"BRAND_NEW_CODE","error_message":"x"}`}, class: Permanent, code: "BRAND_NEW_CODE", errType: "BRAND_NEW_TYPE", message: "x"},
		{name: "400 not found message but other code", a: answer{400, json, `{"error_code":"INVALID_FIELD","error_message":"The user was not found."}`}, class: Permanent, code: "INVALID_FIELD"},
		{name: "400 garbage body", a: answer{400, nil, "oops"}, class: Permanent, code: "http_400"},
		{name: "400 non-string code", a: answer{400, json, `{"error_code":404,"error_message":"m"}`}, class: Permanent, code: "http_400", message: "m"},
		{name: "401 bad keys", a: answer{401, json, badKeys}, class: Unauthorized, code: "INVALID_API_KEYS", errType: "INVALID_INPUT", message: "Invalid client_id or secret provided."},
		{name: "401 no body", a: answer{401, nil, ""}, class: Unauthorized, code: "http_401"},
		{name: "403", a: answer{403, nil, "Forbidden"}, class: Permanent, code: "http_403"},
		{name: "403 NO_ACCESS", a: answer{403, json, `{"error_type":"INVALID_INPUT","error_code":"NO_ACCESS","error_message":"No access."}`}, class: Permanent, code: "NO_ACCESS"},
		{name: "404", a: answer{404, json, `{"message":"Not Found"}`}, class: Permanent, code: "http_404", message: "Not Found"},
		{name: "405", a: answer{405, nil, ""}, class: Permanent, code: "http_405"},
		{name: "409", a: answer{409, json, `{"error_code":"ONGOING_OPERATION"}`}, class: Permanent, code: "ONGOING_OPERATION"},
		{name: "410", a: answer{410, nil, ""}, class: Permanent, code: "http_410"},
		{name: "413", a: answer{413, nil, ""}, class: Permanent, code: "http_413"},
		{name: "422", a: answer{422, json, `{"message":"The given data was invalid."}`}, class: Permanent, code: "http_422"},
		{name: "418 other 4xx", a: answer{418, nil, ""}, class: Permanent, code: "http_418"},
		{name: "408", a: answer{408, nil, ""}, class: Retryable, code: "http_408"},
		{name: "429 no retry-after", a: answer{429, json, `{"message":"Too Many Attempts."}`}, class: RateLimited, code: "http_429", message: "Too Many Attempts."},
		{name: "429 retry-after seconds", a: answer{429, map[string]string{"Retry-After": "7"}, ""}, class: RateLimited, code: "http_429", retryAfter: 7 * time.Second},
		{name: "429 retry-after garbage", a: answer{429, map[string]string{"Retry-After": "soon"}, ""}, class: RateLimited, code: "http_429"},
		{name: "429 retry-after negative", a: answer{429, map[string]string{"Retry-After": "-5"}, ""}, class: RateLimited, code: "http_429"},
		{name: "429 retry-after huge", a: answer{429, map[string]string{"Retry-After": "99999999999999999999999"}, ""}, class: RateLimited, code: "http_429", retryAfter: MaxRetryAfter},
		{name: "429 retry-after past date", a: answer{429, map[string]string{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, ""}, class: RateLimited, code: "http_429"},
		{name: "500 server error shape", a: answer{500, json, serverError}, class: Retryable, code: "http_500", message: "Server Error"},
		{name: "500 error schema", a: answer{500, json, `{"error_type":"MERCHANT_ERROR","error_code":"MERCHANT_UNAVAILABLE","error_message":"down"}`}, class: Retryable, code: "MERCHANT_UNAVAILABLE", errType: "MERCHANT_ERROR", message: "down"},
		{name: "502 html", a: answer{502, map[string]string{"Content-Type": "text/html"}, html502}, class: Retryable, code: "http_502"},
		{name: "503 retry-after", a: answer{503, map[string]string{"Retry-After": "3"}, ""}, class: Retryable, code: "http_503", retryAfter: 3 * time.Second},
		{name: "504", a: answer{504, nil, ""}, class: Retryable, code: "http_504"},
		{name: "302 not followed", a: answer{302, map[string]string{"Location": "/elsewhere"}, ""}, class: Retryable, code: "http_302"},
		{name: "204", a: answer{204, nil, ""}, class: Retryable, code: "http_204"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t, tt.a)
			res, err := c.DeleteUser(context.Background(), testUserID)
			if tt.outcome != 0 {
				if err != nil {
					t.Fatalf("DeleteUser: unexpected error %v", err)
				}
				if res.Outcome != tt.outcome || res.StatusCode != tt.a.status {
					t.Fatalf("got %v/%d, want %v/%d", res.Outcome, res.StatusCode, tt.outcome, tt.a.status)
				}
				if res.Duration <= 0 {
					t.Errorf("Duration = %v, want > 0", res.Duration)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("DeleteUser: got (%+v, %v), want *Error", res, err)
			}
			if e.Class != tt.class || e.ErrorCode != tt.code || e.StatusCode != tt.a.status {
				t.Fatalf("got class=%v code=%q status=%d, want %v %q %d", e.Class, e.ErrorCode, e.StatusCode, tt.class, tt.code, tt.a.status)
			}
			if tt.errType != "" && e.ErrorType != tt.errType {
				t.Errorf("ErrorType = %q, want %q", e.ErrorType, tt.errType)
			}
			if tt.message != "" && e.Message != tt.message {
				t.Errorf("Message = %q, want %q", e.Message, tt.message)
			}
			if e.RetryAfter != tt.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, tt.retryAfter)
			}
			if e.Duration <= 0 {
				t.Errorf("Duration = %v, want > 0", e.Duration)
			}
			if strings.Contains(e.Error(), "<html") {
				t.Errorf("Error() carries the HTML body: %q", e.Error())
			}
		})
	}
}

func TestDeleteUserRetryAfterHTTPDate(t *testing.T) {
	t.Parallel()
	when := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	c, _ := setup(t, answer{429, map[string]string{"Retry-After": when}, ""})
	_, err := c.DeleteUser(context.Background(), testUserID)
	var e *Error
	if !errors.As(err, &e) || e.Class != RateLimited {
		t.Fatalf("got %v, want RateLimited", err)
	}
	// HTTP-dates have one-second precision and the exchange takes time.
	if e.RetryAfter < 88*time.Second || e.RetryAfter > 91*time.Second {
		t.Fatalf("RetryAfter = %v, want about 90s", e.RetryAfter)
	}
}

func TestDeleteUserRequest(t *testing.T) {
	t.Parallel()
	c, b := setup(t, answer{200, nil, `{"message":"Success"}`}, func(cfg *Config) {
		cfg.BaseURL += "/prefix/"
		cfg.Version = "2.0"
	})
	id := `ünïcødé "quoted" \ id`
	if _, err := c.DeleteUser(context.Background(), id); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.method != http.MethodPost || b.path != "/prefix/user/delete" {
		t.Errorf("got %s %s, want POST /prefix/user/delete", b.method, b.path)
	}
	r := &http.Request{Header: b.header}
	user, pass, ok := r.BasicAuth()
	if !ok || user != testClientID || pass != testSecret {
		t.Errorf("basic auth = %q/%q/%v", user, pass, ok)
	}
	for k, want := range map[string]string{
		"Content-Type": "application/json",
		"Accept":       "application/json",
		"User-Agent":   "erasure-worker",
		"Knot-Version": "2.0",
	} {
		if got := b.header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	var sent map[string]any
	if err := json.Unmarshal(b.body, &sent); err != nil {
		t.Fatalf("body %q: %v", b.body, err)
	}
	if len(sent) != 1 || sent["external_user_id"] != id {
		t.Errorf("body = %s", b.body)
	}
}

func TestDeleteUserNoVersionHeader(t *testing.T) {
	t.Parallel()
	c, b := setup(t, answer{200, nil, `{}`}, func(cfg *Config) { cfg.UserAgent = "custom/1" })
	if _, err := c.DeleteUser(context.Background(), testUserID); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.header["Knot-Version"]; ok {
		t.Errorf("Knot-Version sent although Version is empty")
	}
	if got := b.header.Get("User-Agent"); got != "custom/1" {
		t.Errorf("User-Agent = %q", got)
	}
}

func TestDeleteUserInvalidIDNeverSent(t *testing.T) {
	t.Parallel()
	c, b := setup(t, answer{200, nil, `{}`})
	for _, id := range []string{"", "   ", "a\x00b", "a\nb", "\xff\xfe", strings.Repeat("x", MaxExternalUserIDBytes+1)} {
		_, err := c.DeleteUser(context.Background(), id)
		var e *Error
		if !errors.As(err, &e) || e.Class != Permanent || e.ErrorCode != "invalid_external_user_id" {
			t.Errorf("DeleteUser(%q) = %v, want permanent invalid_external_user_id", id, err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.requests != 0 {
		t.Errorf("server saw %d requests for invalid ids, want 0", b.requests)
	}
}

func TestValidateExternalUserID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id      string
		wantErr string // substring of the message; "" = valid
	}{
		{"abc123", ""},
		{"550e8400-e29b-41d4-a716-446655440000", ""},
		{"user@example.com", ""},
		{"名前", ""},
		{" padded ", ""}, // Knot decides what a padded id means; we only refuse what cannot be sent faithfully
		{strings.Repeat("x", MaxExternalUserIDBytes), ""},
		{"", "empty"},
		{" \t ", "control character"},
		{"   ", "only whitespace"},
		{"\u00a0\u2003", "only whitespace"},
		{"a\x00", "control character U+0000 at byte 1"},
		{"a\rb", "control character"},
		{"a\x7fb", "control character"},
		{"ok\xffbad", "not valid UTF-8"},
		{strings.Repeat("x", MaxExternalUserIDBytes+1), "1025 bytes"},
	}
	for _, tt := range tests {
		err := ValidateExternalUserID(tt.id)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("ValidateExternalUserID(%q) = %v, want nil", tt.id, err)
			}
			continue
		}
		var e *Error
		if !errors.As(err, &e) || e.Class != Permanent || e.ErrorCode != "invalid_external_user_id" || e.StatusCode != 0 {
			t.Errorf("ValidateExternalUserID(%q) = %#v, want permanent invalid_external_user_id", tt.id, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ValidateExternalUserID(%q) = %q, want it to mention %q", tt.id, err, tt.wantErr)
		}
	}
}

func TestDeleteUserTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // never answers while the client waits
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c, err := New(Config{BaseURL: srv.URL, ClientID: testClientID, Secret: testSecret, Timeout: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.DeleteUser(context.Background(), testUserID)
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("DeleteUser took %v with a 150ms timeout", took)
	}
	var e *Error
	if !errors.As(err, &e) || e.Class != Retryable || e.ErrorCode != "timeout" || e.StatusCode != 0 {
		t.Fatalf("got %#v, want retryable timeout", err)
	}
	if got, want := e.Error(), "knot: timeout after 150ms"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(err, DeadlineExceeded) = false; Err = %v", e.Err)
	}
}

func TestDeleteUserBodyStalls(t *testing.T) {
	t.Parallel()
	// Headers arrive, the body never finishes: the outcome is unknown.
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, `{"mess`)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c, err := New(Config{BaseURL: srv.URL, ClientID: testClientID, Secret: testSecret, Timeout: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.DeleteUser(context.Background(), testUserID)
	var e *Error
	if !errors.As(err, &e) || e.Class != Retryable || e.ErrorCode != "timeout" || e.StatusCode != 200 {
		t.Fatalf("got %#v, want retryable timeout with status 200", err)
	}
}

func TestDeleteUserConnectionErrors(t *testing.T) {
	t.Parallel()
	// A listener that is closed at once: connection refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()

	// A server that accepts and hangs up without answering: EOF.
	hangup := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(hangup.Close)

	for name, base := range map[string]string{"refused": refused, "hangup": hangup.URL, "dns": "http://does-not-exist.invalid"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := New(Config{BaseURL: base, ClientID: testClientID, Secret: testSecret, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.DeleteUser(context.Background(), testUserID)
			var e *Error
			if !errors.As(err, &e) || e.Class != Retryable || e.ErrorCode != "connection" || e.StatusCode != 0 || e.Err == nil {
				t.Fatalf("got %#v, want retryable connection error", err)
			}
			if !strings.HasPrefix(e.Error(), "knot: connection failed: ") {
				t.Errorf("Error() = %q", e.Error())
			}
		})
	}
}

func TestDeleteUserCallerCancels(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c, err := New(Config{BaseURL: srv.URL, ClientID: testClientID, Secret: testSecret, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err = c.DeleteUser(ctx, testUserID)
	var e *Error
	if !errors.As(err, &e) || e.Class != Retryable || e.ErrorCode != "canceled" {
		t.Fatalf("got %#v, want retryable canceled", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(err, context.Canceled) = false")
	}

	// Already cancelled before the call: same answer, nothing sent.
	_, err = c.DeleteUser(ctx, testUserID)
	if !errors.Is(err, context.Canceled) || !errors.As(err, &e) || e.Class != Retryable {
		t.Errorf("pre-cancelled ctx: got %v", err)
	}
}

func TestErrorsNeverLeakSecretsOrID(t *testing.T) {
	t.Parallel()
	// A hostile or buggy server that echoes everything it was sent.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		user, pass, _ := r.BasicAuth()
		msg, _ := json.Marshal(string(body) + " " + user + " " + pass + " " + r.Header.Get("Authorization"))
		w.WriteHeader(400)
		io.WriteString(w, `{"error_type":"INVALID_REQUEST","error_code":"INVALID_FIELD","error_message":`+string(msg)+`}`)
	}))
	t.Cleanup(echo.Close)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := "http://" + ln.Addr().String()
	ln.Close()

	errs := map[string]error{}
	for name, base := range map[string]string{"echo": echo.URL, "refused": refused} {
		c, err := New(Config{BaseURL: base, ClientID: testClientID, Secret: testSecret, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		_, errs[name] = c.DeleteUser(context.Background(), testUserID)
	}
	// An id that JSON escapes must not leak in its escaped form either.
	quoted := `<user> "7f3a9c"`
	c, err := New(Config{BaseURL: echo.URL, ClientID: testClientID, Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteUser(context.Background(), quoted); err == nil || strings.Contains(err.Error(), "7f3a9c") {
		t.Errorf("escaped id leaked: %v", err)
	}
	errs["invalid id"] = ValidateExternalUserID(testSecret + "\x00")
	_, errs["new: missing client id"] = New(Config{BaseURL: "https://x", Secret: testSecret})
	_, errs["new: bad url"] = New(Config{BaseURL: "https://" + testClientID + ":" + testSecret + "@host", ClientID: testClientID, Secret: testSecret})
	_, errs["new: bad url parse"] = New(Config{BaseURL: "https://" + testSecret + "@host:port:x", ClientID: testClientID, Secret: testSecret})

	for name, err := range errs {
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		encoded := base64.StdEncoding.EncodeToString([]byte(testClientID + ":" + testSecret))
		for _, s := range []string{testSecret, testUserID, testClientID, encoded} {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q contains %q", name, err, s)
			}
		}
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	ok := Config{BaseURL: "https://development.knotapi.com", ClientID: "id", Secret: "secret"}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"valid", func(*Config) {}, ""},
		{"valid http with path", func(c *Config) { c.BaseURL = "http://127.0.0.1:8080/knot/" }, ""},
		{"missing base", func(c *Config) { c.BaseURL = "" }, "knotclient: BaseURL is required"},
		{"relative base", func(c *Config) { c.BaseURL = "/user" }, "knotclient: BaseURL"},
		{"no scheme", func(c *Config) { c.BaseURL = "development.knotapi.com" }, "knotclient: BaseURL"},
		{"ftp", func(c *Config) { c.BaseURL = "ftp://x" }, "knotclient: BaseURL"},
		{"no host", func(c *Config) { c.BaseURL = "https://" }, "knotclient: BaseURL"},
		{"query", func(c *Config) { c.BaseURL = "https://x/?a=b" }, "knotclient: BaseURL"},
		{"userinfo", func(c *Config) { c.BaseURL = "https://u:p@x" }, "knotclient: BaseURL must not contain user info"},
		{"missing client id", func(c *Config) { c.ClientID = "" }, "knotclient: ClientID is required"},
		{"blank secret", func(c *Config) { c.Secret = "  " }, "knotclient: Secret is required"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "knotclient: Timeout"},
		{"newline in version", func(c *Config) { c.Version = "2.0\r\nX: y" }, "knotclient: Version"},
	}
	for _, tt := range tests {
		cfg := ok
		tt.mod(&cfg)
		c, err := New(cfg)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: New = %v", tt.name, err)
		case tt.wantErr == "" && (c.timeout != defaultTimeout || c.userAgent != defaultUserAgent):
			t.Errorf("%s: defaults not applied: timeout=%v ua=%q", tt.name, c.timeout, c.userAgent)
		case tt.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.wantErr)):
			t.Errorf("%s: New error = %v, want prefix %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestDefaultTransportSizedForConcurrency(t *testing.T) {
	t.Parallel()
	c, err := New(Config{BaseURL: "https://x", ClientID: "id", Secret: "s"})
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := c.hc.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is %T", c.hc.Transport)
	}
	if tr.MaxIdleConnsPerHost < 64 || tr.TLSHandshakeTimeout == 0 || tr.ResponseHeaderTimeout == 0 {
		t.Errorf("transport: MaxIdleConnsPerHost=%d TLSHandshakeTimeout=%v ResponseHeaderTimeout=%v",
			tr.MaxIdleConnsPerHost, tr.TLSHandshakeTimeout, tr.ResponseHeaderTimeout)
	}
}

func TestSetCredentials(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		if user != "new-id" || pass != "new-secret" {
			w.WriteHeader(401)
			io.WriteString(w, `{"error_type":"INVALID_INPUT","error_code":"INVALID_API_KEYS","error_message":"Invalid client_id or secret provided."}`)
			return
		}
		io.WriteString(w, `{"message":"Success"}`)
	}))
	t.Cleanup(srv.Close)
	c, err := New(Config{BaseURL: srv.URL, ClientID: "old-id", Secret: "old-secret"})
	if err != nil {
		t.Fatal(err)
	}
	var e *Error
	if _, err := c.DeleteUser(context.Background(), testUserID); !errors.As(err, &e) || e.Class != Unauthorized {
		t.Fatalf("old credentials: got %v, want Unauthorized", err)
	}
	// Rotate while calls are running; -race checks the handover.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { c.DeleteUser(context.Background(), testUserID) })
	}
	c.SetCredentials("new-id", "new-secret")
	wg.Wait()
	if _, err := c.DeleteUser(context.Background(), testUserID); err != nil {
		t.Fatalf("new credentials: %v", err)
	}
}

func TestLargeBodyIsBounded(t *testing.T) {
	t.Parallel()
	// 1 MiB of JSON: more than we read, so the 200 cannot be trusted.
	big := `{"message":"` + strings.Repeat("a", 1<<20) + `"}`
	c, _ := setup(t, answer{200, nil, big})
	_, err := c.DeleteUser(context.Background(), testUserID)
	var e *Error
	if !errors.As(err, &e) || e.ErrorCode != "invalid_response" {
		t.Fatalf("got %v, want invalid_response", err)
	}
	// A long Knot message is truncated, not carried whole into last_error.
	c, _ = setup(t, answer{400, nil, `{"error_code":"INVALID_FIELD","error_message":"` + strings.Repeat("é", 500) + "\n" + `"}`})
	_, err = c.DeleteUser(context.Background(), testUserID)
	if !errors.As(err, &e) || len(e.Message) > maxMessageBytes+len("…") || strings.ContainsAny(e.Message, "\n\ufffd") {
		t.Fatalf("Message not bounded/cleaned: %d bytes %q", len(e.Message), e.Message)
	}
}

func TestErrorString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		e    Error
		want string
	}{
		{Error{StatusCode: 400, ErrorCode: "INVALID_FIELD", Message: "The external user id field is required."}, "knot: 400 INVALID_FIELD: The external user id field is required."},
		{Error{StatusCode: 502, ErrorCode: "http_502"}, "knot: 502 http_502"},
		{Error{StatusCode: 429, ErrorCode: "http_429", RetryAfter: 5 * time.Second}, "knot: 429 http_429 (retry after 5s)"},
		{Error{ErrorCode: "timeout", Message: "timeout after 10s"}, "knot: timeout after 10s"},
		{Error{ErrorCode: "connection"}, "knot: connection"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	for v, want := range map[fmtStringer]string{
		Deleted: "deleted", NotFound: "not_found", Outcome(0): "Outcome(0)",
		Permanent: "permanent", Retryable: "retryable", RateLimited: "rate_limited", Unauthorized: "unauthorized", Class(9): "Class(9)",
	} {
		if got := v.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

type fmtStringer interface{ String() string }
