package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A secret given as a flag is refused before anything else happens, in every command that takes
// it and in every spelling, and the refusal never repeats the value.
func TestSecretFlagsAreRefused(t *testing.T) {
	t.Parallel()
	const password = "hunter2-pw"
	const knotSecret = "s3cret-value"
	emptyDB := queuetest.EmptyURL(t)
	migratedDB := queuetest.URL(t)
	flagURL := "postgres://postgres:" + password + "@127.0.0.1:5432/postgres?sslmode=disable"
	env := map[string]string{"DATABASE_URL": emptyDB, "KNOT_CLIENT_ID": "id", "KNOT_SECRET": "from-env",
		"LISTEN_ADDR": "127.0.0.1:0"}
	refusedDB := "--database-url is refused: a flag's value is visible to every user of the machine (ps); set DATABASE_URL or DATABASE_URL_FILE instead"
	refusedKnot := "--knot-secret is refused: a flag's value is visible to every user of the machine (ps); set KNOT_SECRET or KNOT_SECRET_FILE instead"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--database-url", flagURL}, "run: " + refusedDB},
		{[]string{"run", "--knot-secret", knotSecret}, "run: " + refusedKnot},
		{[]string{"run", "--knot-secret=" + knotSecret}, "run: " + refusedKnot},
		{[]string{"run", "--log-level", "debug", "-knot-secret", knotSecret}, "run: " + refusedKnot},
		{[]string{"migrate", "--database-url", flagURL}, "migrate: " + refusedDB},
		{[]string{"migrate", "-database-url=" + flagURL}, "migrate: " + refusedDB},
		{[]string{"status", "--json", "--database-url=" + flagURL}, "status: " + refusedDB},
		{[]string{"status", "--", "--database-url=" + flagURL}, "status: " + refusedDB},
		{[]string{"requeue", "--all", "--database-url", flagURL}, "requeue: " + refusedDB},
		{[]string{"enqueue", "--database-url", flagURL}, "enqueue: " + refusedDB},
		{[]string{"enqueue", "-", "--database-url", flagURL}, "enqueue: " + refusedDB},
		{[]string{"run", "--database-url"}, "run: " + refusedDB}, // no value: still the refusal, not "needs an argument"
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			e := env
			if tc.args[0] == "enqueue" {
				e = map[string]string{"DATABASE_URL": migratedDB}
			}
			r := runCLI(t, e, `{"request_ref":"r1","external_user_id":"u1"}`+"\n", tc.args...)
			if r.code != exitUsage || r.stderr != "erasure-worker: "+tc.want+"\n" || r.stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 and only\n\t%s", r.code, r.stdout, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, password) || strings.Contains(r.stderr, knotSecret) {
				t.Errorf("the refusal repeats the secret: %q", r.stderr)
			}
		})
	}
	// Nothing ran: migrate did not migrate, enqueue did not insert.
	if v := appliedVersion(t, emptyDB); v != 0 {
		t.Errorf("the empty database is at schema version %d after refused commands", v)
	}
	if refs := dbRefs(t, migratedDB); refs != "" {
		t.Errorf("a refused enqueue inserted %s", refs)
	}
}

func appliedVersion(t *testing.T, url string) int32 {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	v, err := queue.New(pool).AppliedSchemaVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// DATABASE_URL_FILE holds the connection string as a mounted Secret does, final newline and all:
// migrate, enqueue and status work through it, by environment or by its flag.
func TestDatabaseURLFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "database-url")
	if err := os.WriteFile(file, []byte(queuetest.EmptyURL(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want, err := queue.SchemaVersion()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL_FILE": file}
	r := runCLI(t, env, "", "migrate")
	if r.code != 0 || r.stdout != fmt.Sprintf("schema migrated from version 0 to %d\n", want) {
		t.Fatalf("migrate through DATABASE_URL_FILE: %+v", r)
	}
	r = runCLI(t, env, `{"request_ref":"f1","external_user_id":"u1"}`+"\n", "enqueue")
	if r.code != 0 || r.stdout != "inserted 1, duplicate 0, rejected 0\n" {
		t.Errorf("enqueue through DATABASE_URL_FILE: %+v", r)
	}
	r = runCLI(t, nil, "", "status", "--json", "--database-url-file", file)
	if r.code != 0 || !strings.Contains(r.stdout, `"pending": {`+"\n"+`      "total": 1`) {
		t.Errorf("status through --database-url-file: %+v", r)
	}

	for _, tc := range []struct {
		name     string
		contents string // written to the file; "" leaves it missing
		env      map[string]string
		want     string
	}{
		{"both set", "postgres://u:hunter2@127.0.0.1:1/db\n", map[string]string{"DATABASE_URL": "postgres://u:hunter2@127.0.0.1:1/db"},
			"DATABASE_URL_FILE (--database-url-file): DATABASE_URL and DATABASE_URL_FILE are both set: set only one of them"},
		{"missing file", "", nil, "DATABASE_URL_FILE (--database-url-file): cannot read the secret file: open "},
		{"empty file", "\n", nil, "DATABASE_URL_FILE (--database-url-file): the secret file is empty"},
		{"not a URL", "postgres://u:hunter2@[::1/db\n", nil,
			"DATABASE_URL (read from DATABASE_URL_FILE): is not a valid URL (its value is not shown: it may hold a password)"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
		if tc.contents != "" {
			if err := os.WriteFile(path, []byte(tc.contents), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		e := map[string]string{"DATABASE_URL_FILE": path}
		for k, v := range tc.env {
			e[k] = v
		}
		for _, cmd := range []string{"migrate", "status", "run"} {
			r := runCLI(t, e, "", cmd)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "hunter2") {
				t.Errorf("%s: %s: exit %d, stderr %q; want exit 2 and %q, without the password", tc.name, cmd, r.code, r.stderr, tc.want)
			}
		}
	}
}
