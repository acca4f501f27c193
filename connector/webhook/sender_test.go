package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

// received is one request the test receiver saw.
type received struct {
	method, path string
	header       http.Header
	body         string
}

type senderBundle struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []received
	// answer writes the receiver's answer; nil answers 204.
	answer func(w http.ResponseWriter, r *http.Request)
}

func setupSender(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) (*Sender, *senderBundle) {
	t.Helper()
	b := &senderBundle{answer: answer}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.got = append(b.got, received{r.Method, r.URL.RequestURI(), r.Header.Clone(), string(body)})
		b.mu.Unlock()
		if b.answer == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		b.answer(w, r)
	}))
	t.Cleanup(b.srv.Close)
	s, err := NewSender(b.srv.URL+"/hooks/erasure?token=url-secret-7", vectorSecret, b.srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

func (b *senderBundle) requests() []received {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]received(nil), b.got...)
}

var (
	sendNow   = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	completed = time.Date(2026, 12, 2, 9, 59, 58, 123456789, time.FixedZone("CET", 3600))
)

func TestSendPostsASignedStandardWebhook(t *testing.T) {
	t.Parallel()
	tests := []struct {
		outcome   Outcome
		wantBody  string
		wantEvent string
	}{
		{Outcome{RequestRef: "r-1", Outcome: "deleted", CompletedAt: completed},
			`{"type":"erasure.succeeded","timestamp":"2026-12-02T08:59:58.123456Z","data":{"request_ref":"r-1","outcome":"deleted","error_code":null,"completed_at":"2026-12-02T08:59:58.123456Z"}}`,
			EventSucceeded},
		{Outcome{RequestRef: "r-2", Outcome: "not_found", ErrorCode: "USER_NOT_FOUND", CompletedAt: completed},
			`{"type":"erasure.succeeded","timestamp":"2026-12-02T08:59:58.123456Z","data":{"request_ref":"r-2","outcome":"not_found","error_code":"USER_NOT_FOUND","completed_at":"2026-12-02T08:59:58.123456Z"}}`,
			EventSucceeded},
		{Outcome{RequestRef: "r-3", Outcome: "rejected", ErrorCode: "INVALID_FIELD", CompletedAt: completed},
			`{"type":"erasure.failed","timestamp":"2026-12-02T08:59:58.123456Z","data":{"request_ref":"r-3","outcome":"rejected","error_code":"INVALID_FIELD","completed_at":"2026-12-02T08:59:58.123456Z"}}`,
			EventFailed},
		{Outcome{RequestRef: "r-4", Outcome: "invalid", ErrorCode: "invalid_external_user_id", CompletedAt: completed},
			`{"type":"erasure.failed","timestamp":"2026-12-02T08:59:58.123456Z","data":{"request_ref":"r-4","outcome":"invalid","error_code":"invalid_external_user_id","completed_at":"2026-12-02T08:59:58.123456Z"}}`,
			EventFailed},
		{Outcome{RequestRef: "r-5 <&>", Outcome: "exhausted", CompletedAt: completed},
			`{"type":"erasure.failed","timestamp":"2026-12-02T08:59:58.123456Z","data":{"request_ref":"r-5 \u003c\u0026\u003e","outcome":"exhausted","error_code":null,"completed_at":"2026-12-02T08:59:58.123456Z"}}`,
			EventFailed},
	}
	for _, tt := range tests {
		t.Run(tt.outcome.Outcome, func(t *testing.T) {
			t.Parallel()
			s, b := setupSender(t, nil)
			d := s.Send(context.Background(), "msg_report_42", tt.outcome, sendNow)
			if d.Result != connector.Delivered || d.HTTPStatus != 204 || d.Err != nil {
				t.Fatalf("Send = %+v, want delivered", d)
			}
			got := b.requests()
			if len(got) != 1 {
				t.Fatalf("the receiver saw %d requests", len(got))
			}
			r := got[0]
			if r.method != "POST" || r.path != "/hooks/erasure?token=url-secret-7" {
				t.Errorf("%s %s, want POST to the configured URL", r.method, r.path)
			}
			if r.body != tt.wantBody {
				t.Errorf("body\n%s\nwant\n%s", r.body, tt.wantBody)
			}
			ts := strconv.FormatInt(sendNow.Unix(), 10)
			wantSig := hmacV1(t, vectorSecret, "msg_report_42", sendNow.Unix(), tt.wantBody)
			for k, want := range map[string]string{
				"Content-Type": "application/json", HeaderID: "msg_report_42", HeaderTimestamp: ts, HeaderSignature: wantSig,
			} {
				if v := r.header.Get(k); v != want {
					t.Errorf("%s: %q, want %q", k, v, want)
				}
			}
			if err := Verify(vectorSecret, r.header, []byte(r.body), sendNow.Add(time.Minute), 0); err != nil {
				t.Errorf("Verify refuses what Send sent: %v", err)
			}
			if typ, _ := EventType(tt.outcome.Outcome); typ != tt.wantEvent {
				t.Errorf("EventType(%s) = %s", tt.outcome.Outcome, typ)
			}
		})
	}
}

