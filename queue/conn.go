package queue

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ConnectTimeout bounds opening one connection (TCP, TLS and authentication) when the URL names
// no connect_timeout: a server that accepts the TCP connection and never answers costs seconds.
const ConnectTimeout = 5 * time.Second

// Keepalives probe an idle connection (LISTEN's, mostly) so that a peer that vanished without a
// FIN is found in about half a minute, not after the kernel's two hours.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

// ParsePoolConfig parses a connection string into a pool configuration made by Configure. Its
// error never repeats the string, which may hold a password.
func ParsePoolConfig(url string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errors.New("cannot be parsed as a PostgreSQL connection string")
	}
	Configure(cfg.ConnConfig)
	return cfg, nil
}

// ParseConnConfig is ParsePoolConfig for a single connection.
func ParseConnConfig(url string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, errors.New("cannot be parsed as a PostgreSQL connection string")
	}
	Configure(cfg)
	return cfg, nil
}

// Configure makes a connection safe behind a pooler in transaction mode (PgBouncer's
// pool_mode=transaction), where consecutive statements of one client may run on different server
// connections, and bounds the time it may hang:
//
//   - Every statement is sent unnamed, parsed, bound and executed in one round trip
//     (QueryExecModeExec): nothing is prepared on a server connection that another client might
//     get next (pgx's default statement cache fails there with 42P05 or 26000).
//   - No startup parameter other than application_name: PgBouncer refuses unknown ones.
//   - A connect timeout (ConnectTimeout unless the URL sets connect_timeout) and TCP keepalives.
//
// The queue sets no session state (SET, session advisory locks, LISTEN outside Listen), so
// nothing else depends on getting the same server connection twice.
func Configure(cfg *pgx.ConnConfig) {
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	cfg.StatementCacheCapacity = 0
	cfg.DescriptionCacheCapacity = 0
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "erasure-worker"
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = ConnectTimeout
	}
	d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAliveConfig: keepAlive}
	cfg.DialFunc = d.DialContext
}

// Prepared lets a connection that talks to PostgreSQL itself, with no pooler in between, keep
// pgx's cache of prepared statements: the server then parses and plans each of the queue's
// statements once per connection rather than at every call, which the worker's hot path (claim,
// take, finish) feels. `run` asks for it unless DISABLE_LISTEN says a pooler is in between.
func Prepared(cfg *pgx.ConnConfig) {
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	cfg.StatementCacheCapacity = 512 // pgx's defaults, which Configure turned off
	cfg.DescriptionCacheCapacity = 512
}

// connect opens a connection outside the pool with the pool's settings.
func connect(ctx context.Context, pool db) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
}
