package connector

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/knotclient"
)

// FuzzParseLine feeds arbitrary lines to enqueue's parser. Whatever it accepts must be a
// request the worker can send unchanged; a JSON line it accepts must say the same thing when
// written back and read again.
func FuzzParseLine(f *testing.F) {
	for _, seed := range []struct {
		csv  bool
		line string
	}{
		{false, `{"request_ref":"r1","external_user_id":"u1"}`},
		{false, `{"request_ref":"r1","external_user_id":"u1","due_at":"2030-01-02T03:04:05Z"}`},
		{false, `{"request_ref":"r1","external_user_id":"u1","due_at":"2030-01-02"}`},
		{false, `{"request_ref":"r1","external_user_id":"\u0000"}`},
		{false, `{"request_ref":"r1","external_user_id":"  "}`},
		{false, `{"request_ref":1,"external_user_id":"u"}`},
		{false, `{"request_ref":"r","external_user_id":"u"} {}`},
		{false, "{\"request_ref\":\"r\",\"external_user_id\":\"\xff\"}"},
		{true, `request_ref,external_user_id,due_at`},
		{true, `c1,"u,1",2030-01-02`},
		{true, `c1,"unclosed`},
		{true, `c1`},
	} {
		f.Add(seed.csv, []byte(seed.line))
	}
	f.Fuzz(func(t *testing.T, csv bool, line []byte) {
		p := LineParser{CSV: csv}
		req, skip, err := p.Parse(line)
		if err != nil || skip {
			return
		}
		if !utf8.Valid(line) {
			t.Fatalf("accepted invalid UTF-8 %q", line)
		}
		if strings.TrimSpace(req.RequestRef) == "" || strings.ContainsRune(req.RequestRef, 0) {
			t.Fatalf("accepted request_ref %q", req.RequestRef)
		}
		if err := knotclient.ValidateExternalUserID(req.ExternalUserID); err != nil {
			t.Fatalf("accepted an id the worker would refuse: %v", err)
		}
		if csv {
			return
		}
		rec := map[string]string{"request_ref": req.RequestRef, "external_user_id": req.ExternalUserID}
		if !req.DueAt.IsZero() {
			rec["due_at"] = req.DueAt.Format(time.RFC3339Nano)
		}
		again, _ := json.Marshal(rec)
		var p2 LineParser
		back, _, err := p2.Parse(again)
		if err != nil {
			t.Fatalf("re-reading %s: %v", again, err)
		}
		if back.RequestRef != req.RequestRef || back.ExternalUserID != req.ExternalUserID || !back.DueAt.Equal(req.DueAt) {
			t.Fatalf("round trip changed the request: %+v -> %+v", req, back)
		}
	})
}