// A retry of one report must carry the same webhook-id and body; only the timestamp and hence
// the signature change.
func TestSendRetryKeepsIDAndBody(t *testing.T) {
	t.Parallel()
	s, b := setupSender(t, nil)
	o := Outcome{RequestRef: "r-1", Outcome: "deleted", CompletedAt: completed}
	s.Send(context.Background(), "msg_7", o, sendNow)
	s.Send(context.Background(), "msg_7", o, sendNow.Add(90*time.Second))
	got := b.requests()
	if len(got) != 2 {
		t.Fatalf("%d requests", len(got))
	}
	if got[0].body != got[1].body || got[0].header.Get(HeaderID) != got[1].header.Get(HeaderID) {
		t.Errorf("the retry changed id or body:\n%v %s\n%v %s", got[0].header, got[0].body, got[1].header, got[1].body)
	}
	if got[0].header.Get(HeaderTimestamp) == got[1].header.Get(HeaderTimestamp) {
		t.Errorf("the retry kept the old webhook-timestamp; a receiver would refuse it once stale")
	}
}

func TestSendClassifiesTheAnswer(t *testing.T) {
	t.Parallel()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the redirect was followed to %s", r.URL)
	}))
	defer other.Close()
	tests := []struct {
		name     string
		status   int
		header   map[string]string
		want     connector.Result
		wantWait time.Duration
	}{
		{"200", 200, nil, connector.Delivered, 0},
		{"202", 202, nil, connector.Delivered, 0},
		{"401 pauses the connector", 401, nil, connector.Unauthorized, 0},
		{"429 with Retry-After", 429, map[string]string{"Retry-After": "7"}, connector.RateLimited, 7 * time.Second},
		{"500", 500, nil, connector.Retry, 0},
		{"503 with Retry-After", 503, map[string]string{"Retry-After": "3"}, connector.Retry, 3 * time.Second},
		{"409 means nothing special here", 409, nil, connector.Rejected, 0},
		{"410", 410, nil, connector.Rejected, 0},
		{"400", 400, nil, connector.Rejected, 0},
		{"a redirect is not followed", 302, map[string]string{"Location": other.URL}, connector.Retry, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _ := setupSender(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, strings.Repeat("x", 1<<20)) // a long answer must not stall Send
			})
			d := s.Send(context.Background(), "msg_1", Outcome{RequestRef: "r", Outcome: "deleted", CompletedAt: completed}, sendNow)
			if d.Result != tt.want || d.HTTPStatus != tt.status || d.RetryAfter != tt.wantWait {
				t.Errorf("Send = %+v, want %s after %s", d, tt.want, tt.wantWait)
			}
			if d.Result.Done() != (d.Err == nil) {
				t.Errorf("result %s with error %v", d.Result, d.Err)
			}
		})
	}
}

