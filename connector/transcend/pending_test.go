package transcend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

const (
	testNonce      = "eyJhbGciOiJIUzI1NiJ9.SECRETNONCE.sig-_"
	testIdentifier = "SECRETUSER-0bd3e2a9"
)

// docExample is the reference's own example answer, with our silo and secrets marked.
var docExample = `{
  "items": [
    {
      "identifier": "` + testIdentifier + `",
      "type": "email",
      "coreIdentifier": "someone@example.com",
      "dataSiloId": "` + testSilo + `",
      "requestId": "14f448c3-6497-4991-9b04-1b979e6d3e5b",
      "nonce": "` + testNonce + `",
      "requestCreatedAt": "2022-03-20T08:06:52.520Z",
      "daysUntilOverdue": 29.5,
      "attributes": [{"key": "Plan", "values": ["Pro"]}],
      "locale": "en",
      "dataSubjectType": "customer",
      "purpose": {"enabled": false, "purpose": "SaleOfInfo"}
    }
  ]
}`

func serveBody(status int, body string, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
}

func TestPendingPageAsksAsTheReferenceSays(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		cfg        Config
		limit      int
		offset     int
		wantPath   string
		wantQuery  string
		wantSombra string
	}{
		{"multi-tenant", Config{}, 100, 0, "/v1/data-silo/" + testSilo + "/pending-requests/ERASURE", "limit=100&offset=0", ""},
		{"self-hosted", Config{SombraKey: testSombra}, 25, 50, "/v1/data-silo/" + testSilo + "/pending-requests/ERASURE", "limit=25&offset=50", "Bearer " + testSombra},
		{"path prefix kept", Config{BaseURL: "/sombra/"}, 1, 7, "/sombra/v1/data-silo/" + testSilo + "/pending-requests/ERASURE", "limit=1&offset=7", ""},
		{"silo id escaped", Config{DataSiloID: "a/b c"}, 10, 0, "/v1/data-silo/a%2Fb%20c/pending-requests/ERASURE", "limit=10&offset=0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, tt.cfg, serveBody(200, `{"items":[]}`))
			page, err := c.PendingPage(context.Background(), tt.limit, tt.offset)
			if err != nil || page.Len() != 0 {
				t.Fatalf("PendingPage: %+v, %v", page, err)
			}
			got := b.requests()[0]
			if got.method != "GET" || got.path != tt.wantPath || got.rawQuery != tt.wantQuery {
				t.Errorf("asked %s %s?%s, want GET %s?%s", got.method, got.path, got.rawQuery, tt.wantPath, tt.wantQuery)
			}
			if a := got.header.Get("Authorization"); a != "Bearer "+testKey {
				t.Errorf("authorization = %q", a)
			}
			if s := got.header.Get("X-Sombra-Authorization"); s != tt.wantSombra {
				t.Errorf("x-sombra-authorization = %q, want %q", s, tt.wantSombra)
			}
		})
	}
}

