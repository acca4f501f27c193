package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/onetrust"
	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
)

const (
	testBearer = "inbound-secret-81c2e0"
	testID     = "client-id-4d6e"
	testSecret = "client-secret-ab12f7"
)

// door takes pushed subtasks as the worker's door would, keeping their bodies.
type door struct {
	ts     *httptest.Server
	mu     sync.Mutex
	bodies []onetrust.Subtask
}

func newDoor(t *testing.T) *door {
	d := &door{}
	d.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testBearer {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		b, _ := io.ReadAll(r.Body)
		st, err := onetrust.ParseSubtask(b)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		d.bodies = append(d.bodies, st)
		d.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(d.ts.Close)
	return d
}

// The binary as the lead's end-to-end test and the demo drive it: it pushes subtasks, takes
// their statuses with the tokens it issues to the client in the environment, counts them in its
// stats, and logs no credential.
func TestServePushesTakesStatusesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := fakekittest.Env(map[string]string{"ONETRUST_CLIENT_ID": testID, "ONETRUST_CLIENT_SECRET": testSecret})
	b := fakekittest.Start(t, "onetrustfake", func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0", "-token-lifetime", "2s"}, env, stdout, stderr)
	})
	d := newDoor(t)
	var res struct {
		Sent       int            `json:"sent"`
		Answers    map[string]int `json:"answers"`
		SubtaskIDs []string       `json:"subtask_ids"`
	}
	code := fakekittest.Do(t, "POST", b.Base+"/_fake/push", `{"target":"`+d.ts.URL+`","bearer":"`+testBearer+`","count":3,"user_prefix":"knot-user-","due_in":"720h"}`, &res)
	if code != 200 || res.Sent != 3 || res.Answers["202"] != 3 || len(res.SubtaskIDs) != 3 {
		t.Fatalf("push: %d %+v", code, res)
	}
	d.mu.Lock()
	pushed := append([]onetrust.Subtask(nil), d.bodies...)
	d.mu.Unlock()
	if len(pushed) != 3 || pushed[0].DueAt.IsZero() || len(pushed[0].RequestRefID) != 10 || !strings.HasPrefix(pushed[0].ExternalUserID, "knot-user-") {
		t.Fatalf("pushed %v", pushed)
	}

	cl := onetrust.NewClient(b.Base, testID, testSecret, nil)
	for _, id := range res.SubtaskIDs {
		for _, status := range []string{onetrust.StatusInProgress, onetrust.StatusCompleted} {
			if got := cl.Put(ctx, onetrust.Update{SubtaskID: id, Status: status, Comment: "c"}); got.Result != connector.Delivered {
				t.Fatalf("%s %s: %+v", id, status, got)
			}
		}
	}
	var st struct {
		Pushed           int64            `json:"pushed"`
		TokenFetches     int64            `json:"token_fetches"`
		Updates          map[string]int64 `json:"updates"`
		SubtasksOneFinal int64            `json:"subtasks_one_final"`
	}
	fakekittest.Do(t, "GET", b.Base+"/_fake/stats", "", &st)
	if st.Pushed != 3 || st.TokenFetches != 1 || st.Updates["IN_PROGRESS"] != 3 || st.SubtasksOneFinal != 3 {
		t.Errorf("stats = %+v", st)
	}
	var rec struct {
		Status  string `json:"status"`
		Updates []struct {
			Status string `json:"status"`
		} `json:"updates"`
	}
	if fakekittest.Do(t, "GET", b.Base+"/_fake/subtasks/"+res.SubtaskIDs[0], "", &rec); rec.Status != "COMPLETED" || len(rec.Updates) != 2 {
		t.Errorf("subtask = %+v", rec)
	}
	if code := fakekittest.Do(t, "PUT", b.Base+"/_fake/faults", `{"rate_limit_rate":1,"retry_after":"3s"}`, nil); code != 200 {
		t.Fatalf("faults: %d", code)
	}
	if got := cl.Put(ctx, onetrust.Update{SubtaskID: res.SubtaskIDs[1], Status: onetrust.StatusFailed}); got.Result != connector.RateLimited {
		t.Errorf("with rate_limit_rate 1: %+v", got)
	}

	cancel()
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
	logs := b.Stderr.String()
	for _, s := range []string{testBearer, testID, testSecret} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain a credential:\n%s", logs)
		}
	}
	for _, s := range []string{"stopped", "subtasks_one_final=3", "token_lifetime=2s"} {
		if !strings.Contains(logs, s) {
			t.Errorf("logs lack %q:\n%s", s, logs)
		}
	}
}

func TestFlags(t *testing.T) {
	t.Parallel()
	fakekittest.CheckUsage(t, serve, []fakekittest.Usage{
		{Name: "-token-lifetime 500ms", Args: []string{"-token-lifetime", "500ms"}, WantErr: "-token-lifetime must be at least 1s"},
		{Name: "-error-rate 2", Args: []string{"-error-rate", "2"}, WantErr: "error_rate must be between 0 and 1"},
		{Name: "-revoke-after -1s", Args: []string{"-revoke-after", "-1s"}, WantErr: "revoke_after must not be negative"},
	})
}
