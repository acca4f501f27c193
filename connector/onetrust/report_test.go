package onetrust_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/onetrust"
	"github.com/erasure-worker/erasure-worker/connector/onetrust/onetrustfake"
	"github.com/erasure-worker/erasure-worker/settings"
)

// setup returns the connector's parts configured as a user would, against srv.
func setup(t *testing.T, url string, extra map[string]string) *connector.Parts {
	t.Helper()
	env := map[string]string{"ONETRUST_INBOUND_TOKEN": conformanceInbound, "ONETRUST_URL": url,
		"ONETRUST_CLIENT_ID": conformanceClientID, "ONETRUST_CLIENT_SECRET": conformanceSecret}
	for k, v := range extra {
		env[k] = v
	}
	s := settings.New("run", func(k string) string { return env[k] }, io.Discard)
	read := onetrust.Connector{}.Declare(s)
	if _, err := s.Parse(nil); err != nil {
		t.Fatal(err)
	}
	parts := read()
	if s.Err() != nil || parts == nil {
		t.Fatalf("settings: %v", s.Err())
	}
	return parts
}

// fakeBundle is a fake OneTrust serving on loopback, and the deliverer configured against it.
type fakeBundle struct {
	fake *onetrustfake.Server
	d    connector.Deliverer
}

func setupFake(t *testing.T, opts onetrustfake.Options) *fakeBundle {
	t.Helper()
	opts.ClientID, opts.ClientSecret = conformanceClientID, conformanceSecret
	fake := onetrustfake.New(opts)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return &fakeBundle{fake: fake, d: setup(t, srv.URL, nil).Deliverer}
}

// report is subtask id's report: at intake, or with its outcome.
func (b *fakeBundle) report(id, outcome string) connector.Report {
	return connector.Report{ID: 1, RequestRef: "onetrust:" + id, ExternalUserID: "person-" + id + "@example.com",
		Outcome: outcome, AtIntake: outcome == ""}
}

func (b *fakeBundle) subtask(id string) {
	b.fake.AddSubtask(id, onetrustfake.NewRefID(), "person-"+id+"@example.com")
}

// A token lives an hour at OneTrust, and a worker runs for weeks: the token that expires between
// two reports must be replaced, not sent, so that every report is delivered at its first try.
func TestEveryReportIsDeliveredWhileTokensExpire(t *testing.T) {
	t.Parallel()
	b := setupFake(t, onetrustfake.Options{TokenLifetime: time.Second})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprintf("expiring-%d", i)
			b.subtask(id)
			for _, outcome := range []string{"", "deleted"} {
				if d := b.d.Deliver(context.Background(), b.report(id, outcome)); d.Result != connector.Delivered {
					t.Errorf("%s %q: %s %v", id, outcome, d.Result, d.Err)
				}
				time.Sleep(1200 * time.Millisecond) // past the token's expires_in
			}
		})
	}
	wg.Wait()
	st := b.fake.Stats()
	if st.TokenFetches < 2 || st.TokenFetches > 4 {
		t.Errorf("%d tokens fetched for 16 reports over three token lifetimes, want one per lifetime", st.TokenFetches)
	}
	if st.Unauthorized != 0 {
		t.Errorf("%d calls carried an expired token", st.Unauthorized)
	}
}

// A token OneTrust revokes before its expires_in is refused (401): the connector fetches a new
// one, once for all the reports in flight, and sends each report again with it.
func TestARevokedTokenIsReplacedOnce(t *testing.T) {
	t.Parallel()
	b := setupFake(t, onetrustfake.Options{Faults: onetrustfake.Faults{RevokeAfter: onetrustfake.Duration(300 * time.Millisecond)}})
	for i := range 4 {
		b.subtask(fmt.Sprint("revoked-", i))
	}
	if d := b.d.Deliver(context.Background(), b.report("revoked-0", "")); d.Result != connector.Delivered {
		t.Fatalf("first report: %s %v", d.Result, d.Err)
	}
	time.Sleep(400 * time.Millisecond)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if d := b.d.Deliver(context.Background(), b.report(fmt.Sprint("revoked-", i), "not_found")); d.Result != connector.Delivered {
				t.Errorf("report %d after the revocation: %s %v", i, d.Result, d.Err)
			}
		})
	}
	wg.Wait()
	if st := b.fake.Stats(); st.TokenFetches != 2 {
		t.Errorf("%d tokens fetched, want 2: the first, and one to replace it when it was revoked", st.TokenFetches)
	}
}

// Credentials OneTrust refuses pause the lane (Unauthorized) with an error that names the
// settings to fix and holds none of their values.
func TestRefusedClientCredentialsNameTheSettings(t *testing.T) {
	t.Parallel()
	fake := onetrustfake.New(onetrustfake.Options{ClientID: conformanceClientID, ClientSecret: "another-secret"})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	fake.AddSubtask("refused-1", "ZASHMHK2K7", "person@example.com")
	d := setup(t, srv.URL, nil).Deliverer.Deliver(context.Background(),
		connector.Report{RequestRef: "onetrust:refused-1", Outcome: "deleted"})
	msg := fmt.Sprint(d.Err)
	if d.Result != connector.Unauthorized || !strings.Contains(msg, "ONETRUST_CLIENT_SECRET") || !strings.Contains(msg, "ONETRUST_CLIENT_ID") {
		t.Fatalf("%s %q, want unauthorized naming ONETRUST_CLIENT_ID and ONETRUST_CLIENT_SECRET", d.Result, msg)
	}
	if strings.Contains(msg, conformanceSecret) || strings.Contains(msg, conformanceClientID) {
		t.Fatalf("the error holds a credential: %q", msg)
	}
}