func TestPendingPageReadsTheReferenceExample(t *testing.T) {
	t.Parallel()
	c, _ := setup(t, Config{}, serveBody(200, docExample))
	page, err := c.PendingPage(context.Background(), 50, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := Item{
		RequestID: "14f448c3-6497-4991-9b04-1b979e6d3e5b", DataSiloID: testSilo, Identifier: testIdentifier,
		Type: "email", Nonce: testNonce, DaysUntilOverdue: 29.5, HasDeadline: true,
	}
	if len(page.Items) != 1 || page.Items[0] != want || len(page.Invalid) != 0 {
		t.Fatalf("page = %+v, want the one item %+v", page, want)
	}
}

// Each broken element is left out alone, named by index, field and (when usable) request id;
// the good elements around it are kept.
func TestPendingPageLeavesOutBrokenItemsOneByOne(t *testing.T) {
	t.Parallel()
	good := func(i int) map[string]any {
		return map[string]any{
			"identifier": fmt.Sprintf("%s-%d", testIdentifier, i), "type": "userId", "dataSiloId": testSilo,
			"requestId": fmt.Sprintf("req-%d", i), "nonce": fmt.Sprintf("%s-%d", testNonce, i), "daysUntilOverdue": 30,
		}
	}
	with := func(k string, v any) map[string]any {
		m := good(99)
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name      string
		element   any
		wantField string
		wantWhy   string
		wantReq   string
	}{
		{"not an object", []string{"x"}, "", reasonNotObject, ""},
		{"null element", nil, "", reasonNotObject, ""},
		{"no request id", with("requestId", nil), "requestId", reasonMissing, ""},
		{"blank request id", with("requestId", "  "), "requestId", reasonBlank, ""},
		{"numeric request id", with("requestId", 14), "requestId", reasonNotString, ""},
		{"no identifier", with("identifier", nil), "identifier", reasonMissing, "req-99"},
		{"blank identifier", with("identifier", " \t"), "identifier", reasonBlank, "req-99"},
		{"null identifier", with("identifier", json.RawMessage("null")), "identifier", reasonMissing, "req-99"},
		{"identifier with NUL", with("identifier", "SECRETUSER\x00"), "identifier", reasonControl, "req-99"},
		{"identifier with a lone surrogate", with("identifier", json.RawMessage(`"SECRETUSER\udc00"`)), "identifier", reasonBadUTF8, "req-99"},
		{"no nonce", with("nonce", nil), "nonce", reasonMissing, "req-99"},
		{"blank nonce", with("nonce", ""), "nonce", reasonBlank, "req-99"},
		{"nonce with a line break", with("nonce", testNonce+"\r\nX-Evil: 1"), "nonce", reasonNotHeader, "req-99"},
		{"nonce with a space", with("nonce", "SECRETNONCE two"), "nonce", reasonNotHeader, "req-99"},
		{"no data silo", with("dataSiloId", nil), "dataSiloId", reasonMissing, "req-99"},
		{"another data silo", with("dataSiloId", "other-silo"), "dataSiloId", reasonOtherSilo, "req-99"},
		{"numeric type", with("type", 3), "type", reasonUnsupported, "req-99"},
		{"days as a string", with("daysUntilOverdue", "30"), "daysUntilOverdue", reasonNotNumber, "req-99"},
		{"days beyond a century", with("daysUntilOverdue", 1e9), "daysUntilOverdue", reasonOutOfRange, "req-99"},
		{"days beyond float64", with("daysUntilOverdue", json.RawMessage("1e400")), "daysUntilOverdue", reasonOutOfRange, "req-99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body, _ := json.Marshal(map[string]any{"items": []any{good(1), tt.element, good(2)}})
			page, err := decodePage(body, testSilo)
			if err != nil {
				t.Fatalf("the whole page failed: %v", err)
			}
			if len(page.Items) != 2 || page.Items[0].RequestID != "req-1" || page.Items[1].RequestID != "req-2" {
				t.Errorf("good items = %+v, want req-1 and req-2", page.Items)
			}
			if len(page.Invalid) != 1 {
				t.Fatalf("invalid = %+v, want one", page.Invalid)
			}
			got := page.Invalid[0]
			if got.Index != 1 || got.Field != tt.wantField || got.Reason != tt.wantWhy || got.RequestID != tt.wantReq {
				t.Errorf("problem = %+v, want items[1] %s %s (request %q)", got, tt.wantField, tt.wantWhy, tt.wantReq)
			}
			if msg := got.Error(); strings.Contains(msg, "SECRET") || !strings.Contains(msg, tt.wantWhy) {
				t.Errorf("problem text %q leaks a secret or does not say why", msg)
			}
		})
	}
}

func TestPendingPageKeepsItemsWithoutADeadline(t *testing.T) {
	t.Parallel()
	for _, days := range []string{``, `,"daysUntilOverdue":null`} {
		body := `{"items":[{"identifier":"u","dataSiloId":"` + testSilo + `","requestId":"r","nonce":"n"` + days + `}]}`
		page, err := decodePage([]byte(body), testSilo)
		if err != nil || len(page.Items) != 1 || page.Items[0].HasDeadline {
			t.Errorf("%s: %+v, %v; want one item without a deadline", body, page, err)
		}
	}
	page, _ := decodePage([]byte(`{"items":[{"identifier":"u","dataSiloId":"`+testSilo+`","requestId":"r","nonce":"n","daysUntilOverdue":-2.25}]}`), testSilo)
	if it := page.Items[0]; !it.HasDeadline || it.DaysUntilOverdue != -2.25 {
		t.Errorf("an overdue item reads as %+v", it)
	}
}

