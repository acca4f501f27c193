package connector

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestFromAnswerClassifiesEveryReceiverTheSameWay(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		status     int
		retryAfter string
		closed     []int
		want       Result
		wantWait   time.Duration
	}{
		{status: 200, want: Delivered},
		{status: 204, want: Delivered},
		{status: 409, closed: []int{409}, want: Closed},
		{status: 409, want: Rejected},
		{status: 400, want: Rejected},
		{status: 401, want: Unauthorized},
		{status: 429, retryAfter: "7", want: RateLimited, wantWait: 7 * time.Second},
		{status: 429, retryAfter: "soon", want: RateLimited},
		{status: 429, retryAfter: "99999999999999999999", want: RateLimited, wantWait: MaxRetryAfter},
		{status: 429, retryAfter: now.Add(3 * time.Second).Format(http.TimeFormat), want: RateLimited, wantWait: 4 * time.Second},
		{status: 500, want: Retry},
		{status: 503, retryAfter: "2", want: Retry, wantWait: 2 * time.Second},
		{status: 408, want: Retry},
		{status: 302, want: Retry},
	}
	for _, c := range cases {
		h := http.Header{}
		if c.retryAfter != "" {
			h.Set("Retry-After", c.retryAfter)
		}
		d := FromAnswer(c.status, h, now, c.closed...)
		if d.Result != c.want || d.RetryAfter != c.wantWait || d.HTTPStatus != c.status {
			t.Errorf("FromAnswer(%d, Retry-After %q, closed %v) = %+v, want %s waiting %s", c.status, c.retryAfter, c.closed, d, c.want, c.wantWait)
		}
		if d.Result.Done() != (d.Err == nil) {
			t.Errorf("FromAnswer(%d): done %v but error %v", c.status, d.Result.Done(), d.Err)
		}
	}
}

func TestFromErrorNamesTheHostButNeverThePathOrQuery(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(200 * time.Millisecond)
	}))
	defer srv.Close()
	secretURL := srv.URL + "/callbacks/secret-path?token=secret-token"
	client := &http.Client{Timeout: 20 * time.Millisecond}
	_, err := client.Post(secretURL, "application/json", strings.NewReader("{}"))
	if err == nil {
		t.Fatal("the post did not time out")
	}
	d := FromError(context.Background(), err)
	if d.Result != Retry {
		t.Errorf("a timeout gives %s, want retry", d.Result)
	}
	msg := d.Err.Error()
	if strings.Contains(msg, "secret") {
		t.Errorf("the error %q shows the URL's path or query", msg)
	}
	if !strings.Contains(msg, strings.TrimPrefix(srv.URL, "http://")) {
		t.Errorf("the error %q does not name the host", msg)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", secretURL, nil)
	_, err = http.DefaultClient.Do(req)
	if d := FromError(ctx, err); !errors.Is(d.Err, context.Canceled) || strings.Contains(d.Err.Error(), "secret") {
		t.Errorf("a cancelled post gives %v, want context.Canceled without the URL", d.Err)
	}
}
