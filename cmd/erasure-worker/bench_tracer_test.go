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
	// samples keeps when each statement of these kinds started and how long it took (section 11).
	samples map[string][]benchSample
}

// benchSample is one statement: when it started and how long it took.
type benchSample struct {
	at   time.Time
	took time.Duration
}

func newBenchTracer() *benchTracer {
	return &benchTracer{byKind: map[string]int64{}, timeIn: map[string]time.Duration{}}
}

// keep makes the tracer keep every statement of these kinds from now on.
func (tr *benchTracer) keep(kinds ...string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.samples = map[string][]benchSample{}
	for _, k := range kinds {
		tr.samples[k] = nil
	}
}

// between returns the times of the statements of kind that started in [from, to), sorted.
func (tr *benchTracer) between(kind string, from, to time.Time) []time.Duration {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var got []time.Duration
	for _, s := range tr.samples[kind] {
		if !s.at.Before(from) && s.at.Before(to) {
			got = append(got, s.took)
		}
	}
	slices.Sort(got)
	return got
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
		took := time.Since(s.at)
		tr.mu.Lock()
		tr.timeIn[s.kind] += took
		if kept, ok := tr.samples[s.kind]; ok {
			tr.samples[s.kind] = append(kept, benchSample{s.at, took})
		}
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
		{"WITH batch AS MATERIALIZED", "retention select"},
		{"SET external_user_id = t.pseudonym", "pseudonymise"},
		{"DELETE FROM erasure_requests r USING oldest", "retention delete"},
		{"CASE WHEN $1::bigint > 0 THEN (SELECT count(*)", "retention stats"},
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
