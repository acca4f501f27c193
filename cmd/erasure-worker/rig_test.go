package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/connector/fides/fidesfake"
	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
	"github.com/erasure-worker/erasure-worker/connector/onetrust/onetrustfake"
	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// The world an end-to-end test runs in, as an operator would build it: a PostgreSQL database
// migrated by the binary, knotfake standing in for Knot, on request the privacy request systems
// behind the doors (webhookfake, ketchfake, transcendfake), and `erasure-worker run` processes
// pointed at them. The e2e tests (`make test`), the fault suite (`make chaos`) and the benchmarks
// (`make bench`) all build on it:
//
//	r := newRig(t, withFake("-missing", "0.1"), withRequests(300))
//	w := r.startWorker(t, "worker", "CONCURRENCY=16")
//	c := r.drained(t, time.Minute)

// What knotfake accepts; workers are given the secret unless a test sets KNOT_SECRET_FILE.
const (
	knotClientID = "e2e-client"
	knotSecret   = "e2e-secret"
)

// rig is one test's world.
type rig struct {
	workerBin string
	fakeURL   string   // Knot: a knotfake process unless withKnot named another
	dbURL     string   // the database, as the test reads it
	env       []string // what every worker process and command gets
	*doors             // nil unless withDoors
}

type rigOptions struct {
	fakeArgs       []string
	fakeURL        string
	dbURL          string
	workerDBURL    string
	migrate        bool
	retention      bool
	requests       int
	doors          bool
	transcendItems int
	doorArgs       map[string][]string
}

type rigOption func(*rigOptions)

// withFake starts knotfake with args (its faults, latency and share of missing users).
func withFake(args ...string) rigOption { return func(o *rigOptions) { o.fakeArgs = args } }

// withKnot points the workers at a Knot of the test's own instead of a knotfake process.
func withKnot(url string) rigOption { return func(o *rigOptions) { o.fakeURL = url } }

// withDB uses the database at url instead of a fresh one of the shared test server.
func withDB(url string) rigOption { return func(o *rigOptions) { o.dbURL = url } }

// withWorkerDB gives the processes url as DATABASE_URL (a pooler in front of the database)
// while the test reads the database itself.
func withWorkerDB(url string) rigOption { return func(o *rigOptions) { o.workerDBURL = url } }

// withoutMigrate leaves the database as it is: unmigrated, or migrated already.
func withoutMigrate() rigOption { return func(o *rigOptions) { o.migrate = false } }

// withoutRetention runs with IDENTIFIER_RETENTION=off, and so without an identifier key.
func withoutRetention() rigOption { return func(o *rigOptions) { o.retention = false } }

// withRequests enqueues n requests through the binary: request_ref e2e-i, external_user_id
// person-i.
func withRequests(n int) rigOption { return func(o *rigOptions) { o.requests = n } }

// withDoors starts the three privacy request systems, the Sombra one holding transcendItems
// pending erasures, and turns every door of every worker on. args go to each fake by name
// ("webhookfake", "ketchfake", "transcendfake").
func withDoors(transcendItems int, args map[string][]string) rigOption {
	return func(o *rigOptions) { o.doors, o.transcendItems, o.doorArgs = true, transcendItems, args }
}

func newRig(t *testing.T, opts ...rigOption) *rig {
	t.Helper()
	o := rigOptions{migrate: true, retention: true}
	for _, opt := range opts {
		opt(&o)
	}
	r := &rig{workerBin: binary(t, "erasure-worker"), fakeURL: o.fakeURL, dbURL: o.dbURL}
	if r.fakeURL == "" {
		_, r.fakeURL = startKnotfake(t, o.fakeArgs...)
	}
	if r.dbURL == "" {
		r.dbURL = queuetest.EmptyURL(t)
	}
	if o.workerDBURL == "" {
		o.workerDBURL = r.dbURL
	}
	r.env = []string{"DATABASE_URL=" + o.workerDBURL, "KNOT_BASE_URL=" + r.fakeURL, "KNOT_CLIENT_ID=" + knotClientID,
		"LOG_FORMAT=json", "PATH=" + os.Getenv("PATH")}
	if o.retention {
		r.env = append(r.env, "IDENTIFIER_KEY_FILE="+identifierKeyFile(t))
	} else {
		r.env = append(r.env, "IDENTIFIER_RETENTION=off")
	}
	if o.doors {
		r.doors = startDoors(t, o.transcendItems, o.doorArgs)
	}
	if o.migrate {
		out, errOut, code := r.cli(t, "", "migrate")
		if code != 0 || !strings.Contains(out, "schema migrated from version 0 to") {
			t.Fatalf("migrate: exit %d: %s %s", code, out, errOut)
		}
	}
	if o.requests > 0 {
		r.enqueueAs(t, o.requests, "e2e-%d", "person-%d")
	}
	return r
}