func TestPendingPageFailures(t *testing.T) {
	t.Parallel()
	huge := `{"items":[` + strings.Repeat(`{"x":"`+strings.Repeat("a", 1000)+`"},`, maxPageBody/1000) + `{}]}`
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		want      connector.Result
		status    int
		wait      time.Duration
		wantInErr string
	}{
		{"401", serveBody(401, `{"message":"Unauthorized"}`), connector.Unauthorized, 401, 0, "TRANSCEND_API_KEY"},
		{"429 with Retry-After", serveBody(429, `{}`, "Retry-After", "7"), connector.RateLimited, 429, 7 * time.Second, "429"},
		{"500", serveBody(500, `{"message":"`+testIdentifier+`"}`), connector.Retry, 500, 0, "500"},
		{"503 with Retry-After", serveBody(503, ``, "Retry-After", "2"), connector.Retry, 503, 2 * time.Second, "503"},
		{"404", serveBody(404, `{}`), connector.Rejected, 404, 0, "404"},
		{"400", serveBody(400, `{}`), connector.Rejected, 400, 0, "400"},
		{"redirect", serveBody(302, ``, "Location", "/elsewhere"), connector.Retry, 302, 0, "302"},
		{"truncated 200", serveBody(200, `{"items":[{"identifier":"`+testIdentifier), connector.Retry, 200, 0, "not valid JSON"},
		{"html 200", serveBody(200, `<html>`+testIdentifier+`</html>`), connector.Retry, 200, 0, "not valid JSON"},
		{"empty 200", serveBody(200, ``), connector.Retry, 200, 0, "empty"},
		{"array 200", serveBody(200, `["`+testIdentifier+`"]`), connector.Retry, 200, 0, "not a JSON object"},
		{"no items", serveBody(200, `{"data":[]}`), connector.Retry, 200, 0, "items: missing"},
		{"items null", serveBody(200, `{"items":null}`), connector.Retry, 200, 0, "items: missing"},
		{"items not an array", serveBody(200, `{"items":{"identifier":"`+testIdentifier+`"}}`), connector.Retry, 200, 0, "items: not an array"},
		{"trailing data", serveBody(200, `{"items":[]} {"items":[]}`), connector.Retry, 200, 0, "not valid JSON"},
		{"oversized", serveBody(200, huge), connector.Retry, 200, 0, "larger than 8 MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t, Config{SombraKey: testSombra}, tt.handler)
			page, err := c.PendingPage(context.Background(), 100, 0)
			var pe *PullError
			if !errors.As(err, &pe) {
				t.Fatalf("got %+v, %v; want a *PullError", page, err)
			}
			if pe.Result != tt.want || pe.HTTPStatus != tt.status || pe.RetryAfter != tt.wait {
				t.Errorf("got %s %d wait %s, want %s %d wait %s", pe.Result, pe.HTTPStatus, pe.RetryAfter, tt.want, tt.status, tt.wait)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.wantInErr) {
				t.Errorf("error %q does not say %q", msg, tt.wantInErr)
			}
			for _, s := range []string{testKey, testSombra, testIdentifier, "SECRET"} {
				if strings.Contains(msg, s) {
					t.Errorf("error %q shows %q", msg, s)
				}
			}
		})
	}
}

func TestPendingPageWithoutAnAnswer(t *testing.T) {
	t.Parallel()
	block := make(chan struct{})
	c, _ := setup(t, Config{HTTP: &http.Client{Timeout: 50 * time.Millisecond}}, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	defer close(block)
	_, err := c.PendingPage(context.Background(), 10, 0)
	var pe *PullError
	if !errors.As(err, &pe) || pe.Result != connector.Retry || pe.HTTPStatus != 0 {
		t.Fatalf("a timeout gave %v", err)
	}
	if strings.Contains(err.Error(), "limit=") {
		t.Errorf("the error %q shows the URL's query", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.PendingPage(ctx, 10, 0)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled pull gave %v, want context.Canceled", err)
	}

	for _, lo := range [][2]int{{0, 0}, {101, 0}, {10, -1}} {
		_, err := c.PendingPage(context.Background(), lo[0], lo[1])
		if !errors.As(err, &pe) || pe.Result != connector.Rejected {
			t.Errorf("limit %d offset %d gave %v, want a rejection", lo[0], lo[1], err)
		}
	}
}

func TestDueAt(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		days float64
		want time.Time
	}{
		{30, at.AddDate(0, 0, 30)},
		{0, at},
		{-3, at.AddDate(0, 0, -3)},
		{0.5, at.Add(12 * time.Hour)},
		{29.99999999, at.AddDate(0, 0, 30)}, // rounded to the second
		{1e12, at.Add(36500 * 24 * time.Hour)},
		{-1e12, at.Add(-36500 * 24 * time.Hour)},
	}
	for _, tt := range tests {
		if got := DueAt(at, tt.days); !got.Equal(tt.want) {
			t.Errorf("DueAt(%v) = %v, want %v", tt.days, got, tt.want)
		}
	}
}

// An Item printed, logged or marshalled by mistake shows neither the identifier nor the nonce.
func TestItemNeverShowsItsSecrets(t *testing.T) {
	t.Parallel()
	it := Item{RequestID: "req-1", DataSiloID: testSilo, Identifier: testIdentifier, Type: "email", Nonce: testNonce, DaysUntilOverdue: 3, HasDeadline: true}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("pulled", "item", it)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("pulled", "item", it)
	js, _ := json.Marshal(it)
	for _, out := range []string{it.String(), fmt.Sprint(it), fmt.Sprintf("%+v", it), fmt.Sprintf("%#v", it), fmt.Sprintf("%v", []Item{it}), logs.String(), string(js)} {
		if strings.Contains(out, "SECRET") {
			t.Errorf("%q shows a secret", out)
		}
		if !strings.Contains(out, "req-1") {
			t.Errorf("%q does not name the request", out)
		}
	}
}
