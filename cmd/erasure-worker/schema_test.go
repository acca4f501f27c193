package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// noSchema is what every command says of a database `migrate` never ran against.
func noSchema(t *testing.T) string {
	t.Helper()
	v, err := queue.SchemaVersion()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("the database has no erasure-worker schema (version 0, this binary needs %d): run `erasure-worker migrate`", v)
}

// logMessages returns the msg of each JSON log line in out.
func logMessages(out string) []string {
	var msgs []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct{ Msg string }
		if json.Unmarshal(sc.Bytes(), &line) == nil {
			msgs = append(msgs, line.Msg)
		}
	}
	return msgs
}

func countMessage(out, msg string) int {
	n := 0
	for _, m := range logMessages(out) {
		if m == msg {
			n++
		}
	}
	return n
}

// probeGet returns the status and body of GET url (0 when nothing answers).
func probeGet(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// inProcessRun is `erasure-worker run` started through run(), as main does.
type inProcessRun struct {
	addr   string
	log    *syncBuffer
	stop   context.CancelFunc
	exited chan int
}

func startRun(t *testing.T, env map[string]string) *inProcessRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &inProcessRun{addr: freeAddr(t), log: &syncBuffer{}, stop: cancel, exited: make(chan int, 1)}
	e := map[string]string{"LISTEN_ADDR": r.addr, "LOG_FORMAT": "json", "IDENTIFIER_RETENTION": "off"}
	for k, v := range env {
		e[k] = v
	}
	go func() {
		r.exited <- run(ctx, []string{"run"}, func(k string) string { return e[k] }, strings.NewReader(""), io.Discard, r.log)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.exited:
		case <-time.After(30 * time.Second):
			t.Error("run did not return within 30s of its context ending")
		}
		if t.Failed() {
			t.Logf("--- run's log ---\n%s", r.log.String())
		}
	})
	return r
}

// stopped cancels run's context and returns its exit code and how long it took.
func (r *inProcessRun) stopped(t *testing.T, within time.Duration) (int, time.Duration) {
	t.Helper()
	began := time.Now()
	r.stop()
	select {
	case code := <-r.exited:
		r.exited <- code // for the cleanup
		return code, time.Since(began)
	case <-time.After(within):
		t.Fatalf("run did not return within %v of SIGTERM", within)
		return 0, 0
	}
}

// `run` against a database that was never migrated: it says so once, in words, keeps serving
// its probes (healthy, not ready) and starts by itself once someone runs migrate.
func TestRunWaitsForAnUnmigratedDatabaseAndStartsAfterMigrate(t *testing.T) {
	// Not parallel: it shortens the package's schema check interval, and puts it back after
	// run has returned (cleanups run last first).
	was := schemaCheckInterval
	t.Cleanup(func() { schemaCheckInterval = was })
	schemaCheckInterval = 100 * time.Millisecond

	dbURL := queuetest.EmptyURL(t)
	fake := knotfake.New(knotfake.Options{ClientID: "id", Secret: "sec"})
	knot := httptest.NewServer(fake)
	t.Cleanup(knot.Close)
	env := map[string]string{"DATABASE_URL": dbURL, "KNOT_BASE_URL": knot.URL, "KNOT_CLIENT_ID": "id", "KNOT_SECRET": "sec",
		"POLL_INTERVAL": "100ms"}
	w := startRun(t, env)
	want := noSchema(t)

	queuetest.WaitFor(t, 20*time.Second, "/readyz to give the reason", func() bool {
		code, body := probeGet("http://" + w.addr + "/readyz")
		return code == http.StatusServiceUnavailable && body == want+"\n"
	})
	time.Sleep(10 * schemaCheckInterval)
	if code, body := probeGet("http://" + w.addr + "/readyz"); code != http.StatusServiceUnavailable || body != want+"\n" {
		t.Errorf("/readyz while unmigrated: %d %q; want 503 and %q", code, body, want)
	}
	if code, body := probeGet("http://" + w.addr + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while unmigrated: %d %q; want 200: a restart would not migrate the database", code, body)
	}
	if code, body := probeGet("http://" + w.addr + "/metrics"); code != http.StatusOK || !strings.Contains(body, "erasure_worker_paused 0") {
		t.Errorf("/metrics while unmigrated: %d, erasure_worker_paused absent", code)
	}
	log := w.log.String()
	if n := countMessage(log, want); n != 1 {
		t.Errorf("the log holds %q %d times over 10 checks; want once:\n%s", want, n, log)
	}
	if strings.Contains(log, "does not exist") || strings.Contains(log, "SQLSTATE") {
		t.Errorf("the log holds a raw SQL error:\n%s", log)
	}
	if countMessage(log, "worker starting") != 0 {
		t.Error("the worker started on an unmigrated database")
	}

	if r := runCLI(t, env, "", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %+v", r)
	}
	if r := runCLI(t, env, `{"request_ref":"after-migrate","external_user_id":"u1"}`+"\n", "enqueue"); r.code != 0 {
		t.Fatalf("enqueue: %+v", r)
	}
	queuetest.WaitFor(t, 20*time.Second, "/readyz to pass after migrate", func() bool {
		code, _ := probeGet("http://" + w.addr + "/readyz")
		return code == http.StatusOK
	})
	queuetest.WaitFor(t, 20*time.Second, "the request enqueued after migrate to be carried out", func() bool {
		return (&rig{dbURL: dbURL}).counts(t)["succeeded/deleted"] == 1
	})
	if st := fake.Stats(); st.Deleted != 1 {
		t.Errorf("Knot deleted %d users; want 1", st.Deleted)
	}
	log = w.log.String()
	if n := countMessage(log, "schema is ready; starting"); n != 1 {
		t.Errorf(`"schema is ready; starting" logged %d times; want once`, n)
	}
	if n := countMessage(log, want); n != 1 {
		t.Errorf("the log holds %q %d times; want once", want, n)
	}
	if code, _ := w.stopped(t, 15*time.Second); code != exitOK {
		t.Errorf("exit %d after SIGTERM; want 0", code)
	}
}

