package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/erasure-worker/erasure-worker/queue"
)

// What a pooler in transaction mode needs of every connection, and the connect timeout: no
// statement cache, no startup parameter PgBouncer would refuse, a bounded connect.
func TestConfigureIsSafeBehindATransactionPooler(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url     string
		app     string
		connect time.Duration
	}{
		{"postgres://u:secret@db:5432/erasure", "erasure-worker", queue.ConnectTimeout},
		{"postgres://u:secret@db:5432/erasure?application_name=mine&connect_timeout=30", "mine", 30 * time.Second},
	} {
		pool, err := queue.ParsePoolConfig(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := queue.ParseConnConfig(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		for _, cfg := range []*pgx.ConnConfig{pool.ConnConfig, conn} {
			if cfg.DefaultQueryExecMode != pgx.QueryExecModeExec || cfg.StatementCacheCapacity != 0 || cfg.DescriptionCacheCapacity != 0 {
				t.Errorf("%s: exec mode %v, caches %d and %d; want unprepared statements and no cache",
					tc.url, cfg.DefaultQueryExecMode, cfg.StatementCacheCapacity, cfg.DescriptionCacheCapacity)
			}
			if len(cfg.RuntimeParams) != 1 || cfg.RuntimeParams["application_name"] != tc.app {
				t.Errorf("%s: startup parameters %v; want application_name=%s alone", tc.url, cfg.RuntimeParams, tc.app)
			}
			if cfg.ConnectTimeout != tc.connect || cfg.DialFunc == nil {
				t.Errorf("%s: connect timeout %v; want %v", tc.url, cfg.ConnectTimeout, tc.connect)
			}
		}
	}
	if _, err := queue.ParsePoolConfig("postgres://u:secret@db:notaport/x"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("a bad URL: %v; want an error that does not repeat it", err)
	}
}
