package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
)

const (
	testClientID = "client-7781"
	testSecret   = "secret-d41d8cd98f"
	testUserID   = "user-0bd3e2a9"
)

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
	b := fakekittest.Start(t, "knotfake", func(stdout, stderr io.Writer) int {
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
	b := fakekittest.Start(t, "knotfake", func(stdout, stderr io.Writer) int {
		return run([]string{"-addr", "127.0.0.1:0", "-hang-rate", "1"},
			fakekittest.Env(map[string]string{"KNOT_CLIENT_ID": testClientID, "KNOT_SECRET": testSecret}), stdout, stderr)
	})
	b.TerminateWhileHung(t, "hang", func() string {
		req, _ := http.NewRequest("POST", b.Base+"/user/delete", strings.NewReader(`{"external_user_id":"u"}`))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(testClientID, testSecret)
		if resp, err := http.DefaultClient.Do(req); err == nil { // no timeout: only the server can end it
			resp.Body.Close()
		}
		return ""
	})
}

func TestFlagErrors(t *testing.T) {
	t.Parallel()
	full := map[string]string{"KNOT_CLIENT_ID": testClientID, "KNOT_SECRET": testSecret}
	tests := []fakekittest.Usage{
		{Name: "no client id", Env: map[string]string{"KNOT_SECRET": testSecret}, WantErr: "-client-id (or KNOT_CLIENT_ID) is required"},
		{Name: "no secret", Args: []string{"-client-id", "x"}, WantErr: "-secret (or KNOT_SECRET) is required"},
		{Name: "missing out of range", Args: []string{"-missing", "1.5"}, Env: full, WantErr: "-missing must be between 0 and 1"},
		{Name: "rate out of range", Args: []string{"-error-rate", "-0.1"}, Env: full, WantErr: "error_rate must be between 0 and 1"},
		{Name: "rates sum above 1", Args: []string{"-error-rate", "0.7", "-hang-rate", "0.7"}, Env: full, WantErr: "must not exceed 1"},
		{Name: "negative outage", Args: []string{"-outage", "-1s"}, Env: full, WantErr: "-outage must not be negative"},
		{Name: "bad duration", Args: []string{"-latency", "fast"}, Env: full, WantErr: "invalid value"},
		{Name: "unknown flag", Args: []string{"-nope"}, Env: full, WantErr: "flag provided but not defined"},
		{Name: "stray argument", Args: []string{"serve"}, Env: full, WantErr: "unexpected arguments"},
	}
	fakekittest.CheckUsage(t, serve, tests, testSecret)
}

func TestListenFailure(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-addr", "256.0.0.1:1", "-client-id", "x", "-secret", "y"}, fakekittest.Env(nil), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "listen failed") {
		t.Errorf("code %d, stderr %q", code, stderr.String())
	}
}