// SIGTERM while waiting for the schema exits 0 at once, without waiting out a check interval.
func TestRunStopsPromptlyWhileWaitingForTheSchema(t *testing.T) {
	t.Parallel()
	w := startRun(t, map[string]string{"DATABASE_URL": queuetest.EmptyURL(t), "KNOT_CLIENT_ID": "id", "KNOT_SECRET": "sec"})
	queuetest.WaitFor(t, 20*time.Second, "the wait to be logged", func() bool { return countMessage(w.log.String(), noSchema(t)) == 1 })
	if code, took := w.stopped(t, 10*time.Second); code != exitOK || took > time.Second {
		t.Errorf("SIGTERM while waiting: exit %d after %v; want 0 within a second", code, took)
	}
}

// A database migrated by a newer release: run waits (rolling back the binary must not corrupt
// it), and every other command refuses it with the same words.
func TestANewerSchemaIsNamed(t *testing.T) {
	t.Parallel()
	dbURL := queuetest.URL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE erasure_schema_version SET version = version + 1`); err != nil {
		t.Fatal(err)
	}
	v, _ := queue.SchemaVersion()
	want := fmt.Sprintf("schema version %d is newer than this binary's %d: roll forward to a newer erasure-worker (migrating down is not supported)", v+1, v)
	w := startRun(t, map[string]string{"DATABASE_URL": dbURL, "KNOT_CLIENT_ID": "id", "KNOT_SECRET": "sec"})
	queuetest.WaitFor(t, 20*time.Second, "/readyz to give the reason", func() bool {
		code, body := probeGet("http://" + w.addr + "/readyz")
		return code == http.StatusServiceUnavailable && body == want+"\n"
	})
	for _, args := range [][]string{{"status"}, {"requeue", "--all"}, {"enqueue"}} {
		r := runCLI(t, map[string]string{"DATABASE_URL": dbURL}, `{"request_ref":"r","external_user_id":"u"}`+"\n", args...)
		if r.code != exitFailure || r.stderr != "erasure-worker: "+args[0]+": "+want+"\n" {
			t.Errorf("%s on a newer schema: exit %d, stderr %q; want exit 1 and %q", args[0], r.code, r.stderr, want)
		}
	}
}

// status, requeue and enqueue against an unmigrated database say what to do, not the SQL error.
func TestShortCommandsNameAnUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": queuetest.EmptyURL(t)}
	want := noSchema(t)
	for _, args := range [][]string{{"status"}, {"status", "--watch"}, {"status", "--json"}, {"requeue", "--all"}, {"enqueue"}} {
		r := runCLI(t, env, `{"request_ref":"r","external_user_id":"u"}`+"\n", args...)
		if r.code != exitFailure || r.stderr != "erasure-worker: "+args[0]+": "+want+"\n" || r.stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and only %q", args, r.code, r.stdout, r.stderr, want)
		}
	}
}
