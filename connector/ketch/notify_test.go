package ketch

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

// seen is what a callback receiver was sent.
type seen struct {
	method, path, query string
	header              http.Header
	body                []byte
}

type notifyBundle struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []seen
	md  Metadata
	cb  Callback
}

// setupNotify starts a receiver that records each call and answers with answer.
func setupNotify(t *testing.T, answer http.HandlerFunc) *notifyBundle {
	t.Helper()
	b := &notifyBundle{md: Metadata{UID: testUID, Tenant: "axonic"}}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.got = append(b.got, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), body})
		b.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(b.srv.Close)
	b.cb = Callback{
		URL:     b.srv.URL + "/callback/cb-path-8a1f?t=q-token-3b7e",
		Headers: map[string]string{"Authorization": testCBSecret, "x-ketch-token": testCBToken},
	}
	return b
}

func (b *notifyBundle) calls() []seen {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]seen(nil), b.got...)
}

func status(code int, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
	}
}

func TestNotifySendsTheEventWithTheCallbackHeaders(t *testing.T) {
	b := setupNotify(t, status(http.StatusNoContent))
	ev := Event{Status: StatusCompleted, Reason: ReasonExecuted, RequestID: "1234", ExpectedCompletion: time.Unix(testDue, 0)}
	d := Notify(context.Background(), nil, b.cb, b.md, ev)
	if d.Result != connector.Delivered || d.HTTPStatus != 204 || d.Err != nil {
		t.Fatalf("delivery = %+v", d)
	}
	calls := b.calls()
	if len(calls) != 1 {
		t.Fatalf("%d calls", len(calls))
	}
	c := calls[0]
	if c.method != "POST" || c.path != "/callback/cb-path-8a1f" || c.query != "t=q-token-3b7e" {
		t.Errorf("sent %s %s?%s", c.method, c.path, c.query)
	}
	for k, want := range map[string]string{"Authorization": testCBSecret, "X-Ketch-Token": testCBToken,
		"Content-Type": "application/json", "Accept": "application/json"} {
		if got := c.header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	want := `{"apiVersion":"dsr/v1","kind":"DeleteStatusEvent","metadata":{"uid":"` + testUID + `","tenant":"axonic"},` +
		`"event":{"status":"completed","reason":"executed","expectedCompletionTimestamp":1767225600,"requestID":"1234"}}`
	if string(c.body) != want {
		t.Errorf("body\n got %s\nwant %s", c.body, want)
	}
}

func TestNotifyCallbackHeadersCannotReplaceContentType(t *testing.T) {
	b := setupNotify(t, status(http.StatusOK))
	b.cb.Headers["Content-Type"] = "text/plain"
	Notify(context.Background(), nil, b.cb, b.md, Event{Status: StatusDenied, Reason: ReasonUnknown})
	c := b.calls()[0]
	if got := c.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q", got)
	}
	var ev struct {
		Event struct {
			Expected int64 `json:"expectedCompletionTimestamp"`
		} `json:"event"`
	}
	json.Unmarshal(c.body, &ev)
	if now := time.Now().Unix(); ev.Event.Expected < now-60 || ev.Event.Expected > now+1 {
		t.Errorf("expectedCompletionTimestamp = %d, want about now (%d)", ev.Event.Expected, now)
	}
}

func TestNotifyClassifiesTheAnswer(t *testing.T) {
	tests := []struct {
		name       string
		answer     http.HandlerFunc
		result     connector.Result
		code       int
		retryAfter time.Duration
	}{
		{"200", status(200), connector.Delivered, 200, 0},
		{"202", status(202), connector.Delivered, 202, 0},
		// The callback's credentials are its own: a refusal fails its report alone, never
		// pausing every Ketch report as our own credential's refusal would.
		{"401", status(401), connector.Rejected, 401, 0},
		{"403", status(403), connector.Rejected, 403, 0},
		// Ketch documents no "already closed" answer: a 409 is not taken as delivered.
		{"409", status(409), connector.Rejected, 409, 0},
		{"400 Ketch Error", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			w.Write(ErrorBody(nil, 400, ErrorInvalid, "event.status: "+testCBSecret))
		}, connector.Rejected, 400, 0},
		{"429", status(429, "Retry-After", "7"), connector.RateLimited, 429, 7 * time.Second},
		{"500", status(500), connector.Retry, 500, 0},
		{"503 with Retry-After", status(503, "Retry-After", "3"), connector.Retry, 503, 3 * time.Second},
		{"redirect not followed", status(302, "Location", "http://127.0.0.1:1/elsewhere"), connector.Retry, 302, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := setupNotify(t, tt.answer)
			d := Notify(context.Background(), b.srv.Client(), b.cb, b.md, Event{Status: StatusCompleted, Reason: ReasonNoMatch})
			if d.Result != tt.result || d.HTTPStatus != tt.code || d.RetryAfter != tt.retryAfter {
				t.Errorf("delivery = %+v, want %s %d %v", d, tt.result, tt.code, tt.retryAfter)
			}
			if tt.result.Done() != (d.Err == nil) {
				t.Errorf("Err = %v", d.Err)
			}
			if n := len(b.calls()); n != 1 {
				t.Errorf("%d calls, want 1", n)
			}
			noSecret(t, d)
		})
	}
}

