package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/fides"
	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
	"github.com/erasure-worker/erasure-worker/settings"
)

const doorToken = "door-secret-71b0"

// door stands for erasure-worker's Fides door: it reads what Fides sends with package fides and
// keeps each request's callback as a report's credentials.
type door struct {
	ts    *httptest.Server
	mu    sync.Mutex
	creds [][]byte
	users []string
}

func newDoor(t *testing.T) *door {
	d := &door{}
	d.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id, user, err := fides.ParseBody(body)
		if err == nil {
			err = fides.ParseReplyTo(r.Header.Get("reply-to"), r.Header.Get("reply-to-token"))
		}
		if r.Header.Get("Authorization") != "Bearer "+doorToken || err != nil || r.URL.Path != "/v1/fides/erasures" {
			connector.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "refused"})
			return
		}
		creds, _ := json.Marshal(map[string]string{"reply_to": r.Header.Get("reply-to"), "token": r.Header.Get("reply-to-token")})
		d.mu.Lock()
		d.creds, d.users = append(d.creds, creds), append(d.users, user)
		d.mu.Unlock()
		connector.WriteJSON(w, http.StatusAccepted, fides.Answer{CorrelationID: id})
	}))
	t.Cleanup(d.ts.Close)
	return d
}

// deliverer is the connector's, calling the fake back.
func deliverer(t *testing.T, base string) connector.Deliverer {
	env := map[string]string{"FIDES_AUTH_TOKEN": doorToken, "FIDES_URL": base, "FIDES_CALLBACK_DELAY": "1ms"}
	s := settings.New("run", fakekittest.Env(env), io.Discard)
	read := fides.Connector{}.Declare(s)
	if _, err := s.Parse(nil); err != nil {
		t.Fatal(err)
	}
	return read().Deliverer
}

// call asks the fake's admin API: POST with a JSON body, or GET when body is empty.
func call(t *testing.T, url, body string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if body != "" {
		resp, err = http.Post(url, "application/json", strings.NewReader(body))
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func TestServePushesTakesCallbacksAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := fakekittest.Start(t, "fidesfake", func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0", "-park-delay", "0"}, fakekittest.Env(nil), stdout, stderr)
	})
	d := newDoor(t)
	var res struct {
		Sent    int            `json:"sent"`
		Answers map[string]int `json:"answers"`
		IDs     []string       `json:"privacy_request_ids"`
	}
	push := `{"target":"` + d.ts.URL + `/v1/fides/erasures","auth_token":"` + doorToken + `","count":3,"id_prefix":"pri_demo_","user_prefix":"knot-user-"}`
	if code := call(t, b.Base+"/_fake/push", push, &res); code != 200 || res.Sent != 3 || res.Answers["http_202"] != 3 || !strings.HasPrefix(res.IDs[0], "pri_demo_") {
		t.Fatalf("push: %d %+v", code, res)
	}
	dl := deliverer(t, b.Base)
	secrets := []string{doorToken}
	d.mu.Lock()
	for i, creds := range d.creds {
		outcome := []string{"deleted", "not_found", "deleted"}[i]
		if got := dl.Deliver(context.Background(), connector.Report{Credentials: creds, Outcome: outcome}); got.Result != connector.Delivered {
			t.Errorf("callback %d: %+v", i, got)
		}
		var c map[string]string
		_ = json.Unmarshal(creds, &c)
		secrets = append(secrets, c["token"], d.users[i])
	}
	d.mu.Unlock()

	var st struct {
		Pushed         int64            `json:"pushed"`
		Completions    int64            `json:"completions"`
		RowsMasked     map[string]int64 `json:"rows_masked"`
		TasksCompleted int64            `json:"tasks_completed"`
	}
	call(t, b.Base+"/_fake/stats", "", &st)
	if st.Pushed != 3 || st.Completions != 3 || st.RowsMasked["1"] != 2 || st.RowsMasked["0"] != 1 || st.TasksCompleted != 3 {
		t.Errorf("stats = %+v", st)
	}
	var task struct {
		Completions int64 `json:"completions"`
		RowsMasked  []int `json:"rows_masked"`
	}
	if code := call(t, b.Base+"/_fake/tasks/"+res.IDs[1], "", &task); code != 200 || task.Completions != 1 || len(task.RowsMasked) != 1 {
		t.Errorf("task: %d %+v", code, task)
	}
	cancel()
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
	logs := b.Stderr.String()
	for _, s := range secrets {
		if s == "" || strings.Contains(logs, s) {
			t.Errorf("logs contain a secret or a person (or it is empty):\n%s", logs)
		}
	}
	for _, s := range []string{"stopped", "completions=3", "callback_url=" + b.Base + "/api/v1/request-task/callback"} {
		if !strings.Contains(logs, s) {
			t.Errorf("logs lack %q:\n%s", s, logs)
		}
	}
}

// A task not parked yet answers 400, as Fides does; the door's deliverer takes a 400 after its
// hold for a task that no longer awaits, which is why FIDES_CALLBACK_DELAY must exceed the park.
func TestACallbackBeforeTheParkIsRefused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := fakekittest.Start(t, "fidesfake", func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0", "-park-delay", "1h"}, fakekittest.Env(nil), stdout, stderr)
	})
	d := newDoor(t)
	call(t, b.Base+"/_fake/push", `{"target":"`+d.ts.URL+`/v1/fides/erasures","auth_token":"`+doorToken+`","count":1}`, nil)
	got := deliverer(t, b.Base).Deliver(context.Background(), connector.Report{Credentials: d.creds[0], Outcome: "deleted"})
	var st struct {
		Premature    int64 `json:"premature_callbacks"`
		Completions  int64 `json:"completions"`
		TasksParking int64 `json:"tasks_parking"`
	}
	call(t, b.Base+"/_fake/stats", "", &st)
	if got.HTTPStatus != 400 || st.Premature != 1 || st.Completions != 0 || st.TasksParking != 1 {
		t.Errorf("a callback before the park: %+v, stats %+v", got, st)
	}
	cancel()
	b.Wait(t)
}

func TestFlagsAreCheckedNamingTheFlag(t *testing.T) {
	t.Parallel()
	fakekittest.CheckUsage(t, serve, []fakekittest.Usage{
		{Name: "-park-delay -1s", Args: []string{"-park-delay", "-1s"}, WantErr: "-park-delay must not be negative"},
		{Name: "-token-lifetime 0s", Args: []string{"-token-lifetime", "0s"}, WantErr: "-token-lifetime must be above zero"},
		{Name: "-lost-answer-rate 1.1", Args: []string{"-lost-answer-rate", "1.1"}, WantErr: "lost_answer_rate must be between 0 and 1"},
		{Name: "-error-rate 0.7 -rate-limit-rate 0.7", Args: []string{"-error-rate", "0.7", "-rate-limit-rate", "0.7"}, WantErr: "must not exceed 1"},
		{Name: "serve", Args: []string{"serve"}, WantErr: "unexpected arguments"},
		{Name: "-h", Args: []string{"-h"}, WantErr: "-park-delay"},
	})
}
