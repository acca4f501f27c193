package ketch_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
	"github.com/erasure-worker/erasure-worker/settings"
)

// saidIntake records what a door says it refused, and stores nothing.
type saidIntake struct {
	refused []connector.Refusal
	denied  []string // the ids denied, as Denied recorded them
}

func (s *saidIntake) Submit(context.Context, ...connector.Request) ([]connector.Admitted, error) {
	panic("a refused request reached intake")
}
func (s *saidIntake) Lookup(context.Context, string) (connector.Record, error) {
	return connector.Record{}, connector.ErrNotFound
}
func (s *saidIntake) Refused(r connector.Refusal, field string) { s.refused = append(s.refused, r) }
func (s *saidIntake) Denied(_ context.Context, id string, r connector.Refusal, field string) error {
	s.Refused(r, field)
	s.denied = append(s.denied, id+" "+field)
	return nil
}

// A KETCH_IDENTITY_SPACE that names no identity Ketch sends (a typo) denies every request, which
// Ketch takes as an answer: the door says each denial, so it is logged and counted, never silent,
// and keeps its record (the request and the field at fault), since Ketch closes the request.
func TestADenialForWantOfAnIdentityIsSaid(t *testing.T) {
	t.Parallel()
	env := map[string]string{"KETCH_AUTH_VALUE": "Bearer k", "KETCH_IDENTITY_SPACE": "acount_id"} // sic
	s := settings.New("run", func(k string) string { return env[k] }, io.Discard)
	read := ketch.Connector{}.Declare(s)
	if _, err := s.Parse(nil); err != nil {
		t.Fatal(err)
	}
	in := &saidIntake{}
	var logs bytes.Buffer
	h := read().Door.Routes(in, slog.New(slog.NewJSONHandler(&logs, nil)))["POST /v1/ketch"]

	fake := ketchfake.New(ketchfake.Options{CallbackBaseURL: "https://cb.example"}) // its identities are in account_id
	req := httptest.NewRequest("POST", "/v1/ketch", bytes.NewReader(fake.DeleteRequest("uid-1", "person-1@example.com")))
	req.Header.Set("Authorization", "Bearer k")
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)

	if w.Code != http.StatusOK || !bytes.Contains(w.Body.Bytes(), []byte("insufficient_identification")) {
		t.Fatalf("answer %d %s, want 200 denied/insufficient_identification", w.Code, w.Body)
	}
	if len(in.refused) != 1 || in.refused[0] != connector.RefusedUnidentified {
		t.Fatalf("the door said %v, want one refusal for want of an identity", in.refused)
	}
	if len(in.denied) != 1 || in.denied[0] != "uid-1 request.identities" {
		t.Fatalf("denials recorded: %q, want the request uid-1 for request.identities", in.denied)
	}
}
