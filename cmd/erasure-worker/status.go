package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/queue"
)

func runStatus(ctx context.Context, env *environment, args []string) int {
	s := newSettingSet("status", env)
	dbURL := s.RequireDatabaseURL()
	var asJSON, watch bool
	var recent int
	s.Flags().BoolVar(&asJSON, "json", false, "")
	s.Flags().BoolVar(&watch, "watch", false, "")
	s.Flags().IntVar(&recent, "recent", 10, "")
	s.FlagExtra("json", "print the status as JSON")
	s.FlagExtra("recent N", "how many recent failures to list (default 10)")
	s.FlagExtra("watch", "print a progress line every second until nothing is pending or running, then the status")
	if code, ok := parseOnly(s, env, args); !ok {
		return code
	}
	q, closeDB, code := connectQueue(ctx, env, s, dbURL)
	if q == nil {
		return code
	}
	defer closeDB()

	if watch {
		if err := watchProgress(ctx, q, env.stdout); err != nil {
			if ctx.Err() != nil {
				return exitOK // interrupted: the person watching has seen enough
			}
			env.errorf("status: %v", err)
			return exitFailure
		}
		if ctx.Err() != nil {
			return exitOK
		}
	}
	sum, err := q.Summarize(ctx, recent)
	if err != nil {
		env.errorf("status: %v", err)
		return exitFailure
	}
	rl, err := q.ReadRateLimit(ctx)
	if err != nil {
		env.errorf("status: %v", err)
		return exitFailure
	}
	reports, now, err := q.SummarizeReports(ctx)
	if err != nil {
		env.errorf("status: %v", err)
		return exitFailure
	}
	if asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		doc := statusJSON(sum, rl)
		doc.Reports = reportsJSON(reports, now)
		if err := enc.Encode(doc); err != nil {
			env.errorf("status: %v", err)
			return exitFailure
		}
		return exitOK
	}
	printStatus(env.stdout, sum, rl)
	printReports(env.stdout, reports, now)
	return exitOK
}

// watchProgress prints one line a second, from the cheap gauges query, until the queue holds
// nothing pending or running.
func watchProgress(ctx context.Context, q *queue.Queue, w io.Writer) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastOpen int64 = -1
	for {
		st, err := q.Stats(ctx)
		if err != nil {
			return err
		}
		open := st.Pending + st.Running
		rate := ""
		if lastOpen >= 0 {
			rate = fmt.Sprintf("  %d/s", max(lastOpen-open, 0))
		}
		lastOpen = open
		fmt.Fprintf(w, "pending %d  running %d  failed %d  oldest pending %s%s\n",
			st.Pending, st.Running, st.Failed, st.OldestPendingAge().Round(time.Second), rate)
		if open == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

type statusDoc struct {
	Counts           map[string]map[string]int64 `json:"counts"`
	OldestPendingAge float64                     `json:"oldest_pending_age_seconds"`
	Overdue          int64                       `json:"overdue"`
	DueSoon          int64                       `json:"due_within_7_days"`
	KnotCalls        int64                       `json:"knot_calls"`
	Retries          int64                       `json:"retries"`
	RecentPerSecond  float64                     `json:"recent_requests_per_second"`
	RecentFailures   []failureDoc                `json:"recent_failures"`
	RateLimit        rateLimitDoc                `json:"rate_limit"`
	Reports          []reportsDoc                `json:"reports"`
}

// reportsDoc is one connector's reports: where the outcomes stand with the system they go to.
type reportsDoc struct {
	Connector        string  `json:"connector"`
	Waiting          int64   `json:"waiting"` // the request has not finished
	Pending          int64   `json:"pending"` // to deliver, or being delivered
	Retrying         int64   `json:"retrying"`
	Delivered        int64   `json:"delivered"`
	Failed           int64   `json:"failed"`
	Paused           bool    `json:"paused"`
	OldestPendingAge float64 `json:"oldest_pending_age_seconds"`
	LastError        string  `json:"last_error,omitempty"`
}

func reportsJSON(rs []queue.ReportSummary, now time.Time) []reportsDoc {
	out := []reportsDoc{}
	for _, r := range rs {
		d := reportsDoc{Connector: r.Connector, Waiting: r.Waiting, Pending: r.Pending + r.Delivering, Retrying: r.RetriesPending,
			Delivered: r.Delivered, Failed: r.Failed, Paused: r.Paused, LastError: r.LastError}
		if !r.OldestPending.IsZero() {
			d.OldestPendingAge = now.Sub(r.OldestPending).Seconds()
		}
		out = append(out, d)
	}
	return out
}

func printReports(w io.Writer, rs []queue.ReportSummary, now time.Time) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintln(w, "\nREPORTS (outcomes told to the privacy request systems; erasure-worker reports requeue re-sends failed ones)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTOR\tWAITING\tPENDING\tRETRYING\tDELIVERED\tFAILED\tOLDEST PENDING\tLAST ERROR")
	for _, d := range reportsJSON(rs, now) {
		last := oneLine(d.LastError, 80)
		if d.Paused {
			last = "PAUSED: the receiver rejects our credentials; " + last
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", d.Connector, d.Waiting, d.Pending, d.Retrying, d.Delivered, d.Failed,
			(time.Duration(d.OldestPendingAge * float64(time.Second))).Round(time.Second), last)
	}
	tw.Flush()
}

