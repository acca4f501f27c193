package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
)

const (
	testClientID = "client-7781"
	testSecret   = "secret-d41d8cd98f"
	testUserID   = "user-0bd3e2a9"
)

// testBundle is the binary, running in-process.
type testBundle struct{ *fakekittest.Binary }

func start(t *testing.T, run func(stdout, stderr io.Writer) int) *testBundle {
	return &testBundle{fakekittest.Start(t, "knotfake", run)}
}

func deleteUser(t *testing.T, base, id, secret string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/user/delete", strings.NewReader(`{"external_user_id":"`+id+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(testClientID, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServeDeletesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := start(t, func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0", "-missing", "0", "-secret", testSecret},
			fakekittest.Env(map[string]string{"KNOT_CLIENT_ID": testClientID}), stdout, stderr)
	})

	if code, body := deleteUser(t, b.Base, testUserID, testSecret); code != 200 || body != `{"message":"Success"}` {
		t.Fatalf("delete: %d %s", code, body)
	}
	if code, body := deleteUser(t, b.Base, testUserID, testSecret); code != 400 || !strings.Contains(body, "USER_NOT_FOUND") {
		t.Fatalf("second delete: %d %s", code, body)
	}
	if code, _ := deleteUser(t, b.Base, testUserID, "wrong"); code != 401 {
		t.Fatalf("wrong secret: %d", code)
	}

	resp, err := http.Get(b.Base + "/_fake/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Calls            int64 `json:"calls"`
		Deleted          int64 `json:"deleted"`
		DuplicateDeletes int64 `json:"duplicate_deletes"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Calls != 3 || st.Deleted != 1 || st.DuplicateDeletes != 1 {
		t.Errorf("stats = %+v", st)
	}

	cancel()
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
	logs := b.Stderr.String()
	for _, s := range []string{testSecret, testUserID, testClientID} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q:\n%s", s, logs)
		}
	}
	if !strings.Contains(logs, "stopped") {
		t.Errorf("no stop log:\n%s", logs)
	}
}

// TestRunStopsOnSIGTERM goes through run, the real signal path. A hung call
// is in flight: shutdown must release it rather than wait for the client.
func TestRunStopsOnSIGTERM(t *testing.T) {
	b := start(t, func(stdout, stderr io.Writer) int {
		return run([]string{"-addr", "127.0.0.1:0", "-hang-rate", "1"},
			fakekittest.Env(map[string]string{"KNOT_CLIENT_ID": testClientID, "KNOT_SECRET": testSecret}), stdout, stderr)
	})
	hung := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("POST", b.Base+"/user/delete", strings.NewReader(`{"external_user_id":"u"}`))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(testClientID, testSecret)
		resp, err := http.DefaultClient.Do(req) // no timeout: only the server can end it
		if err == nil {
			resp.Body.Close()
		}
		hung <- err
	}()
	// Let the call reach the handler before signalling.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(b.Base + "/_fake/stats")
		if err == nil {
			var st struct {
				Faulted map[string]int64 `json:"faulted"`
			}
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if st.Faulted["hang"] == 1 {
				break
			}
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
	case <-hung:
	case <-time.After(5 * time.Second):
		t.Error("hung call still open after shutdown")
	}
}

func TestFlagErrors(t *testing.T) {
	t.Parallel()
	full := map[string]string{"KNOT_CLIENT_ID": testClientID, "KNOT_SECRET": testSecret}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"no client id", []string{}, map[string]string{"KNOT_SECRET": testSecret}, "-client-id (or KNOT_CLIENT_ID) is required"},
		{"no secret", []string{"-client-id", "x"}, nil, "-secret (or KNOT_SECRET) is required"},
		{"missing out of range", []string{"-missing", "1.5"}, full, "-missing must be between 0 and 1"},
		{"rate out of range", []string{"-error-rate", "-0.1"}, full, "error_rate must be between 0 and 1"},
		{"rates sum above 1", []string{"-error-rate", "0.7", "-hang-rate", "0.7"}, full, "must not exceed 1"},
		{"negative outage", []string{"-outage", "-1s"}, full, "-outage must not be negative"},
		{"bad duration", []string{"-latency", "fast"}, full, "invalid value"},
		{"unknown flag", []string{"-nope"}, full, "flag provided but not defined"},
		{"stray argument", []string{"serve"}, full, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr strings.Builder
			code := serve(context.Background(), append([]string{"-addr", "127.0.0.1:0"}, tt.args...), fakekittest.Env(tt.env), &stdout, &stderr)
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr = %q, want it to mention %q", stderr.String(), tt.wantErr)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
			if strings.Contains(stderr.String(), testSecret) {
				t.Errorf("stderr leaks the secret")
			}
		})
	}
}

func TestListenFailure(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-addr", "256.0.0.1:1", "-client-id", "x", "-secret", "y"}, fakekittest.Env(nil), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "listen failed") {
		t.Errorf("code %d, stderr %q", code, stderr.String())
	}
}
