package queue

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// No way of printing a row puts its external_user_id or a report's credentials in a log.
func TestRowsPrintWithoutIDsOrCredentials(t *testing.T) {
	t.Parallel()
	const id, cred = "person-4711@example.com", "nonce-s3cr3t"
	creds := []byte(`{"nonce":"` + cred + `"}`)
	values := []any{
		NewRequest{RequestRef: "r1", ExternalUserID: id, Reports: []NewReport{{Connector: "c", Credentials: creds}}},
		NewReport{Connector: "c", Credentials: creds},
		Job{ID: 1, RequestRef: "r1", ExternalUserID: id},
		Report{ID: 1, RequestRef: "r1", ExternalUserID: id, Credentials: creds},
		Record{ID: 1, RequestRef: "r1", ExternalUserID: id},
		Identified{ID: 1, ExternalUserID: id},
		Pseudonym{ID: 1, Raw: id, Pseudonym: "hmac-sha256:00"},
	}
	for _, v := range values {
		var logged bytes.Buffer
		slog.New(slog.NewJSONHandler(&logged, nil)).Info("row", "row", v)
		out := fmt.Sprintf("%v %+v %#v %s", v, v, v, v) + logged.String()
		if strings.Contains(out, id) || strings.Contains(out, cred) {
			t.Errorf("%T prints what it must not: %s", v, out)
		}
	}
}