// identifierKeyFile writes a key file for IDENTIFIER_KEY_FILE, which `run` needs while
// IDENTIFIER_RETENTION is on (its default), and returns its path.
func identifierKeyFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "identifier-keys")
	if err := os.WriteFile(path, []byte("e2e-identifier-key-0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// cli runs an erasure-worker command to completion with the rig's environment.
func (r *rig) cli(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return cli(t, r.workerBin, r.env, stdin, args...)
}

// enqueue adds n requests through the binary: request_ref prefix-i, external_user_id
// prefix-person-i.
func (r *rig) enqueue(t *testing.T, prefix string, n int) {
	t.Helper()
	r.enqueueAs(t, n, prefix+"-%d", prefix+"-person-%d")
}

// enqueueAs adds n requests through the binary, their request_ref and external_user_id made
// from i by the two formats.
func (r *rig) enqueueAs(t *testing.T, n int, refFormat, idFormat string) {
	t.Helper()
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"request_ref":"%s","external_user_id":"%s"}`+"\n", fmt.Sprintf(refFormat, i), fmt.Sprintf(idFormat, i))
	}
	out, errOut, code := r.cli(t, in.String(), "enqueue")
	if code != 0 || out != fmt.Sprintf("inserted %d, duplicate 0, rejected 0\n", n) {
		t.Fatalf("enqueue: exit %d: %s %s", code, out, errOut)
	}
}

// --- Knot

// startKnotfake starts knotfake with args and returns its process and base URL.
func startKnotfake(t *testing.T, args ...string) (*process, string) {
	t.Helper()
	return startFake(t, "knotfake", []string{"KNOT_CLIENT_ID=" + knotClientID, "KNOT_SECRET=" + knotSecret}, args...)
}

// startFake starts one of the fakes on a free port and returns its URL from the line it prints.
func startFake(t *testing.T, name string, env []string, args ...string) (*process, string) {
	t.Helper()
	p := start(t, name, env, binary(t, name), append([]string{"-addr", "127.0.0.1:0"}, args...)...)
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

func fakeStats(t *testing.T, url string) (st knotfake.Stats) {
	t.Helper()
	getJSON(t, url+"/_fake/stats", &st)
	return st
}

// resetFake makes the knotfake at url forget what it has counted and which users it deleted.
func resetFake(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Post(url+"/_fake/reset", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s/_fake/reset: %s", url, resp.Status)
	}
}

// --- The doors

// doors are the privacy request systems as processes: a receiver of outcome webhooks, a fake
// Ketch (which pushes requests and takes callbacks), a fake Sombra holding Transcend's pending
// erasures, a fake OneTrust (a workflow that pushes subtasks, its OAuth server and its subtask
// API), a fake Fides (its SaaS connector calling us, and its callback endpoint); and the address
// of the workers' HTTP doors.
type doors struct {
	webhookURL, ketchURL, transcendURL, onetrustURL, fidesURL string
	apiAddr                                                   string
	env                                                       []string // the doors' settings for `run`
}

const (
	rigAPIToken       = "rig-api-token-0c7d"
	rigWebhookSecret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	rigKetchValue     = "Bearer rig-ketch-9e1f"
	rigKetchSpace     = "account_id"
	rigTranscendKey   = "rig-transcend-key-41aa"
	rigTranscendSilo  = "silo-rig-1"
	rigTranscendItems = "transcend-user"
	rigOneTrustToken  = "rig-onetrust-inbound-5c2e"
	rigOneTrustClient = "rig-onetrust-client"
	rigOneTrustSecret = "rig-onetrust-secret-77d0"
	rigFidesToken     = "rig-fides-token-3b9a"
)

func startDoors(t *testing.T, transcendItems int, args map[string][]string) *doors {
	t.Helper()
	d := &doors{apiAddr: freeAddr(t)}
	_, d.webhookURL = startFake(t, "webhookfake", []string{"WEBHOOK_FAKE_SECRET=" + rigWebhookSecret}, args["webhookfake"]...)
	_, d.ketchURL = startFake(t, "ketchfake", []string{"KETCH_IDENTITY_SPACE=" + rigKetchSpace}, args["ketchfake"]...)
	_, d.transcendURL = startFake(t, "transcendfake",
		[]string{"TRANSCEND_FAKE_API_KEY=" + rigTranscendKey, "TRANSCEND_FAKE_DATA_SILO_ID=" + rigTranscendSilo},
		append([]string{"-items", fmt.Sprint(transcendItems), "-items-prefix", rigTranscendItems}, args["transcendfake"]...)...)
	_, d.onetrustURL = startFake(t, "onetrustfake",
		[]string{"ONETRUST_CLIENT_ID=" + rigOneTrustClient, "ONETRUST_CLIENT_SECRET=" + rigOneTrustSecret}, args["onetrustfake"]...)
	// Fides' tasks await their callback 200ms after our 202; the worker holds each callback 1s.
	_, d.fidesURL = startFake(t, "fidesfake", nil, append([]string{"-park-delay", "200ms"}, args["fidesfake"]...)...)
	d.env = []string{
		"API_LISTEN_ADDR=" + d.apiAddr, "API_TOKEN=" + rigAPIToken,
		"REPORT_WEBHOOK_URL=" + d.webhookURL + "/outcomes", "REPORT_WEBHOOK_SECRET=" + rigWebhookSecret,
		"KETCH_AUTH_VALUE=" + rigKetchValue, "KETCH_IDENTITY_SPACE=" + rigKetchSpace,
		"KETCH_CALLBACK_ALLOW=" + strings.TrimPrefix(d.ketchURL, "http://"), // ketchfake: plain http on loopback
		"TRANSCEND_URL=" + d.transcendURL, "TRANSCEND_API_KEY=" + rigTranscendKey, "TRANSCEND_DATA_SILO_ID=" + rigTranscendSilo,
		"TRANSCEND_POLL_INTERVAL=1s",
		"ONETRUST_INBOUND_TOKEN=" + rigOneTrustToken, "ONETRUST_URL=" + d.onetrustURL,
		"ONETRUST_CLIENT_ID=" + rigOneTrustClient, "ONETRUST_CLIENT_SECRET=" + rigOneTrustSecret,
		"FIDES_AUTH_TOKEN=" + rigFidesToken, "FIDES_URL=" + d.fidesURL, "FIDES_CALLBACK_DELAY=1s",
	}
	return d
}

// waitAPI waits until a worker serves the HTTP doors.
func (d *doors) waitAPI(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get("http://" + d.apiAddr + "/v1/erasure-requests/none")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the HTTP doors did not open on %s within %s: %v", d.apiAddr, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// submitAPI sends n requests (api-0..) through POST /v1/erasure-requests, 8 at a time, and
// fails on any answer but 202.
func (d *doors) submitAPI(t *testing.T, n int) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			body := fmt.Sprintf(`{"request_ref":"api-%d","external_user_id":"api-person-%d"}`, i, i)
			req, _ := http.NewRequest("POST", "http://"+d.apiAddr+"/v1/erasure-requests", strings.NewReader(body))
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
func (d *doors) pushKetch(t *testing.T, n int) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"target": "http://" + d.apiAddr + "/v1/ketch", "auth_header": "Authorization", "auth_value": rigKetchValue,
		"count": n, "prefix": "ketch-person-", "identity_space": rigKetchSpace,
	})
	resp, err := http.Post(d.ketchURL+"/_fake/push", "application/json", bytes.NewReader(body))
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

// pushOneTrust makes the fake OneTrust workflow push n subtasks (onetrust-0..) to the worker's
// door, and fails unless every one was answered 202.
func (d *doors) pushOneTrust(t *testing.T, n int) {
	t.Helper()
	body, _ := json.Marshal(onetrustfake.PushSpec{Target: "http://" + d.apiAddr + "/v1/onetrust/subtasks",
		Bearer: rigOneTrustToken, Count: n, IDPrefix: "onetrust-", UserPrefix: "onetrust-person-"})
	var res onetrustfake.PushResult
	postJSON(t, d.onetrustURL+"/_fake/push", body, &res)
	if res.Sent != n || res.Answers["202"] != n {
		t.Fatalf("onetrust push: sent %d, answers %v; want %d answered 202", res.Sent, res.Answers, n)
	}
}

// postJSON posts body to url and decodes a 200's answer into v.
func postJSON(t *testing.T, url string, body []byte, v any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST %s: %d %v", url, resp.StatusCode, err)
	}
}

// pushFides makes the fake Fides push n erasure requests (fides-...) with callbacks to the
// worker's door, and fails unless every one was answered 202.
func (d *doors) pushFides(t *testing.T, n int) {
	t.Helper()
	body, _ := json.Marshal(fidesfake.PushSpec{Target: "http://" + d.apiAddr + "/v1/fides/erasures",
		AuthToken: rigFidesToken, Count: n, IDPrefix: "fides-", UserPrefix: "fides-person-"})
	var res fidesfake.PushResult
	postJSON(t, d.fidesURL+"/_fake/push", body, &res)
	if res.Sent != n || res.Answers["http_202"] != n {
		t.Fatalf("fides push: sent %d, answers %v; want %d answered 202", res.Sent, res.Answers, n)
	}
}

func (d *doors) fidesStats(t *testing.T) (st fidesfake.Stats) {
	getJSON(t, d.fidesURL+"/_fake/stats", &st)
	return st
}

func (d *doors) onetrustStats(t *testing.T) (st onetrustfake.Stats) {
	getJSON(t, d.onetrustURL+"/_fake/stats", &st)
	return st
}

func (d *doors) webhookStats(t *testing.T) (st webhookfake.Stats) {
	getJSON(t, d.webhookURL+"/_fake/stats", &st)
	return st
}

func (d *doors) ketchStats(t *testing.T) (st ketchfake.Stats) {
	getJSON(t, d.ketchURL+"/_fake/stats", &st)
	return st
}

func (d *doors) transcendStats(t *testing.T) (st transcendfake.Stats) {
	getJSON(t, d.transcendURL+"/_fake/stats", &st)
	return st
}

// --- Workers

// workerProc is a running `erasure-worker run`.
type workerProc struct {
	*process
	addr string // LISTEN_ADDR: /metrics and the probes
	id   string // its lease owner name, from its "worker starting" log line
}

// startWorker starts `erasure-worker run` and waits for its first log line to learn its id.
// See spawnWorker for what it is given.
func (r *rig) startWorker(t *testing.T, name string, extra ...string) *workerProc {
	t.Helper()
	w := r.spawnWorker(t, name, extra...)
	w.id = w.waitLog(t, "worker starting", 30*time.Second)["worker"].(string)
	return w
}

// spawnWorker starts `erasure-worker run` with the rig's environment, a LISTEN_ADDR of its own,
// the doors' settings when the rig has doors, the secret (unless extra sets KNOT_SECRET_FILE)
// and extra, which overrides the rest. It does not wait for the worker to start.
func (r *rig) spawnWorker(t *testing.T, name string, extra ...string) *workerProc {
	t.Helper()
	addr := freeAddr(t)
	env := append(append([]string{}, r.env...), "LISTEN_ADDR="+addr)
	if !hasSetting(extra, "KNOT_SECRET_FILE") {
		env = append(env, "KNOT_SECRET="+knotSecret)
	}
	if r.doors != nil {
		env = append(env, r.doors.env...)
	}
	return &workerProc{process: start(t, name, append(env, extra...), r.workerBin, "run"), addr: addr}
}

func hasSetting(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// logLines returns the worker's JSON log lines whose msg contains substr.
func (w *workerProc) logLines(substr string) []map[string]any {
	var out []map[string]any
	for _, l := range logMsgs(w.out.String(), substr) {
		var m map[string]any
		_ = json.Unmarshal([]byte(l), &m) // logMsgs kept only lines that parse
		out = append(out, m)
	}
	return out
}

// logMsgs returns the JSON log lines of out whose msg contains substr.
func logMsgs(out, substr string) []string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		if msg, _ := m["msg"].(string); strings.Contains(msg, substr) {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

// waitLog waits for a log line whose msg contains substr and returns it.
func (w *workerProc) waitLog(t *testing.T, substr string, within time.Duration) map[string]any {
	t.Helper()
	var line map[string]any
	queuetest.WaitFor(t, within, "log line "+strconv.Quote(substr), func() bool {
		if l := w.logLines(substr); len(l) > 0 {
			line = l[0]
			return true
		}
		select {
		case <-w.done:
			t.Fatalf("worker exited (%v) before logging %q", w.cmd.ProcessState, substr)
		default:
		}
		return false
	})
	return line
}

// metric scrapes /metrics and returns the value of the sample named exactly so (with its
// labels, e.g. `erasure_knot_requests_total{code="429"}`), or 0 when absent.
func (w *workerProc) metric(t *testing.T, sample string) float64 {
	t.Helper()
	for _, line := range strings.Split(httpGet(t, "http://"+w.addr+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// probe returns the HTTP status of GET path on the worker's LISTEN_ADDR (0 when it does not
// answer).
func (w *workerProc) probe(path string) int {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + w.addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// noPanic fails the test if the worker's output shows a panic or a data race.
func (w *workerProc) noPanic(t *testing.T) {
	t.Helper()
	out := w.out.String()
	for _, bad := range []string{"panic", "DATA RACE", "fatal error"} {
		if strings.Contains(out, bad) {
			t.Errorf("worker %s output holds %q", w.id, bad)
		}
	}
}

// freeze stops the worker with SIGSTOP, so that what it holds stops changing before kill9; the
// statements it already sent still land.
func (w *workerProc) freeze(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
}

// kill9 kills the worker with SIGKILL, as the kernel's OOM killer or a node failure would: no
// shutdown, no release of its claims, no goodbye to the rate limit. It returns once the process
// is gone.
func (w *workerProc) kill9(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w.done
}

// --- The database

// connect opens a connection to url for the test's own queries, closed at the end of the test.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// db opens a connection to the rig's database, closed at the end of the test.
func (r *rig) db(t *testing.T) *pgx.Conn {
	t.Helper()
	return connect(t, r.dbURL)
}

// counts returns the number of requests by "status" or "status/outcome".
func (r *rig) counts(t *testing.T) map[string]int64 {
	t.Helper()
	return r.countBy(t, `SELECT status || coalesce('/' || outcome, ''), count(*) FROM erasure_requests GROUP BY 1`)
}

// reportCounts returns the number of reports by "connector/status".
func (r *rig) reportCounts(t *testing.T) map[string]int64 {
	t.Helper()
	return r.countBy(t, `SELECT connector || '/' || status, count(*) FROM erasure_reports GROUP BY 1`)
}

// countBy runs a query of (key, count) rows on a connection of its own, so that it can be
// polled.
func (r *rig) countBy(t *testing.T, sql string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, r.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql)
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
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// drained waits until nothing is pending or running and returns the final counts; if the wait
// times out, the last counts are logged beside the failure.
func (r *rig) drained(t *testing.T, within time.Duration) map[string]int64 {
	t.Helper()
	var c map[string]int64
	drained := false
	defer func() {
		if !drained { // WaitFor gave up (t.Fatalf runs deferred calls)
			t.Logf("counts when the wait gave up: %v", c)
		}
	}()
	queuetest.WaitFor(t, within, "the queue to drain", func() bool {
		c = r.counts(t)
		return c["pending"]+c["running"] == 0
	})
	drained = true
	return c
}

// requestRow is one erasure_requests row as the assertions read it.
type requestRow struct {
	ID             int64
	RequestRef     string
	ExternalUserID string
	Status         string
	Outcome        string
	Attempts       int
	LastErrorCode  string
	LastError      string
	Calls          int // rows in erasure_attempts
	Successes      int // of them, deleted or not_found
}

// rows returns every request, by id.
func (r *rig) rows(t *testing.T) []requestRow {
	t.Helper()
	conn := r.db(t)
	rows, err := conn.Query(context.Background(), `
SELECT r.id, r.request_ref, r.external_user_id, r.status, coalesce(r.outcome, ''), r.attempts,
       coalesce(r.last_error_code, ''), coalesce(r.last_error, ''),
       (SELECT count(*) FROM erasure_attempts a WHERE a.request_id = r.id),
       (SELECT count(*) FROM erasure_attempts a WHERE a.request_id = r.id AND a.result IN ('deleted', 'not_found'))
FROM erasure_requests r ORDER BY r.id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (requestRow, error) {
		var x requestRow
		err := row.Scan(&x.ID, &x.RequestRef, &x.ExternalUserID, &x.Status, &x.Outcome, &x.Attempts,
			&x.LastErrorCode, &x.LastError, &x.Calls, &x.Successes)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