func noSecret(t *testing.T, d connector.Delivery) {
	t.Helper()
	if d.Err == nil {
		return
	}
	for _, s := range append(secrets, "/callback", "cb-path-8a1f", "q-token-3b7e") {
		if strings.Contains(d.Err.Error(), s) {
			t.Errorf("delivery error %q holds %q", d.Err, s)
		}
	}
}

func TestNotifyWithoutAnAnswer(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		b := setupNotify(t, func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // the client gives up and closes the connection
		})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		d := Notify(ctx, nil, b.cb, b.md, Event{Status: StatusCompleted, Reason: ReasonExecuted})
		if d.Result != connector.Retry || d.HTTPStatus != 0 || d.Err == nil {
			t.Errorf("delivery = %+v", d)
		}
		noSecret(t, d)
	})
	t.Run("client timeout", func(t *testing.T) {
		b := setupNotify(t, func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // the client gives up and closes the connection
		})
		d := Notify(context.Background(), &http.Client{Timeout: 100 * time.Millisecond}, b.cb, b.md, Event{Status: StatusCompleted, Reason: ReasonExecuted})
		if d.Result != connector.Retry || d.Err == nil || !strings.Contains(d.Err.Error(), "timed out") {
			t.Errorf("delivery = %+v", d)
		}
		noSecret(t, d)
	})
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		cb := Callback{URL: "http://" + addr + "/callback/cb-path-8a1f?t=q-token-3b7e", Headers: map[string]string{"Authorization": testCBSecret}}
		d := Notify(context.Background(), nil, cb, Metadata{UID: testUID}, Event{Status: StatusCompleted, Reason: ReasonExecuted})
		if d.Result != connector.Retry || d.Err == nil || !strings.Contains(d.Err.Error(), addr) {
			t.Errorf("delivery = %+v", d)
		}
		noSecret(t, d)
	})
}

// A receiver that answers 200 and then never stops writing must not hold Notify.
func TestNotifyReadsABoundedAnswer(t *testing.T) {
	stop := make(chan struct{})
	b := setupNotify(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		chunk := []byte(strings.Repeat("x", 1024))
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			select {
			case <-stop: // the test is over: let the server close
				return
			default:
			}
		}
	})
	t.Cleanup(func() { close(stop) }) // runs before the server's Close
	done := make(chan connector.Delivery, 1)
	go func() {
		done <- Notify(context.Background(), nil, b.cb, b.md, Event{Status: StatusCompleted, Reason: ReasonExecuted})
	}()
	select {
	case d := <-done:
		if d.Result != connector.Delivered {
			t.Errorf("delivery = %+v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Notify still reading an endless answer")
	}
}

func TestNotifyRefusesWhatItCannotSend(t *testing.T) {
	tests := []struct {
		name string
		cb   Callback
		ev   Event
	}{
		{"relative url", Callback{URL: "/callback/cb-path-8a1f"}, Event{Status: StatusCompleted, Reason: ReasonExecuted}},
		{"header with newline", Callback{URL: "https://x.example/cb", Headers: map[string]string{"Authorization": testCBSecret + "\n"}}, Event{Status: StatusCompleted, Reason: ReasonExecuted}},
		{"bad pair", Callback{URL: "https://x.example/cb"}, Event{Status: StatusDenied, Reason: ReasonExecuted}},
		{"unknown status", Callback{URL: "https://x.example/cb"}, Event{Status: "failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Notify(context.Background(), nil, tt.cb, Metadata{UID: testUID}, tt.ev)
			if d.Result != connector.Rejected || d.Err == nil || d.HTTPStatus != 0 {
				t.Errorf("delivery = %+v", d)
			}
			noSecret(t, d)
		})
	}
}
