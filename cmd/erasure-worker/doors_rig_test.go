package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
)

// doorsRig is the three privacy request systems as processes beside knotfake: a receiver of
// outcome webhooks, a fake Ketch (which pushes requests and takes callbacks) and a fake Sombra
// holding Transcend's pending erasures. Its env turns every door of a worker on.
type doorsRig struct {
	webhookURL, ketchURL, transcendURL string
	apiAddr                            string
	env                                []string // the doors' settings for `run`
}

const (
	rigAPIToken       = "rig-api-token-0c7d"
	rigWebhookSecret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	rigKetchValue     = "Bearer rig-ketch-9e1f"
	rigKetchSpace     = "account_id"
	rigTranscendKey   = "rig-transcend-key-41aa"
	rigTranscendSilo  = "silo-rig-1"
	rigTranscendItems = "transcend-user"
)

// startListening starts one of the fakes and returns its URL from the line it prints.
func startListening(t *testing.T, name string, env []string, args ...string) (*process, string) {
	t.Helper()
	worker, _ := binaries(t)
	p := start(t, name, env, filepath.Join(filepath.Dir(worker), name), append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	select {
	case line := <-p.stdoutLines:
		url, ok := strings.CutPrefix(line, name+" listening on ")
		if !ok {
			t.Fatalf("%s said %q", name, line)
		}
		return p, url
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not start", name)
	}
	return nil, ""
}

// startDoorsRig starts the three fakes, the Sombra one holding transcendItems pending erasures.
// The extra args go to each fake by name ("webhookfake", "ketchfake", "transcendfake").
func startDoorsRig(t *testing.T, transcendItems int, extra map[string][]string) *doorsRig {
	t.Helper()
	r := &doorsRig{apiAddr: freeAddr(t)}
	_, r.webhookURL = startListening(t, "webhookfake", []string{"WEBHOOK_FAKE_SECRET=" + rigWebhookSecret}, extra["webhookfake"]...)
	_, r.ketchURL = startListening(t, "ketchfake", []string{"KETCH_IDENTITY_SPACE=" + rigKetchSpace}, extra["ketchfake"]...)
	_, r.transcendURL = startListening(t, "transcendfake",
		[]string{"TRANSCEND_FAKE_API_KEY=" + rigTranscendKey, "TRANSCEND_FAKE_DATA_SILO_ID=" + rigTranscendSilo},
		append([]string{"-items", fmt.Sprint(transcendItems), "-items-prefix", rigTranscendItems}, extra["transcendfake"]...)...)
	r.env = []string{
		"API_LISTEN_ADDR=" + r.apiAddr, "API_TOKEN=" + rigAPIToken,
		"REPORT_WEBHOOK_URL=" + r.webhookURL + "/outcomes", "REPORT_WEBHOOK_SECRET=" + rigWebhookSecret,
		"KETCH_AUTH_VALUE=" + rigKetchValue, "KETCH_IDENTITY_SPACE=" + rigKetchSpace,
		"KETCH_CALLBACK_ALLOW=" + strings.TrimPrefix(r.ketchURL, "http://"), // ketchfake: plain http on loopback
		"TRANSCEND_URL=" + r.transcendURL, "TRANSCEND_API_KEY=" + rigTranscendKey, "TRANSCEND_DATA_SILO_ID=" + rigTranscendSilo,
		"TRANSCEND_POLL_INTERVAL=1s",
	}
	return r
}

// waitAPI waits until the worker serves the HTTP doors.
func (r *doorsRig) waitAPI(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get("http://" + r.apiAddr + "/v1/erasure-requests/none")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the HTTP doors did not open on %s within %s: %v", r.apiAddr, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// submitAPI sends n requests (api-0..) through POST /v1/erasure-requests, 8 at a time, and
// fails on any answer but 202.
func (r *doorsRig) submitAPI(t *testing.T, n int) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			body := fmt.Sprintf(`{"request_ref":"api-%d","external_user_id":"api-person-%d"}`, i, i)
			req, _ := http.NewRequest("POST", "http://"+r.apiAddr+"/v1/erasure-requests", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+rigAPIToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("POST api-%d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("POST api-%d: %d, want 202", i, resp.StatusCode)
			}
		})
	}
	wg.Wait()
}

// pushKetch makes the fake Ketch push n DeleteRequests to the worker's Ketch door, and fails
// unless every one was answered in_progress.
func (r *doorsRig) pushKetch(t *testing.T, n int) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"target": "http://" + r.apiAddr + "/v1/ketch", "auth_header": "Authorization", "auth_value": rigKetchValue,
		"count": n, "prefix": "ketch-person-", "identity_space": rigKetchSpace,
	})
	resp, err := http.Post(r.ketchURL+"/_fake/push", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res ketchfake.PushResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %d %v", resp.StatusCode, err)
	}
	if res.Sent != n || res.Answers["in_progress"] != n {
		t.Fatalf("push: sent %d, answers %v; want %d in_progress", res.Sent, res.Answers, n)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func (r *doorsRig) webhookStats(t *testing.T) (st webhookfake.Stats) {
	getJSON(t, r.webhookURL+"/_fake/stats", &st)
	return st
}

func (r *doorsRig) ketchStats(t *testing.T) (st ketchfake.Stats) {
	getJSON(t, r.ketchURL+"/_fake/stats", &st)
	return st
}

func (r *doorsRig) transcendStats(t *testing.T) (st transcendfake.Stats) {
	getJSON(t, r.transcendURL+"/_fake/stats", &st)
	return st
}

// reportCounts reads the reports by connector and status.
func (e *e2e) reportCounts(t *testing.T) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	conn := e.conn(t)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT connector || '/' || status, count(*) FROM erasure_reports GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		out[k] = n
	}
	return out
}
