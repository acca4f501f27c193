package webhook_test

import (
	"context"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
	"github.com/erasure-worker/erasure-worker/settings"
)

// A requeued request whose outcome changed is told again under a new webhook-id: under the old
// one, a receiver that drops repeats (as Standard Webhooks asks) would never hear the new
// outcome. A repeat of one outcome keeps its id.
func TestAChangedOutcomeIsANewMessage(t *testing.T) {
	t.Parallel()
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	fake, err := webhookfake.New(webhookfake.Options{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	env := map[string]string{"API_TOKEN": "t", "REPORT_WEBHOOK_URL": srv.URL + "/outcomes", "REPORT_WEBHOOK_SECRET": secret}
	set := settings.New("run", func(k string) string { return env[k] }, io.Discard)
	read := webhook.Connector{}.Declare(set)
	if _, err := set.Parse(nil); err != nil {
		t.Fatal(err)
	}
	d := read().Deliverer
	report := connector.Report{ID: 7, RequestRef: "r-7", Outcome: "exhausted", CompletedAt: time.Now()}
	for _, outcome := range []string{"exhausted", "exhausted", "deleted"} {
		report.Outcome = outcome
		if got := d.Deliver(context.Background(), report); got.Result != connector.Delivered {
			t.Fatalf("%s: %+v", outcome, got)
		}
	}
	events := fake.Events("r-7")
	if len(events) != 3 || events[0].WebhookID != events[1].WebhookID || !events[1].Repeat {
		t.Fatalf("a repeat of one outcome must keep its webhook-id: %+v", events)
	}
	if events[2].WebhookID == events[0].WebhookID || events[2].Repeat || events[2].Outcome != "deleted" {
		t.Fatalf("the changed outcome came as a repeat of the old message: %+v", events[2])
	}
	if st := fake.Stats(); st.ConflictingWebhookIDs != 0 {
		t.Fatalf("%d webhook-ids said two things", st.ConflictingWebhookIDs)
	}
}