// OneTrust's 429 says which limit was met in its ot-* headers: the report waits at least its
// Retry-After, and its error tells the operator which limit and which setting to lower.
func TestA429WaitsAndNamesOneTrustsLimit(t *testing.T) {
	t.Parallel()
	b := setupFake(t, onetrustfake.Options{Faults: onetrustfake.Faults{RateLimitRate: 1, RetryAfter: onetrustfake.Duration(7 * time.Second)}})
	b.subtask("limited-1")
	d := b.d.Deliver(context.Background(), b.report("limited-1", "deleted"))
	if d.Result != connector.RateLimited || d.RetryAfter < 7*time.Second {
		t.Fatalf("%s after %v, want rate_limited for at least 7s", d.Result, d.RetryAfter)
	}
	if msg := fmt.Sprint(d.Err); !strings.Contains(msg, "20000 a minute") || !strings.Contains(msg, "ONETRUST_REPORT_RATE") {
		t.Errorf("error %q does not say which limit was met", msg)
	}
	if st := b.fake.Stats(); st.Updates["COMPLETED"] != 0 {
		t.Errorf("the fake took %d updates it answered 429", st.Updates["COMPLETED"])
	}
}

// A 429 of the hourly limit that gives no Retry-After must not be retried within the second:
// the report waits out what it can of the hour.
func TestA429OfTheHourlyLimitWithoutRetryAfterWaitsLong(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/access/v1/oauth/token" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"access_token":"t-1","token_type":"bearer","expires_in":3599}`)
			return
		}
		w.Header().Set("ot-period", "HOUR")
		w.Header().Set("ot-requests-allowed", "200000")
		w.Header().Set("ot-request-made", "200001")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	t.Cleanup(srv.Close)
	d := setup(t, srv.URL, nil).Deliverer.Deliver(context.Background(), connector.Report{RequestRef: "onetrust:hourly", Outcome: "deleted"})
	if d.Result != connector.RateLimited || d.RetryAfter < 5*time.Minute {
		t.Fatalf("%s after %v, want rate_limited for minutes", d.Result, d.RetryAfter)
	}
	if !strings.Contains(fmt.Sprint(d.Err), "200000 a hour") {
		t.Errorf("error %q does not name the hourly limit", d.Err)
	}
}

// The lane's pace stays inside OneTrust's published limits by default, and a setting above the
// per-minute limit is refused by name.
func TestThePaceStaysInsideOneTrustsLimits(t *testing.T) {
	t.Parallel()
	limit, burst := setup(t, "https://app-eu.onetrust.com", nil).Deliverer.(connector.Paced).Pace()
	if perHour := float64(limit) * 3600; perHour > 200_000 || float64(burst) > float64(limit)+1 {
		t.Errorf("default pace %v/s (burst %d): %v an hour, over OneTrust's 200,000", limit, burst, perHour)
	}
	if limit, _ := setup(t, "https://app-eu.onetrust.com", map[string]string{"ONETRUST_REPORT_RATE": "5"}).Deliverer.(connector.Paced).Pace(); limit != 5 {
		t.Errorf("ONETRUST_REPORT_RATE=5 paces at %v", limit)
	}
}

func TestSettingsAreRefusedByName(t *testing.T) {
	t.Parallel()
	full := map[string]string{"ONETRUST_INBOUND_TOKEN": "in", "ONETRUST_URL": "https://app-eu.onetrust.com",
		"ONETRUST_CLIENT_ID": "id", "ONETRUST_CLIENT_SECRET": "secret"}
	for _, tc := range []struct {
		name, setting string
		change        map[string]string
	}{
		{"no url", "ONETRUST_URL", map[string]string{"ONETRUST_URL": ""}},
		{"no client id", "ONETRUST_CLIENT_ID", map[string]string{"ONETRUST_CLIENT_ID": ""}},
		{"no client secret", "ONETRUST_CLIENT_SECRET", map[string]string{"ONETRUST_CLIENT_SECRET": ""}},
		{"url with credentials", "ONETRUST_URL", map[string]string{"ONETRUST_URL": "https://u:p@app.onetrust.com"}},
		{"url not absolute", "ONETRUST_URL", map[string]string{"ONETRUST_URL": "app.onetrust.com"}},
		{"secret with a newline", "ONETRUST_CLIENT_SECRET", map[string]string{"ONETRUST_CLIENT_SECRET": "secret\n"}},
		{"pace over the minute's limit", "ONETRUST_REPORT_RATE", map[string]string{"ONETRUST_REPORT_RATE": "400"}},
		{"client without the door", "ONETRUST_URL", map[string]string{"ONETRUST_INBOUND_TOKEN": ""}},
	} {
		env := map[string]string{}
		for k, v := range full {
			env[k] = v
		}
		for k, v := range tc.change {
			env[k] = v
		}
		s := settings.New("run", func(k string) string { return env[k] }, io.Discard)
		read := onetrust.Connector{}.Declare(s)
		if _, err := s.Parse(nil); err != nil {
			t.Fatal(err)
		}
		if parts := read(); parts != nil || s.Err() == nil || !strings.HasPrefix(s.Err().Error(), tc.setting) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, s.Err(), tc.setting)
		}
		if s.Err() != nil && strings.Contains(s.Err().Error(), "secret\n") {
			t.Errorf("%s: the error repeats the secret", tc.name)
		}
	}
}
