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
	testKey    = "tk-SECRET-7781"
	testSombra = "sk-SECRET-d41d"
	testSilo   = "9d5a7a41-f102-435c-b80d-38c2b378ecac"
)

// testBundle is the binary, running in-process.
type testBundle struct{ *fakekittest.Binary }

func start(t *testing.T, run func(stdout, stderr io.Writer) int) *testBundle {
	return &testBundle{fakekittest.Start(t, "transcendfake", run)}
}

func (b *testBundle) do(t *testing.T, method, path, body string, header map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, b.Base+path, strings.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(rb)
}

func TestServeSeedsPullsReportsAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := start(t, func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0", "-items", "3", "-items-prefix", "acct"}, fakekittest.Env(map[string]string{
			"TRANSCEND_FAKE_API_KEY": testKey, "TRANSCEND_FAKE_SOMBRA_KEY": testSombra, "TRANSCEND_FAKE_DATA_SILO_ID": testSilo}), stdout, stderr)
	})
	auth := map[string]string{"Authorization": "Bearer " + testKey, "X-Sombra-Authorization": "Bearer " + testSombra}

	code, body := b.do(t, "GET", "/v1/data-silo/"+testSilo+"/pending-requests/ERASURE?limit=2", "", auth)
	var page struct {
		Items []struct{ Identifier, Nonce, RequestID string }
	}
	if err := json.Unmarshal([]byte(body), &page); code != 200 || err != nil || len(page.Items) != 2 || page.Items[0].Identifier != "acct-000001" {
		t.Fatalf("pull: %d %s", code, body)
	}
	if code, _ := b.do(t, "GET", "/v1/data-silo/"+testSilo+"/pending-requests/ERASURE", "", map[string]string{"Authorization": "Bearer " + testKey}); code != 401 {
		t.Errorf("a pull without the Sombra key: %d, want 401", code)
	}

	put := map[string]string{"Authorization": auth["Authorization"], "X-Sombra-Authorization": auth["X-Sombra-Authorization"],
		"X-Transcend-Nonce": page.Items[0].Nonce, "Content-Type": "application/json"}
	report := `{"profiles":[{"profileId":"acct-000001"}],"profileStatus":"SKIPPED"}`
	if code, body := b.do(t, "PUT", "/v1/data-silo", report, put); code != 200 {
		t.Fatalf("report: %d %s", code, body)
	}
	if code, _ := b.do(t, "PUT", "/v1/data-silo", report, put); code != 409 {
		t.Errorf("second report: %d, want 409", code)
	}

	_, body = b.do(t, "GET", "/_fake/stats", "", nil)
	var st struct {
		ItemsPending           int64            `json:"items_pending"`
		ReportsByProfileStatus map[string]int64 `json:"reports_by_profile_status"`
		DuplicateReports       int64            `json:"duplicate_reports"`
		BadCredentials         int64            `json:"bad_credentials"`
	}
	json.Unmarshal([]byte(body), &st)
	if st.ItemsPending != 2 || st.ReportsByProfileStatus["SKIPPED"] != 1 || st.DuplicateReports != 1 || st.BadCredentials != 1 {
		t.Errorf("stats = %s", body)
	}

	cancel()
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
	logs := b.Stderr.String()
	for _, s := range []string{testKey, testSombra, "SECRET", "acct-000001", page.Items[0].Nonce, page.Items[1].Nonce} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q:\n%s", s, logs)
		}
	}
	if !strings.Contains(logs, "stopped") || !strings.Contains(logs, "reports=1") {
		t.Errorf("no stop log with the counts:\n%s", logs)
	}
}

// TestRunStopsOnSIGTERM goes through run, the real signal path. A hung report is in flight:
// shutdown must release it rather than wait for the client.
func TestRunStopsOnSIGTERM(t *testing.T) {
	b := start(t, func(stdout, stderr io.Writer) int {
		return run([]string{"-addr", "127.0.0.1:0", "-items", "1", "-report-hang-rate", "1"},
			fakekittest.Env(map[string]string{"TRANSCEND_FAKE_API_KEY": testKey, "TRANSCEND_FAKE_DATA_SILO_ID": testSilo}), stdout, stderr)
	})
	_, body := b.do(t, "GET", "/_fake/items", "", nil)
	var items []struct{ Nonce string }
	if json.Unmarshal([]byte(body), &items) != nil || len(items) != 1 {
		t.Fatalf("items: %s", body)
	}
	b.TerminateWhileHung(t, "report_hang", func() string {
		req, _ := http.NewRequest("PUT", b.Base+"/v1/data-silo", strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("X-Transcend-Nonce", items[0].Nonce)
		if resp, err := http.DefaultClient.Do(req); err == nil { // no timeout: only the server can end it
			resp.Body.Close()
		}
		return ""
	})
}

func TestFlagErrors(t *testing.T) {
	t.Parallel()
	full := map[string]string{"TRANSCEND_FAKE_API_KEY": testKey, "TRANSCEND_FAKE_DATA_SILO_ID": testSilo}
	tests := []fakekittest.Usage{
		{Name: "no api key", Env: map[string]string{"TRANSCEND_FAKE_DATA_SILO_ID": testSilo}, WantErr: "TRANSCEND_FAKE_API_KEY is required"},
		{Name: "no data silo", Env: map[string]string{"TRANSCEND_FAKE_API_KEY": testKey}, WantErr: "TRANSCEND_FAKE_DATA_SILO_ID is required"},
		{Name: "negative items", Args: []string{"-items", "-1"}, Env: full, WantErr: "-items must be between 0 and"},
		{Name: "too many items", Args: []string{"-items", "2000000"}, Env: full, WantErr: "-items must be between 0 and"},
		{Name: "control in prefix", Args: []string{"-items-prefix", "a\nb"}, Env: full, WantErr: "-items-prefix must be 1 to 64 bytes"},
		{Name: "rate out of range", Args: []string{"-pull-error-rate", "1.5"}, Env: full, WantErr: "pull.error_rate must be between 0 and 1"},
		{Name: "rates of a door above 1", Args: []string{"-report-error-rate", "0.7", "-report-conflict-rate", "0.7"}, Env: full, WantErr: "report: fault rates add up to"},
		{Name: "negative retry-after", Args: []string{"-retry-after", "-1s"}, Env: full, WantErr: "pull.retry_after must not be negative"},
		{Name: "bad duration", Args: []string{"-latency", "fast"}, Env: full, WantErr: "invalid value"},
		{Name: "unknown flag", Args: []string{"-nope"}, Env: full, WantErr: "flag provided but not defined"},
		{Name: "stray argument", Args: []string{"serve"}, Env: full, WantErr: "unexpected arguments"},
	}
	fakekittest.CheckUsage(t, serve, tests, testKey)
}

func TestHelpShowsNoKey(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-h"}, fakekittest.Env(map[string]string{"TRANSCEND_FAKE_API_KEY": testKey, "TRANSCEND_FAKE_SOMBRA_KEY": testSombra}), &stdout, &stderr)
	if code != 0 || !strings.Contains(stderr.String(), "-items") || strings.Contains(stderr.String(), "SECRET") {
		t.Errorf("code %d, usage %q", code, stderr.String())
	}
}

func TestListenFailure(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-addr", "256.0.0.1:1"},
		fakekittest.Env(map[string]string{"TRANSCEND_FAKE_API_KEY": "k", "TRANSCEND_FAKE_DATA_SILO_ID": "s"}), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "listen failed") {
		t.Errorf("code %d, stderr %q", code, stderr.String())
	}
}
