package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
)

var testSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("cmd-webhookfake-test-secret-key!"))

type stats struct {
	Messages            int64            `json:"messages"`
	RequestRefs         int64            `json:"request_refs"`
	BadSignatures       int64            `json:"bad_signatures"`
	DuplicateWebhookIDs int64            `json:"duplicate_webhook_ids"`
	Faulted             map[string]int64 `json:"faulted"`
}

func getStats(t *testing.T, base string) stats {
	t.Helper()
	resp, err := http.Get(base + "/_fake/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestServeReceivesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := fakekittest.Start(t, "webhookfake", func(stdout, stderr io.Writer) int {
		return serve(ctx, []string{"-addr", "127.0.0.1:0"}, fakekittest.Env(map[string]string{"WEBHOOK_FAKE_SECRET": testSecret}), stdout, stderr)
	})

	good, err := webhook.NewSender(b.Base+"/hooks", testSecret, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := webhook.Outcome{RequestRef: "ref-1", Outcome: "deleted", CompletedAt: time.Now()}
	for range 2 { // the second is a retry: same id
		if d := good.Send(context.Background(), "msg_1", o, time.Now()); d.Result != connector.Delivered {
			t.Fatalf("send: %+v", d)
		}
	}
	wrongKey := "whsec_" + base64.StdEncoding.EncodeToString([]byte("not-the-secret-the-fake-expects!"))
	bad, _ := webhook.NewSender(b.Base+"/hooks", wrongKey, nil)
	if d := bad.Send(context.Background(), "msg_2", o, time.Now()); d.Result != connector.Unauthorized {
		t.Errorf("a wrong secret: %+v", d)
	}

	st := getStats(t, b.Base)
	if st.Messages != 3 || st.RequestRefs != 1 || st.DuplicateWebhookIDs != 1 || st.BadSignatures != 1 {
		t.Errorf("stats = %+v", st)
	}

	cancel()
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
	logs := b.Stderr.String()
	if strings.Contains(logs, strings.TrimPrefix(testSecret, "whsec_")) {
		t.Errorf("logs show the secret:\n%s", logs)
	}
	if !strings.Contains(logs, "stopped") || !strings.Contains(logs, "messages=3") {
		t.Errorf("no stop log with the counts:\n%s", logs)
	}
}

// TestRunStopsOnSIGTERM goes through run, the real signal path. A hung message is in flight:
// shutdown must release it rather than wait for the sender.
func TestRunStopsOnSIGTERM(t *testing.T) {
	b := fakekittest.Start(t, "webhookfake", func(stdout, stderr io.Writer) int {
		return run([]string{"-addr", "127.0.0.1:0", "-hang-rate", "1"}, fakekittest.Env(map[string]string{"WEBHOOK_FAKE_SECRET": testSecret}), stdout, stderr)
	})
	sender, err := webhook.NewSender(b.Base+"/", testSecret, &http.Client{}) // no timeout: only the server can end it
	if err != nil {
		t.Fatal(err)
	}
	b.TerminateWhileHung(t, "hang", func() string {
		d := sender.Send(context.Background(), "msg_1", webhook.Outcome{RequestRef: "r", Outcome: "exhausted", CompletedAt: time.Now()}, time.Now())
		if d.Result != connector.Retry {
			return fmt.Sprintf("the hung message ended as %+v, want retry", d)
		}
		return ""
	})
}

func TestFlagErrors(t *testing.T) {
	t.Parallel()
	full := map[string]string{"WEBHOOK_FAKE_SECRET": testSecret}
	tests := []fakekittest.Usage{
		{Name: "no secret", WantErr: "WEBHOOK_FAKE_SECRET is required"},
		{Name: "secret without whsec_", Env: map[string]string{"WEBHOOK_FAKE_SECRET": strings.TrimPrefix(testSecret, "whsec_")}, WantErr: "must start with whsec_"},
		{Name: "short secret", Env: map[string]string{"WEBHOOK_FAKE_SECRET": "whsec_c2hvcnQtc2VjcmV0"}, WantErr: "decodes to 12 bytes"},
		{Name: "rate out of range", Args: []string{"-error-rate", "-0.1"}, Env: full, WantErr: "error_rate must be between 0 and 1"},
		{Name: "rates sum above 1", Args: []string{"-conflict-rate", "0.7", "-hang-rate", "0.7"}, Env: full, WantErr: "must not exceed 1"},
		{Name: "negative outage", Args: []string{"-outage", "-1s"}, Env: full, WantErr: "-outage must not be negative"},
		{Name: "bad duration", Args: []string{"-retry-after", "soon"}, Env: full, WantErr: "invalid value"},
		{Name: "a secret flag does not exist", Args: []string{"-secret", testSecret}, WantErr: "flag provided but not defined: -secret"},
		{Name: "stray argument", Args: []string{"serve"}, Env: full, WantErr: "unexpected arguments"},
	}
	fakekittest.CheckUsage(t, serve, tests, testSecret)
}

func TestHelpShowsNoSecret(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-h"}, fakekittest.Env(map[string]string{"WEBHOOK_FAKE_SECRET": testSecret}), &stdout, &stderr)
	if code != 0 || !strings.Contains(stderr.String(), "-hang-rate") || strings.Contains(stderr.String(), strings.TrimPrefix(testSecret, "whsec_")) {
		t.Errorf("code %d, usage:\n%s", code, stderr.String())
	}
}

func TestListenFailure(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := serve(context.Background(), []string{"-addr", "256.0.0.1:1"}, fakekittest.Env(map[string]string{"WEBHOOK_FAKE_SECRET": testSecret}), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "listen failed") {
		t.Errorf("code %d, stderr %q", code, stderr.String())
	}
}
