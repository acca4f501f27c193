package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/ketch"
	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
)

const testAuthValue = "Bearer forwarder-secret-3c9d1e"

// testBundle is the binary, running in-process.
type testBundle struct{ *fakekittest.Binary }

func start(t *testing.T, run func(stdout, stderr io.Writer) int) *testBundle {
	return &testBundle{fakekittest.Start(t, "ketchfake", run)}
}

func (b *testBundle) do(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, b.Base+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

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
	b := start(t, func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0", "-callbacks", "1"},
			fakekittest.Env(map[string]string{"KETCH_IDENTITY_SPACE": "customer_id"}), stdout, stderr)
	})
	fwd := newForwarder(t, "customer_id")

	var res struct {
		Sent    int            `json:"sent"`
		Answers map[string]int `json:"answers"`
		UIDs    []string       `json:"uids"`
	}
	code := b.do(t, "POST", "/_fake/push", `{"target":"`+fwd.ts.URL+`","auth_value":"`+testAuthValue+`","count":3,"prefix":"knot-user-"}`, &res)
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
	b.do(t, "GET", "/_fake/requests/"+res.UIDs[0], "", &rec)
	secrets = append(secrets, rec.Subject.Email, testAuthValue)

	var st struct {
		FinalEvents  int64 `json:"final_events"`
		UIDsOneFinal int64 `json:"uids_one_final"`
	}
	b.do(t, "GET", "/_fake/stats", "", &st)
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
	b := start(t, func(stdout, stderr io.Writer) int {
		return run([]string{"-addr", "127.0.0.1:0", "-hang-rate", "1"}, fakekittest.Env(nil), stdout, stderr)
	})
	fwd := newForwarder(t, "account_id")
	if code := b.do(t, "POST", "/_fake/push", `{"target":"`+fwd.ts.URL+`","auth_value":"`+testAuthValue+`","count":1}`, nil); code != 200 {
		t.Fatalf("push: %d", code)
	}
	fwd.mu.Lock()
	r := fwd.reqs[0]
	fwd.mu.Unlock()
	hung := make(chan connector.Delivery, 1)
	go func() {
		// No timeout: only the server can end it.
		hung <- ketch.Notify(context.Background(), nil, r.Callbacks[0], r.Metadata, ketch.Event{Status: ketch.StatusCompleted, Reason: ketch.ReasonExecuted})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var st struct {
			Faulted map[string]int64 `json:"faulted"`
		}
		b.do(t, "GET", "/_fake/stats", "", &st)
		if st.Faulted["hang"] == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	p, _ := os.FindProcess(os.Getpid())
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("cannot signal self: %v", err)
	}
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
	select {
	case d := <-hung:
		if d.Result.Done() {
			t.Errorf("a hung callback was delivered: %+v", d)
		}
	case <-time.After(5 * time.Second):
		t.Error("hung callback still open after shutdown")
	}
}

func TestFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"callbacks zero", []string{"-callbacks", "0"}, 2, "-callbacks must be between 1 and 16"},
		{"callbacks too many", []string{"-callbacks", "17"}, 2, "-callbacks must be between 1 and 16"},
		{"rate out of range", []string{"-conflict-rate", "1.1"}, 2, "conflict_rate must be between 0 and 1"},
		{"rates sum above 1", []string{"-error-rate", "0.7", "-rate-limit-rate", "0.7"}, 2, "must not exceed 1"},
		{"negative outage", []string{"-outage", "-1s"}, 2, "-outage must not be negative"},
		{"negative latency", []string{"-latency", "-1s"}, 2, "latency must not be negative"},
		{"bad duration", []string{"-retry-after", "soon"}, 2, "invalid value"},
		{"unknown flag", []string{"-nope"}, 2, "flag provided but not defined"},
		{"stray argument", []string{"serve"}, 2, "unexpected arguments"},
		{"help", []string{"-h"}, 0, "-callbacks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr strings.Builder
			code := serve(context.Background(), append([]string{"-addr", "127.0.0.1:0"}, tt.args...), fakekittest.Env(nil), &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit code %d, want %d", code, tt.code)
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr = %q, want it to mention %q", stderr.String(), tt.wantErr)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

func TestListenFailure(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-addr", "256.0.0.1:1"}, fakekittest.Env(nil), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "listen failed") {
		t.Errorf("code %d, stderr %q", code, stderr.String())
	}
}