type rateLimitDoc struct {
	CeilingRPS float64      `json:"ceiling_rps"`
	CurrentRPS float64      `json:"current_rps"`
	Replicas   []replicaDoc `json:"replicas"`
}

type replicaDoc struct {
	ID               string    `json:"id"`
	StartedAt        time.Time `json:"started_at"`
	HeartbeatSeconds float64   `json:"heartbeat_age_seconds"`
	Busy             bool      `json:"busy"`
	ShareRPS         float64   `json:"share_rps"`
	// Paused is null for a replica of a release that does not tell its pause.
	Paused *bool `json:"paused"`
}

type failureDoc struct {
	ID          int64     `json:"id"`
	RequestRef  string    `json:"request_ref"`
	Outcome     string    `json:"outcome"`
	ErrorCode   string    `json:"error_code"`
	Error       string    `json:"error"`
	Attempts    int       `json:"attempts"`
	CompletedAt time.Time `json:"completed_at"`
}

func statusJSON(s queue.Summary, rl queue.RateLimit) statusDoc {
	d := statusDoc{
		Counts:           map[string]map[string]int64{},
		OldestPendingAge: s.OldestPendingAge().Seconds(),
		Overdue:          s.Overdue,
		DueSoon:          s.DueSoon,
		KnotCalls:        s.Calls,
		Retries:          s.Retries,
		RecentPerSecond:  recentRate(s),
		RecentFailures:   []failureDoc{},
		RateLimit:        rateLimitDoc{CeilingRPS: rl.CeilingRPS, CurrentRPS: rl.CurrentRPS, Replicas: []replicaDoc{}},
	}
	for _, r := range rl.Replicas {
		if r.Alive {
			doc := replicaDoc{r.ID, r.StartedAt, r.HeartbeatAge.Seconds(), r.Busy, r.ShareRPS, nil}
			if r.PausedKnown {
				doc.Paused = &r.Paused
			}
			d.RateLimit.Replicas = append(d.RateLimit.Replicas, doc)
		}
	}
	for _, st := range []string{queue.StatusPending, queue.StatusRunning, queue.StatusSucceeded, queue.StatusFailed} {
		d.Counts[st] = map[string]int64{"total": 0}
	}
	for _, c := range s.ByOutcome {
		d.Counts[c.Status]["total"] += c.Count
		if c.Outcome != "" {
			d.Counts[c.Status][c.Outcome] = c.Count
		}
	}
	for _, f := range s.RecentFailures {
		d.RecentFailures = append(d.RecentFailures, failureDoc(f))
	}
	return d
}

func recentRate(s queue.Summary) float64 {
	if s.ActiveSeconds < 1 {
		return float64(s.CompletedRecently)
	}
	return float64(s.CompletedRecently) / s.ActiveSeconds
}

func printStatus(w io.Writer, s queue.Summary, rl queue.RateLimit) {
	d := statusJSON(s, rl)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCOUNT\tOUTCOMES")
	for _, st := range []string{queue.StatusPending, queue.StatusRunning, queue.StatusSucceeded, queue.StatusFailed} {
		var parts []string
		for _, c := range s.ByOutcome {
			if c.Status == st && c.Outcome != "" {
				parts = append(parts, fmt.Sprintf("%s %d", c.Outcome, c.Count))
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", st, d.Counts[st]["total"], strings.Join(parts, ", "))
	}
	tw.Flush()
	fmt.Fprintf(w, "\noldest pending      %s\n", s.OldestPendingAge().Round(time.Second))
	fmt.Fprintf(w, "overdue             %d\n", s.Overdue)
	fmt.Fprintf(w, "due within 7 days   %d\n", s.DueSoon)
	fmt.Fprintf(w, "knot calls          %d (retries %d)\n", s.Calls, s.Retries)
	fmt.Fprintf(w, "recent rate         %.1f requests/s over the last %s of activity\n", recentRate(s), (time.Duration(s.ActiveSeconds * float64(time.Second))).Round(time.Second))
	if rl.CeilingRPS > 0 {
		fmt.Fprintf(w, "rate limit          %.4g of %.4g calls/s, shared by %d live replica(s)\n", rl.CurrentRPS, rl.CeilingRPS, len(d.RateLimit.Replicas))
	}
	if len(d.RateLimit.Replicas) > 0 {
		fmt.Fprintln(w, "\nREPLICAS")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTARTED\tHEARTBEAT\tBUSY\tSHARE\tPAUSED")
		for _, r := range d.RateLimit.Replicas {
			paused := "unknown"
			if r.Paused != nil {
				paused = strconv.FormatBool(*r.Paused)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1fs ago\t%t\t%.4g calls/s\t%s\n", r.ID, r.StartedAt.UTC().Format(time.RFC3339), r.HeartbeatSeconds, r.Busy, r.ShareRPS, paused)
		}
		tw.Flush()
	}
	if len(s.RecentFailures) == 0 {
		return
	}
	fmt.Fprintln(w, "\nRECENT FAILURES (erasure-worker requeue --ref REF to retry one)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREQUEST_REF\tOUTCOME\tCODE\tATTEMPTS\tCOMPLETED\tERROR")
	for _, f := range s.RecentFailures {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", f.ID, f.RequestRef, f.Outcome, f.ErrorCode, f.Attempts,
			f.CompletedAt.UTC().Format(time.RFC3339), oneLine(f.Error, 100))
	}
	tw.Flush()
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
