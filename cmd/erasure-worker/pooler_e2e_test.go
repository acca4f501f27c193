package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// Issue 19: behind PgBouncer in transaction mode, with fewer server connections than the
// replicas' pools hold, DISABLE_LISTEN=true is all it takes: three replicas and the HTTP doors
// finish every request fed through the API, the table and enqueue, no statement meets another
// client's prepared statement (42P05) or misses its own (26000), and migrate, enqueue, status,
// evidence and reports requeue work through the pooler too.
func TestEndToEndBehindPgBouncerInTransactionMode(t *testing.T) {
	t.Parallel()
	const (
		replicas   = 3
		serverConn = 4   // PgBouncer's pool: fewer than the replicas' connections
		perDoor    = 150 // requests through each of the API, the table and enqueue
	)
	direct := queuetest.EmptyURL(t)
	bouncer := startPgBouncer(t, direct, serverConn)
	// The test reads the table directly (r.dbURL); every process it starts goes through PgBouncer.
	r := newRig(t, withFake("-latency", "5ms", "-missing", "0.1"), withDB(direct), withWorkerDB(bouncer.url), withoutMigrate())
	var logs []*workerProc

	// Two migrates at once through the pooler: one migrates, the other waits for it and finds
	// the schema up to date.
	var wg sync.WaitGroup
	outs := make([]string, 2)
	for i := range outs {
		wg.Go(func() {
			out, errOut, code := r.cli(t, "", "migrate")
			outs[i] = fmt.Sprintf("exit %d: %s%s", code, out, errOut)
		})
	}
	wg.Wait()
	migrated := strings.Contains(outs[0], "exit 0: schema migrated from version 0 to") && strings.Contains(outs[1], "exit 0: schema is up to date") ||
		strings.Contains(outs[1], "exit 0: schema migrated from version 0 to") && strings.Contains(outs[0], "exit 0: schema is up to date")
	if !migrated {
		t.Fatalf("two migrates through PgBouncer: %q", outs)
	}

	var in strings.Builder
	for i := range perDoor {
		fmt.Fprintf(&in, `{"request_ref":"file-%d","external_user_id":"file-person-%d"}`+"\n", i, i)
	}
	if out, errOut, code := r.cli(t, in.String(), "enqueue"); code != 0 || out != fmt.Sprintf("inserted %d, duplicate 0, rejected 0\n", perDoor) {
		t.Fatalf("enqueue through PgBouncer: exit %d: %s %s", code, out, errOut)
	}

	api := &doors{apiAddr: freeAddr(t)}
	for i := range replicas {
		extra := []string{"DISABLE_LISTEN=true", "POLL_INTERVAL=200ms", "RATE_LIMIT_RPS=1000", "CONCURRENCY=8",
			"STATS_INTERVAL=1s", "RATE_LIMIT_SYNC_INTERVAL=500ms"}
		if i == 0 {
			extra = append(extra, "API_LISTEN_ADDR="+api.apiAddr, "API_TOKEN="+rigAPIToken)
		}
		logs = append(logs, r.startWorker(t, fmt.Sprintf("replica %d", i), extra...))
	}
	api.waitAPI(t, 30*time.Second)
	wg.Go(func() { api.submitAPI(t, perDoor) })
	// The SQL contract, through the pooler, as a privacy request system would send it: one
	// statement each, with arguments.
	for i := range perDoor {
		bouncer.exec(t, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, $2) ON CONFLICT (request_ref) DO NOTHING`,
			fmt.Sprintf("table-%d", i), fmt.Sprintf("table-person-%d", i))
	}
	wg.Wait()
	if clients := bouncer.count(t, "SHOW CLIENTS"); clients <= serverConn {
		t.Errorf("PgBouncer had %d clients for %d server connections: the test proves nothing", clients, serverConn)
	}

	c := r.drained(t, 90*time.Second)
	if c["succeeded/deleted"]+c["succeeded/not_found"] != 3*perDoor || c["failed"] != 0 {
		t.Errorf("final states %v: want all %d succeeded", c, 3*perDoor)
	}
	if servers := bouncer.count(t, "SHOW SERVERS"); servers > serverConn {
		t.Errorf("PgBouncer holds %d server connections; its pool is %d", servers, serverConn)
	}

	// The short commands, through the pooler.
	if out, errOut, code := r.cli(t, "", "status"); code != 0 || !strings.Contains(out, "succeeded") {
		t.Errorf("status through PgBouncer: exit %d: %s %s", code, out, errOut)
	}
	if out, errOut, code := r.cli(t, "", "evidence", "--ref", "api-7"); code != 0 || !strings.Contains(out, "api-7") {
		t.Errorf("evidence through PgBouncer: exit %d: %s %s", code, out, errOut)
	}
	if out, errOut, code := r.cli(t, "", "evidence", "--since", "2000-01-01"); code != 0 || strings.Count(out, "\n") != 3*perDoor {
		t.Errorf("evidence --since through PgBouncer: exit %d, %d lines: %s", code, strings.Count(out, "\n"), errOut)
	}
	if out, errOut, code := r.cli(t, "", "reports", "requeue"); code != 0 {
		t.Errorf("reports requeue through PgBouncer: exit %d: %s %s", code, out, errOut)
	}

	for i, w := range logs {
		if code, took := w.stop(t, 30*time.Second); code != 0 {
			t.Errorf("replica %d: exit %d after SIGTERM (took %v)", i, code, took)
		}
	}
	var procs []*process
	for _, w := range logs {
		procs = append(procs, w.process)
	}
	for i, p := range append(procs, bouncer.process) {
		out := p.out.String()
		for _, bad := range []string{"42P05", "26000", "prepared statement", "DATA RACE", "panic"} {
			if strings.Contains(out, bad) {
				t.Errorf("process %d's log holds %q", i, bad)
			}
		}
	}
	for _, o := range outs {
		if strings.Contains(o, "42P05") || strings.Contains(o, "26000") {
			t.Errorf("migrate said %q", o)
		}
	}
}

// pgBouncer is a PgBouncer process of the test's own in front of one database.
type pgBouncer struct {
	*process
	url      string // the database, through PgBouncer
	admin    string // PgBouncer's console
	database string
}

// startPgBouncer runs Debian's PgBouncer (apt-get install pgbouncer) on a free loopback port in
// transaction mode, with poolSize server connections to dbURL's database, and returns once it
// accepts connections. It sets nothing that the service would need from it:
// ignore_startup_parameters is empty, as in PgBouncer's default configuration.
func startPgBouncer(t *testing.T, dbURL string, poolSize int) *pgBouncer {
	t.Helper()
	bin := "/usr/sbin/pgbouncer" // Debian's, outside a non-root user's PATH
	if _, err := os.Stat(bin); err != nil {
		bin = requireTool(t, "pgbouncer", "apt-get install pgbouncer")
	}
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	// PgBouncer refuses to run as root; its -u drops to another user once it has read its files.
	dir, err := os.MkdirTemp("", "erasure-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	port := addr[strings.LastIndex(addr, ":")+1:]
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %s
unix_socket_dir =
auth_type = trust
auth_file = %s
admin_users = %s
pool_mode = transaction
default_pool_size = %d
max_db_connections = %d
max_client_conn = 500
server_login_retry = 1
`, cfg.Host, cfg.Port, port, filepath.Join(dir, "userlist.txt"), cfg.User, poolSize, poolSize)
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  fmt.Sprintf("%q %q\n", cfg.User, cfg.Password),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "postgres"}, args...)
	}
	b := &pgBouncer{process: startCmd(t, "pgbouncer", exec.Command(bin, args...)), database: cfg.Database}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(cfg.User, cfg.Password), Host: addr, Path: "/" + cfg.Database, RawQuery: "sslmode=disable"}
	b.url = u.String()
	u.Path = "/pgbouncer"
	b.admin = u.String()
	queuetest.WaitFor(t, 20*time.Second, "PgBouncer to accept connections", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, b.admin)
		if err == nil {
			conn.Close(ctx)
		}
		return err == nil
	})
	return b
}

// exec runs one statement through PgBouncer, unprepared.
func (b *pgBouncer) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, append([]any{pgx.QueryExecModeExec}, args...)...); err != nil {
		t.Fatal(err)
	}
}

// count returns how many rows one of PgBouncer's SHOW commands lists for the test's database.
func (b *pgBouncer) count(t *testing.T, show string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, show, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		values, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		for i, f := range rows.FieldDescriptions() {
			if f.Name == "database" && fmt.Sprint(values[i]) == b.database {
				n++
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
