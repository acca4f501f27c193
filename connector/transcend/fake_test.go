package transcend_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/transcend"
	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
)

const (
	fakeKey  = "fake-api-key"
	fakeSilo = "silo-1"
)

func startFake(t *testing.T, opts transcendfake.Options) (*transcendfake.Server, string) {
	t.Helper()
	if opts.APIKey == "" {
		opts.APIKey = fakeKey
	}
	if opts.DataSiloID == "" {
		opts.DataSiloID = fakeSilo
	}
	fake := transcendfake.New(opts)
	srv := httptest.NewUnstartedServer(fake)
	base, release := context.WithCancel(context.Background())
	srv.Config.BaseContext = func(net.Listener) context.Context { return base }
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(release)
	return fake, srv.URL
}

func newClient(t *testing.T, cfg transcend.Config) *transcend.Client {
	t.Helper()
	if cfg.APIKey == "" {
		cfg.APIKey = fakeKey
	}
	if cfg.DataSiloID == "" {
		cfg.DataSiloID = fakeSilo
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 300 * time.Millisecond}
	}
	c, err := transcend.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pullAll pages as Transcend's CLI does: on while a page comes back full.
func pullAll(t *testing.T, c *transcend.Client) []transcend.Item {
	t.Helper()
	var all []transcend.Item
	for offset := 0; ; offset += transcend.MaxPageSize {
		page, err := c.PendingPage(context.Background(), transcend.MaxPageSize, offset)
		if err != nil {
			t.Fatalf("offset %d: %v", offset, err)
		}
		if len(page.Invalid) != 0 {
			t.Fatalf("the fake served invalid items: %v", page.Invalid)
		}
		all = append(all, page.Items...)
		if page.Len() < transcend.MaxPageSize {
			return all
		}
	}
}

// The client and the fake agree on the whole cron cycle: every item pulled once per poll,
// each reported with its own nonce and the status its outcome maps to, none left pending.
func TestPullAndReportEveryItemAgainstTheFake(t *testing.T) {
	t.Parallel()
	clock := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	fake, url := startFake(t, transcendfake.Options{SombraKey: "fake-sombra-key", Now: func() time.Time { return clock }})
	seeded := make([]transcendfake.Item, 250)
	for i := range seeded {
		seeded[i].DaysUntilOverdue = 30
	}
	fake.Add(seeded...)
	c := newClient(t, transcend.Config{BaseURL: url, SombraKey: "fake-sombra-key"})

	items := pullAll(t, c)
	if len(items) != 250 {
		t.Fatalf("pulled %d items, want 250", len(items))
	}
	// Unreported items come back on the next poll.
	if again := pullAll(t, c); len(again) != 250 || again[0] != items[0] {
		t.Fatalf("second poll pulled %d items", len(again))
	}
	for _, it := range items {
		if due := transcend.DueAt(clock, it.DaysUntilOverdue); !it.HasDeadline || !due.Equal(clock.AddDate(0, 0, 30)) {
			t.Fatalf("%v is due %v", it, due)
		}
	}

	outcomes := []string{"deleted", "not_found", "exhausted", "rejected", "invalid"}
	for i, it := range items {
		d := c.Report(context.Background(), it.Nonce, it.Identifier, outcomes[i%len(outcomes)], "http_500")
		if d.Result != connector.Delivered {
			t.Fatalf("report %d: %+v", i, d)
		}
	}
	st := fake.Stats()
	want := map[string]int64{"RESOLVED": 50, "SKIPPED": 50, "ERROR": 150}
	for k, v := range want {
		if st.ReportsByProfileStatus[k] != v {
			t.Errorf("reports by profile status = %v, want %v", st.ReportsByProfileStatus, want)
		}
	}
	if st.ItemsPending != 0 || st.ItemsReported != 250 || st.BadNonces+st.MismatchedProfileIDs+st.MalformedReports+st.BadCredentials != 0 {
		t.Errorf("stats = %+v", st)
	}
	if rep := fake.Reports()[items[2].RequestID][0]; rep.Message != "Knot erasure failed: exhausted (http_500)" {
		t.Errorf("failure message = %q", rep.Message)
	}
	if left := pullAll(t, c); len(left) != 0 {
		t.Errorf("%d items still pending after every report", len(left))
	}
	// A repeat (a replica killed mid-delivery) is closed, not an error.
	if d := c.Report(context.Background(), items[0].Nonce, items[0].Identifier, "deleted", ""); d.Result != connector.Closed || !d.Result.Done() {
		t.Errorf("a second report gave %+v, want closed", d)
	}
	if fake.Stats().DuplicateReports != 1 {
		t.Errorf("the fake did not count the duplicate")
	}
}

