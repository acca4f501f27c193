package worker_test

import (
	"context"
	"strings"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

// The ids' limits are checked once, at intake, on what will be stored: a connector's prefix
// counts, and the refusal names the field as the sender's wire names it.
func TestIntakeRefusesAnIDThatIsTooLongWithItsPrefixNamingTheSendersField(t *testing.T) {
	t.Parallel()
	q := queue.New(queuetest.Pool(t))
	ctx := context.Background()
	api := connector.Info{Name: "webhook", Door: "api"}
	prefixed := connector.Info{Name: "ketch", RefPrefix: "ketch:"}
	prefixes := []string{"ketch:", "transcend:"}
	cases := []struct {
		name  string
		info  connector.Info
		req   connector.Request
		field string
		text  string
	}{
		{"ref over 255 bytes", api, connector.Request{ID: strings.Repeat("é", 128), ExternalUserID: "person-1"},
			"request_ref", "request_ref: 256 bytes, longer than 255"},
		{"id over 1024 bytes", api, connector.Request{ID: "r-1", ExternalUserID: strings.Repeat("x", 1057)},
			"external_user_id", "external_user_id: 1057 bytes, longer than 1024"},
		{"uid that passes alone but not with ketch:", prefixed,
			connector.Request{ID: strings.Repeat("u", 250), ExternalUserID: "person-1", IDField: "metadata.uid", UserField: "request.identities"},
			"metadata.uid", "metadata.uid: 250 bytes, longer than 249 (stored as request_ref with the prefix ketch:, 255 bytes at most)"},
		{"identity over 1024 bytes", prefixed,
			connector.Request{ID: "uid-1", ExternalUserID: strings.Repeat("7", 1025), IDField: "metadata.uid", UserField: "request.identities"},
			"request.identities", "request.identities: 1025 bytes, longer than 1024"},
		{"another connector's prefix", api, connector.Request{ID: "ketch:abc", ExternalUserID: "person-1"},
			"request_ref", "request_ref: the prefixes ketch: and transcend: are kept for the connectors' requests"},
	}
	for _, c := range cases {
		in := worker.NewIntake(q, worker.IntakeConfig{Info: c.info, Prefixes: prefixes})
		got, err := in.Submit(ctx, c.req, connector.Request{ID: "beside-" + c.name, ExternalUserID: "person-2"})
		if err != nil {
			t.Fatal(err)
		}
		if a := got[0]; a.Admission != connector.Refused || a.Err.Field != c.field || a.Err.Error() != c.text {
			t.Errorf("%s: admission %d, err %v; want refused naming %s: %q", c.name, a.Admission, a.Err, c.field, c.text)
		}
		if a := got[1]; a.Admission != connector.Inserted {
			t.Errorf("%s: the valid request beside it: admission %d, err %v", c.name, a.Admission, a.Err)
		}
		if _, err := in.Lookup(ctx, c.req.ID); err != connector.ErrNotFound {
			t.Errorf("%s: the refused request was stored (lookup: %v)", c.name, err)
		}
	}
}

// The queue deletes a report's copy of the raw id by the name the connectors keep it under.
func TestConnectorsAndTheQueueNameTheReportsCopyOfTheIDAlike(t *testing.T) {
	if connector.IdentifierCredential != queue.IdentifierCredential {
		t.Fatalf("connector.IdentifierCredential %q, queue.IdentifierCredential %q: a failed report would keep the raw id",
			connector.IdentifierCredential, queue.IdentifierCredential)
	}
}
