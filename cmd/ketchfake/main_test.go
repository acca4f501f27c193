package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
)

const testAuthValue = "Bearer forwarder-secret-3c9d1e"

// forwarder is a Ketch door built on package ketch, keeping the requests it took.
type forwarder struct {
	ts   *httptest.Server
	mu   sync.Mutex
	reqs []ketch.Request
}

func newForwarder(t *testing.T, space string) *forwarder {
	f := &forwarder{}
	f.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != testAuthValue {
			w.WriteHeader(401)
			w.Write(ketch.ErrorBody(nil, 401, ketch.ErrorForbidden, "unauthorized"))
			return
		}
		body, _ := io.ReadAll(r.Body)
		req, err := ketch.ParseDeleteRequest(body, space)
		var re *ketch.RequestError
		if errors.As(err, &re) {
			code, b := re.Answer(time.Now())
			w.WriteHeader(code)
			w.Write(b)
			return
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, req)
		f.mu.Unlock()
		w.Write(ketch.DeleteResponseBody(req.Metadata, ketch.StatusInProgress, "", "r-1", req.DueAt))
	}))
	t.Cleanup(f.ts.Close)
	return f
}

func TestServePushesTakesCallbacksAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := fakekittest.Start(t, "ketchfake", func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0", "-callbacks", "1"},
			fakekittest.Env(map[string]string{"KETCH_IDENTITY_SPACE": "customer_id"}), stdout, stderr)
	})
	fwd := newForwarder(t, "customer_id")

	var res struct {
		Sent    int            `json:"sent"`
		Answers map[string]int `json:"answers"`
		UIDs    []string       `json:"uids"`
	}
	code := fakekittest.Do(t, "POST", b.Base+"/_fake/push", `{"target":"`+fwd.ts.URL+`","auth_value":"`+testAuthValue+`","count":3,"prefix":"knot-user-"}`, &res)
	if code != 200 || res.Sent != 3 || res.Answers["in_progress"] != 3 {
		t.Fatalf("push: %d %+v", code, res)
	}
	fwd.mu.Lock()
	reqs := append([]ketch.Request(nil), fwd.reqs...)
	fwd.mu.Unlock()
	var secrets []string
	for _, r := range reqs {
		if len(r.Callbacks) != 1 || !strings.HasPrefix(r.Callbacks[0].URL, b.Base+"/callbacks/") {
			t.Fatalf("callbacks %v", r.Callbacks)
		}
		d := ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted})
		if d.Result != connector.Delivered {
			t.Errorf("delivery %+v", d)
		}
		secrets = append(secrets, r.Callbacks[0].Headers["Authorization"], r.ExternalUserID)
	}
	var rec struct {
		Subject struct {
			Email string `json:"email"`
		} `json:"subject"`
	}
	fakekittest.Do(t, "GET", b.Base+"/_fake/requests/"+res.UIDs[0], "", &rec)
	secrets = append(secrets, rec.Subject.Email, testAuthValue)

	var st struct {
		FinalEvents  int64 `json:"final_events"`
		UIDsOneFinal int64 `json:"uids_one_final"`
	}
	fakekittest.Do(t, "GET", b.Base+"/_fake/stats", "", &st)
	if st.FinalEvents != 3 || st.UIDsOneFinal != 3 {
		t.Errorf("stats = %+v", st)
	}

	cancel()
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
	logs := b.Stderr.String()
	for _, s := range secrets {
		if s == "" || strings.Contains(logs, s) {
			t.Errorf("logs contain %q (or it is empty):\n%s", s, logs)
		}
	}
	for _, s := range []string{"stopped", "uids_one_final=3", "identity_space=customer_id", "callback_base_url=" + b.Base} {
		if !strings.Contains(logs, s) {
			t.Errorf("logs lack %q:\n%s", s, logs)
		}
	}
}

// TestRunStopsOnSIGTERM goes through run, the real signal path. A hung callback is in flight:
// shutdown must release it rather than wait for the client.
func TestRunStopsOnSIGTERM(t *testing.T) {
	b := fakekittest.Start(t, "ketchfake", func(stdout, stderr io.Writer) int {
		return run([]string{"-addr", "127.0.0.1:0", "-hang-rate", "1"}, fakekittest.Env(nil), stdout, stderr)
	})
	fwd := newForwarder(t, "account_id")
	if code := fakekittest.Do(t, "POST", b.Base+"/_fake/push", `{"target":"`+fwd.ts.URL+`","auth_value":"`+testAuthValue+`","count":1}`, nil); code != 200 {
		t.Fatalf("push: %d", code)
	}
	fwd.mu.Lock()
	r := fwd.reqs[0]
	fwd.mu.Unlock()
	b.TerminateWhileHung(t, "hang", func() string {
		// No timeout: only the server can end it.
		d := ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted})
		if d.Result.Done() {
			return fmt.Sprintf("a hung callback was delivered: %+v", d)
		}
		return ""
	})
}

func TestFlags(t *testing.T) {
	t.Parallel()
	fakekittest.CheckUsage(t, serve, []fakekittest.Usage{
		{Name: "callbacks zero", Args: []string{"-callbacks", "0"}, WantErr: "-callbacks must be between 1 and 16"},
		{Name: "callbacks too many", Args: []string{"-callbacks", "17"}, WantErr: "-callbacks must be between 1 and 16"},
		{Name: "rate out of range", Args: []string{"-conflict-rate", "1.1"}, WantErr: "conflict_rate must be between 0 and 1"},
		{Name: "rates sum above 1", Args: []string{"-error-rate", "0.7", "-rate-limit-rate", "0.7"}, WantErr: "must not exceed 1"},
		{Name: "negative outage", Args: []string{"-outage", "-1s"}, WantErr: "-outage must not be negative"},
		{Name: "negative latency", Args: []string{"-latency", "-1s"}, WantErr: "latency must not be negative"},
		{Name: "bad duration", Args: []string{"-retry-after", "soon"}, WantErr: "invalid value"},
		{Name: "unknown flag", Args: []string{"-nope"}, WantErr: "flag provided but not defined"},
		{Name: "stray argument", Args: []string{"serve"}, WantErr: "unexpected arguments"},
		{Name: "help", Args: []string{"-h"}, WantErr: "-callbacks"},
	})
}

func TestListenFailure(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-addr", "256.0.0.1:1"}, fakekittest.Env(nil), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "listen failed") {
		t.Errorf("code %d, stderr %q", code, stderr.String())
	}
}