func TestSendWithoutAnswerRetriesAndHidesTheURL(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	s, b := setupSender(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	d := s.Send(ctx, "msg_1", Outcome{RequestRef: "r", Outcome: "deleted", CompletedAt: completed}, sendNow)
	if d.Result != connector.Retry || d.HTTPStatus != 0 || !errors.Is(d.Err, context.DeadlineExceeded) {
		t.Fatalf("Send = %+v, want retry with the deadline", d)
	}
	msg := d.Err.Error()
	if strings.Contains(msg, "url-secret") || strings.Contains(msg, "/hooks") {
		t.Errorf("the error %q shows the URL's path or query", msg)
	}
	if !strings.Contains(msg, strings.TrimPrefix(b.srv.URL, "http://")) {
		t.Errorf("the error %q does not name the host", msg)
	}
}

func TestSendRefusesWhatCannotBeSent(t *testing.T) {
	t.Parallel()
	s, b := setupSender(t, nil)
	ok := Outcome{RequestRef: "r", Outcome: "deleted", CompletedAt: completed}
	tests := []struct {
		name string
		id   string
		o    Outcome
		want string
	}{
		{"empty id", "", ok, "webhook: message id: empty"},
		{"full stop in id", "msg.1", ok, "webhook: message id: byte 3 is not a letter, digit, _ or -"},
		{"newline in id", "msg\n1", ok, "webhook: message id: byte 3 is not a letter, digit, _ or -"},
		{"long id", strings.Repeat("m", 129), ok, "webhook: message id: 129 bytes, longer than 128"},
		{"no request_ref", "msg_1", Outcome{Outcome: "deleted", CompletedAt: completed}, "webhook: outcome: request_ref is empty"},
		{"pending", "msg_1", Outcome{RequestRef: "r", Outcome: "", CompletedAt: completed}, `webhook: outcome: outcome "" is not deleted, not_found, rejected, invalid or exhausted`},
		{"no completion time", "msg_1", Outcome{RequestRef: "r", Outcome: "exhausted"}, "webhook: outcome: completed_at is missing"},
	}
	for _, tt := range tests {
		d := s.Send(context.Background(), tt.id, tt.o, sendNow)
		if d.Result != connector.Rejected || d.Err == nil || d.Err.Error() != tt.want {
			t.Errorf("%s: Send = %+v, want rejected with %q", tt.name, d, tt.want)
		}
	}
	if n := len(b.requests()); n != 0 {
		t.Errorf("the receiver saw %d requests", n)
	}
}

func TestNewSenderNamesTheSettingAndShowsNoSecret(t *testing.T) {
	t.Parallel()
	const token = "tok31415"
	tests := []struct {
		name, url, secret, want string
	}{
		{"no URL", "", vectorSecret, "REPORT_WEBHOOK_URL: empty"},
		{"not a URL", "http://host/%zz?token=" + token, vectorSecret, "REPORT_WEBHOOK_URL: not a URL"},
		{"relative", "/hooks?token=" + token, vectorSecret, "REPORT_WEBHOOK_URL: must be an http:// or https:// URL"},
		{"ftp", "ftp://host/?token=" + token, vectorSecret, "REPORT_WEBHOOK_URL: must be an http:// or https:// URL"},
		{"no host", "https:///hooks?token=" + token, vectorSecret, "REPORT_WEBHOOK_URL: has no host"},
		{"fragment", "https://host/hooks#" + token, vectorSecret, "REPORT_WEBHOOK_URL: must not have a #fragment"},
		{"no secret", "https://host/", "", "REPORT_WEBHOOK_SECRET: bad secret: must start with whsec_"},
		{"short secret", "https://host/", "whsec_" + token, "REPORT_WEBHOOK_SECRET: bad secret: decodes to 6 bytes"},
	}
	for _, tt := range tests {
		_, err := NewSender(tt.url, tt.secret, nil)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s: NewSender = %v, want %q", tt.name, err, tt.want)
			continue
		}
		if strings.Contains(err.Error(), token) {
			t.Errorf("%s: the error %q shows the URL or the secret", tt.name, err)
		}
	}
	s, err := NewSender("https://user:pw-2718@receiver.example/hooks?token="+token, vectorSecret, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmtAll(s), fmtAll(*s)} {
		for _, secret := range []string{token, "pw-2718", "MfKQ9r8G"} {
			if strings.Contains(out, secret) {
				t.Errorf("printing the Sender shows %q: %s", secret, out)
			}
		}
	}
}

// fmtAll prints v every way a log line might.
func fmtAll(v any) string {
	return fmt.Sprintf("%v %+v %#v %s", v, v, v, v)
}