// Every fault the fake can inject reaches the worker as the result it is meant to exercise.
func TestFakeFaultsReachTheCallerClassified(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		faults transcendfake.Faults
		cfg    transcend.Config // over the good one
		pull   connector.Result // "" means a page
		report connector.Result
		wait   time.Duration
	}{
		{name: "none", pull: "", report: connector.Delivered},
		{name: "wrong key", cfg: transcend.Config{APIKey: "wrong"}, pull: connector.Unauthorized, report: connector.Unauthorized},
		{name: "another data silo", cfg: transcend.Config{DataSiloID: "silo-2"}, pull: connector.Unauthorized, report: connector.Delivered},
		{name: "rejected credentials", faults: transcendfake.Faults{Pull: transcendfake.FaultSet{RejectCredentials: true}, Report: transcendfake.FaultSet{RejectCredentials: true}},
			pull: connector.Unauthorized, report: connector.Unauthorized},
		{name: "errors", faults: transcendfake.Faults{Pull: transcendfake.FaultSet{ErrorRate: 1}, Report: transcendfake.FaultSet{ErrorRate: 1}},
			pull: connector.Retry, report: connector.Retry},
		{name: "outage", faults: transcendfake.Faults{Pull: transcendfake.FaultSet{OutageUntil: time.Now().Add(time.Hour)}, Report: transcendfake.FaultSet{OutageUntil: time.Now().Add(time.Hour)}},
			pull: connector.Retry, report: connector.Retry},
		{name: "rate limits", faults: transcendfake.Faults{Pull: transcendfake.FaultSet{RateLimitRate: 1, RetryAfter: transcendfake.Duration(4 * time.Second)}, Report: transcendfake.FaultSet{RateLimitRate: 1, RetryAfter: transcendfake.Duration(4 * time.Second)}},
			pull: connector.RateLimited, report: connector.RateLimited, wait: 4 * time.Second},
		{name: "hangs", faults: transcendfake.Faults{Pull: transcendfake.FaultSet{HangRate: 1}, Report: transcendfake.FaultSet{HangRate: 1}},
			pull: connector.Retry, report: connector.Retry},
		{name: "truncated page, revoked request", faults: transcendfake.Faults{Pull: transcendfake.FaultSet{TruncatedRate: 1}, Report: transcendfake.FaultSet{ConflictRate: 1}},
			pull: connector.Retry, report: connector.Closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake, url := startFake(t, transcendfake.Options{Faults: tt.faults})
			it := fake.Add(transcendfake.Item{Identifier: "user-1"})[0]
			cfg := tt.cfg
			cfg.BaseURL = url
			c := newClient(t, cfg)

			page, err := c.PendingPage(context.Background(), 10, 0)
			if tt.pull == "" {
				if err != nil || len(page.Items) != 1 || page.Items[0].Nonce != it.Nonce {
					t.Errorf("pull: %+v, %v", page, err)
				}
			} else {
				var pe *transcend.PullError
				if !errors.As(err, &pe) || pe.Result != tt.pull || pe.RetryAfter != tt.wait {
					t.Errorf("pull: %v, want %s waiting %s", err, tt.pull, tt.wait)
				}
			}
			d := c.Report(context.Background(), it.Nonce, it.Identifier, "deleted", "")
			if d.Result != tt.report || d.RetryAfter != tt.wait {
				t.Errorf("report: %+v, want %s waiting %s", d, tt.report, tt.wait)
			}
		})
	}
}

func TestReportWithAnotherItemsNonceIsRefused(t *testing.T) {
	t.Parallel()
	fake, url := startFake(t, transcendfake.Options{})
	items := fake.Add(transcendfake.Item{Identifier: "user-1"}, transcendfake.Item{Identifier: "user-2"})
	c := newClient(t, transcend.Config{BaseURL: url})
	if d := c.Report(context.Background(), items[0].Nonce, "user-2", "deleted", ""); d.Result != connector.Rejected || d.HTTPStatus != 400 {
		t.Errorf("a report naming another identifier gave %+v", d)
	}
	if d := c.Report(context.Background(), "not-a-nonce", "user-1", "deleted", ""); d.Result != connector.Rejected || d.HTTPStatus != 400 {
		t.Errorf("a report with a forged nonce gave %+v", d)
	}
	if st := fake.Stats(); st.MismatchedProfileIDs != 1 || st.BadNonces != 1 || st.ItemsPending != 2 {
		t.Errorf("stats = %+v", st)
	}
}
