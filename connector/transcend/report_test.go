package transcend

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

func TestReportSendsThePrivacySystemsMapping(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		identifier string
		outcome    string
		errorCode  string
		wantBody   string
	}{
		{"deleted", testIdentifier, "deleted", "", `{"profiles":[{"profileId":"` + testIdentifier + `"}]}`},
		{"not found", testIdentifier, "not_found", "USER_NOT_FOUND", `{"profiles":[{"profileId":"` + testIdentifier + `"}],"profileStatus":"SKIPPED"}`},
		{"rejected", testIdentifier, "rejected", "INVALID_FIELD", `{"profiles":[{"profileId":"` + testIdentifier + `"}],"profileStatus":"ERROR","message":"Knot erasure failed: rejected (INVALID_FIELD)"}`},
		{"invalid", testIdentifier, "invalid", "invalid_external_user_id", `{"profiles":[{"profileId":"` + testIdentifier + `"}],"profileStatus":"ERROR","message":"Knot erasure failed: invalid (invalid_external_user_id)"}`},
		{"exhausted without a code", testIdentifier, "exhausted", "", `{"profiles":[{"profileId":"` + testIdentifier + `"}],"profileStatus":"ERROR","message":"Knot erasure failed: exhausted"}`},
		{"a code holding the identifier is left out", testIdentifier, "rejected", "x_" + testIdentifier, `{"profiles":[{"profileId":"` + testIdentifier + `"}],"profileStatus":"ERROR","message":"Knot erasure failed: rejected"}`},
		{"a code with spaces is left out", testIdentifier, "exhausted", "user SECRET gone", `{"profiles":[{"profileId":"` + testIdentifier + `"}],"profileStatus":"ERROR","message":"Knot erasure failed: exhausted"}`},
		{"no identifier: the nonce says whose", "", "deleted", "", `{}`},
		{"no identifier, not found", "", "not_found", "", `{"profileStatus":"SKIPPED"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, Config{SombraKey: testSombra}, serveBody(200, `{}`))
			d := c.Report(context.Background(), testNonce, tt.identifier, tt.outcome, tt.errorCode)
			if d.Result != connector.Delivered || d.HTTPStatus != 200 || d.Err != nil {
				t.Fatalf("Report = %+v", d)
			}
			got := b.requests()[0]
			if got.method != "PUT" || got.path != "/v1/data-silo" || got.rawQuery != "" {
				t.Errorf("sent %s %s?%s, want PUT /v1/data-silo", got.method, got.path, got.rawQuery)
			}
			if got.body != tt.wantBody {
				t.Errorf("body = %s\nwant   %s", got.body, tt.wantBody)
			}
			for h, want := range map[string]string{
				"X-Transcend-Nonce":      testNonce,
				"Authorization":          "Bearer " + testKey,
				"X-Sombra-Authorization": "Bearer " + testSombra,
				"Content-Type":           "application/json",
			} {
				if v := got.header.Get(h); v != want {
					t.Errorf("%s = %q, want %q", h, v, want)
				}
			}
		})
	}
}

func TestReportClassifiesTheAnswer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		header []string
		want   connector.Result
		wait   time.Duration
		inErr  string
	}{
		{200, nil, connector.Delivered, 0, ""},
		{204, nil, connector.Delivered, 0, ""},
		{409, nil, connector.Closed, 0, ""},
		{400, nil, connector.Rejected, 0, "400"},
		{413, nil, connector.Rejected, 0, "413"},
		{401, nil, connector.Unauthorized, 0, "TRANSCEND_API_KEY"},
		{429, []string{"Retry-After", "12"}, connector.RateLimited, 12 * time.Second, "429"},
		{500, nil, connector.Retry, 0, "500"},
		{502, nil, connector.Retry, 0, "502"},
	}
	for _, tt := range tests {
		c, _ := setup(t, Config{}, serveBody(tt.status, `{"message":"`+testIdentifier+` `+testNonce+`"}`, tt.header...))
		d := c.Report(context.Background(), testNonce, testIdentifier, "deleted", "")
		if d.Result != tt.want || d.HTTPStatus != tt.status || d.RetryAfter != tt.wait {
			t.Errorf("%d: %+v, want %s waiting %s", tt.status, d, tt.want, tt.wait)
		}
		if d.Result.Done() != (d.Err == nil) {
			t.Errorf("%d: done %v but error %v", tt.status, d.Result.Done(), d.Err)
		}
		if d.Err != nil {
			msg := d.Err.Error()
			if !strings.Contains(msg, tt.inErr) || strings.Contains(msg, "SECRET") || strings.Contains(msg, testKey) {
				t.Errorf("%d: error %q should say %q and nothing secret", tt.status, msg, tt.inErr)
			}
		}
	}
}

// What cannot be sent is refused without a call, and says why without the nonce.
func TestReportRefusesWhatCannotBeSent(t *testing.T) {
	t.Parallel()
	c, b := setup(t, Config{}, serveBody(200, `{}`))
	tests := []struct {
		name, nonce, outcome, inErr string
	}{
		{"no nonce", "", "deleted", "nonce is empty"},
		{"nonce with a line break", "SECRETNONCE\r\nX-Evil: 1", "deleted", "nonce is not usable as a header value"},
		{"unknown outcome", testNonce, "maybe", `outcome "maybe" has no Transcend status`},
		{"no outcome", testNonce, "", `outcome "" has no Transcend status`},
	}
	for _, tt := range tests {
		d := c.Report(context.Background(), tt.nonce, testIdentifier, tt.outcome, "")
		if d.Result != connector.Rejected || d.HTTPStatus != 0 || d.Err == nil {
			t.Errorf("%s: %+v, want a rejection without a call", tt.name, d)
			continue
		}
		if msg := d.Err.Error(); !strings.Contains(msg, tt.inErr) || strings.Contains(msg, "SECRET") {
			t.Errorf("%s: error %q should say %q and nothing secret", tt.name, msg, tt.inErr)
		}
	}
	if n := len(b.requests()); n != 0 {
		t.Errorf("%d requests sent, want none", n)
	}
}

func TestReportWithoutAnAnswer(t *testing.T) {
	t.Parallel()
	c, _ := setup(t, Config{BaseURL: "/secret-prefix", HTTP: &http.Client{Timeout: 50 * time.Millisecond}}, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	d := c.Report(context.Background(), testNonce, testIdentifier, "deleted", "")
	if d.Result != connector.Retry || d.HTTPStatus != 0 || d.Err == nil {
		t.Fatalf("a timeout gave %+v", d)
	}
	if msg := d.Err.Error(); strings.Contains(msg, "secret-prefix") || strings.Contains(msg, "SECRET") {
		t.Errorf("error %q shows the path or a secret", msg)
	}
}

// Issue 23: a report names the person by its own copy of the identifier, which the request's
// pseudonymisation does not touch; a report stored without one (by the previous release, or
// requeued after failing) falls back to the request's raw id, and leaves the profiles out once
// the request has none.
func TestDeliverNamesThePersonByTheReportsOwnCopy(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, credentials, requestID, wantBody string
	}{
		{"its own copy, the request pseudonymised", `{"nonce":"` + testNonce + `","identifier":"` + testIdentifier + `"}`, "",
			`{"profiles":[{"profileId":"` + testIdentifier + `"}]}`},
		{"no copy: the request's raw id", `{"nonce":"` + testNonce + `"}`, testIdentifier,
			`{"profiles":[{"profileId":"` + testIdentifier + `"}]}`},
		{"no copy, the request pseudonymised: no profiles", `{"nonce":"` + testNonce + `"}`, "", `{}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, Config{}, serveBody(200, `{}`))
			d := deliverer{c}.Deliver(context.Background(), connector.Report{
				ID: 1, Credentials: []byte(tt.credentials), ExternalUserID: tt.requestID, Outcome: "deleted",
			})
			if d.Result != connector.Delivered || d.Err != nil {
				t.Fatalf("Deliver = %+v", d)
			}
			if got := b.requests()[0]; got.body != tt.wantBody || got.header.Get("X-Transcend-Nonce") != testNonce {
				t.Errorf("sent %s with nonce %q; want %s with the stored nonce", got.body, got.header.Get("X-Transcend-Nonce"), tt.wantBody)
			}
		})
	}
}

// The puller keeps the item's identifier beside its nonce, under the name the queue deletes when
// the report fails.
func TestAPulledItemsReportKeepsItsOwnCopyOfTheIdentifier(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(report{Nonce: testNonce, Identifier: testIdentifier})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil || m[connector.IdentifierCredential] != testIdentifier || m["nonce"] != testNonce {
		t.Errorf("credentials %s; want the nonce and the identifier under %q", b, connector.IdentifierCredential)
	}
}
