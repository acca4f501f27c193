//go:build bench

package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// benchTracer counts the statements a pool sends, by what they do.
type benchTracer struct {
	mu        sync.Mutex
	byKind    map[string]int64
	timeIn    map[string]time.Duration
	claimSQL  string
	claimArgs []any
}

func newBenchTracer() *benchTracer {
	return &benchTracer{byKind: map[string]int64{}, timeIn: map[string]time.Duration{}}
}

type benchTraceKey struct{}

type benchTraceStart struct {
	kind string
	at   time.Time
}

func (tr *benchTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	kind := benchStatementKind(d.SQL)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.byKind[kind]++
	if kind == "claim" {
		tr.claimSQL, tr.claimArgs = d.SQL, d.Args
	}
	return context.WithValue(ctx, benchTraceKey{}, benchTraceStart{kind, time.Now()})
}

func (tr *benchTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if s, ok := ctx.Value(benchTraceKey{}).(benchTraceStart); ok {
		tr.mu.Lock()
		tr.timeIn[s.kind] += time.Since(s.at)
		tr.mu.Unlock()
	}
}

func (tr *benchTracer) total() int64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var n int64
	for _, v := range tr.byKind {
		n += v
	}
	return n
}

// stats is how many statements of a kind were sent and their mean time.
func (tr *benchTracer) stats(kind string) (int64, time.Duration) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := tr.byKind[kind]
	if n == 0 {
		return 0, 0
	}
	return n, tr.timeIn[kind] / time.Duration(n)
}

func (tr *benchTracer) claimStatement() (string, []any) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.claimSQL, tr.claimArgs
}

func (tr *benchTracer) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	kinds := make([]string, 0, len(tr.byKind))
	for k := range tr.byKind {
		kinds = append(kinds, k)
	}
	slices.SortFunc(kinds, func(a, b string) int { return int(tr.byKind[b] - tr.byKind[a]) })
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s %d (mean %s)", k, tr.byKind[k], benchMs(tr.timeIn[k]/time.Duration(tr.byKind[k])))
	}
	return strings.Join(parts, ", ")
}

// benchStatementKind names a statement of package queue by what it does.
func benchStatementKind(sql string) string {
	for _, k := range []struct{ marker, kind string }{
		{"FOR UPDATE SKIP LOCKED\n)\nUPDATE erasure_requests r\nSET status = 'running'", "claim"},
		{"INSERT INTO erasure_attempts", "finish"},
		{"INSERT INTO erasure_workers", "heartbeat"},
		{"DELETE FROM erasure_workers", "leave"},
		{"pg_notify", "notify"},
		{"lease_expires_at < now()", "recover"},
		{"count(*) FROM erasure_requests WHERE status = 'pending'", "stats"},
		{"erasure_rate_limit", "rate limit"},
		{"LISTEN", "listen"},
	} {
		if strings.Contains(sql, k.marker) {
			return k.kind
		}
	}
	s := strings.Join(strings.Fields(sql), " ")
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}
