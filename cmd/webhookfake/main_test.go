package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/internal/fakekit/fakekittest"
)

var testSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("cmd-webhookfake-test-secret-key!"))

// testBundle is the binary, running in-process.
type testBundle struct{ *fakekittest.Binary }

func start(t *testing.T, run func(stdout, stderr io.Writer) int) *testBundle {
	return &testBundle{fakekittest.Start(t, "webhookfake", run)}
}

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
	b := start(t, func(stdout, stderr io.Writer) int {
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
	b := start(t, func(stdout, stderr io.Writer) int {
		return run([]string{"-addr", "127.0.0.1:0", "-hang-rate", "1"}, fakekittest.Env(map[string]string{"WEBHOOK_FAKE_SECRET": testSecret}), stdout, stderr)
	})
	sender, err := webhook.NewSender(b.Base+"/", testSecret, &http.Client{}) // no timeout: only the server can end it
	if err != nil {
		t.Fatal(err)
	}
	hung := make(chan connector.Delivery, 1)
	go func() {
		hung <- sender.Send(context.Background(), "msg_1", webhook.Outcome{RequestRef: "r", Outcome: "exhausted", CompletedAt: time.Now()}, time.Now())
	}()
	// Let the message reach the handler before signalling.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && getStats(t, b.Base).Faulted["hang"] != 1 {
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
		if d.Result != connector.Retry {
			t.Errorf("the hung message ended as %+v, want retry", d)
		}
	case <-time.After(5 * time.Second):
		t.Error("hung message still open after shutdown")
	}
}

func TestFlagErrors(t *testing.T) {
	t.Parallel()
	full := map[string]string{"WEBHOOK_FAKE_SECRET": testSecret}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"no secret", []string{}, nil, "WEBHOOK_FAKE_SECRET is required"},
		{"secret without whsec_", []string{}, map[string]string{"WEBHOOK_FAKE_SECRET": strings.TrimPrefix(testSecret, "whsec_")}, "must start with whsec_"},
		{"short secret", []string{}, map[string]string{"WEBHOOK_FAKE_SECRET": "whsec_c2hvcnQtc2VjcmV0"}, "decodes to 12 bytes"},
		{"rate out of range", []string{"-error-rate", "-0.1"}, full, "error_rate must be between 0 and 1"},
		{"rates sum above 1", []string{"-conflict-rate", "0.7", "-hang-rate", "0.7"}, full, "must not exceed 1"},
		{"negative outage", []string{"-outage", "-1s"}, full, "-outage must not be negative"},
		{"bad duration", []string{"-retry-after", "soon"}, full, "invalid value"},
		{"a secret flag does not exist", []string{"-secret", testSecret}, nil, "flag provided but not defined: -secret"},
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
			if strings.Contains(stderr.String(), strings.TrimPrefix(testSecret, "whsec_")) || strings.Contains(stderr.String(), "c2hvcnQtc2VjcmV0") {
				t.Errorf("stderr leaks the secret: %s", stderr.String())
			}
		})
	}
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
