package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

// evidenceQuery is what one run of `evidence` was asked for: exactly one of a request_ref, a
// person's external_user_id, or a period.
type evidenceQuery struct {
	ref, userID  string
	byUser       bool
	since, until time.Time // a period when since is set
	asJSON       bool
}

// runEvidence is `erasure-worker evidence`: the record of one request (--ref), of a person's
// requests (--external-user-id), or of a period's requests for an auditor (--since/--until).
// No external_user_id, raw or pseudonymised, is ever printed: the person asking knows it.
func runEvidence(ctx context.Context, env *environment, args []string) int {
	s := newSettingSet("evidence", env)
	dbURL := s.RequireDatabaseURL()
	keyFile := s.Add("IDENTIFIER_KEY_FILE", "",
		"the keys that pseudonymise finished requests' ids, one a line, newest first: with it --external-user-id also finds requests whose id was pseudonymised")
	var ref, userID, since, until string
	var asJSON bool
	s.Flags().StringVar(&ref, "ref", "", "")
	s.Flags().StringVar(&userID, "external-user-id", "", "")
	s.Flags().StringVar(&since, "since", "", "")
	s.Flags().StringVar(&until, "until", "", "")
	s.Flags().BoolVar(&asJSON, "json", false, "")
	s.FlagExtra("ref REQUEST_REF", "print the record of the request with this request_ref")
	s.FlagExtra("external-user-id ID", "print the record of every request for this person (- reads the id from standard input, out of sight of ps); the id is never printed")
	s.FlagExtra("since DATE", "print, as JSON Lines for an auditor, every request received from DATE (2026-01-31, midnight UTC, or an RFC 3339 time)")
	s.FlagExtra("until DATE", "with --since: up to DATE, exclusive (default: now)")
	s.FlagExtra("json", "with --ref: the document of GET /v1/erasure-requests/{ref}; with --external-user-id: an array of them")
	if code, ok := parseOnly(s, env, args); !ok {
		return code
	}
	given := map[string]bool{}
	s.Flags().Visit(func(f *flag.Flag) { given[f.Name] = true })
	eq, err := parseEvidenceQuery(given, ref, userID, since, until, asJSON, time.Now())
	if err != nil {
		env.errorf("evidence: %v", err)
		return exitUsage
	}
	var keys worker.IdentifierKeys
	if eq.byUser {
		if eq.userID == "-" {
			if eq.userID, err = readUserID(env.stdin); err != nil {
				env.errorf("evidence: --external-user-id -: %v", err)
				return exitUsage
			}
		}
		if path := s.String(keyFile); path != "" {
			if keys, err = worker.ReadIdentifierKeys(path); err != nil {
				s.Fail(keyFile, "%v", err)
			}
		}
	}
	q, closeDB, code := connectQueue(ctx, env, s, dbURL)
	if q == nil {
		return code
	}
	defer closeDB()
	switch {
	case eq.byUser:
		return evidenceByUser(ctx, env, q, eq, keys)
	case !eq.since.IsZero():
		return exportEvidence(ctx, env, q, eq.since, eq.until)
	default:
		return evidenceByRef(ctx, env, q, eq)
	}
}

// parseEvidenceQuery checks that exactly one thing was asked for, and reads the period.
func parseEvidenceQuery(given map[string]bool, ref, userID, since, until string, asJSON bool, now time.Time) (evidenceQuery, error) {
	eq := evidenceQuery{ref: ref, userID: userID, byUser: given["external-user-id"], asJSON: asJSON}
	var asked []string
	for _, name := range []string{"ref", "external-user-id"} {
		if given[name] {
			asked = append(asked, "--"+name)
		}
	}
	period := given["since"] || given["until"]
	if period {
		asked = append(asked, "--since/--until")
	}
	switch {
	case len(asked) == 0:
		return eq, errors.New("name what to show: --ref REQUEST_REF, --external-user-id ID, or --since DATE [--until DATE]")
	case len(asked) > 1:
		return eq, fmt.Errorf("%s cannot be combined: use exactly one of --ref, --external-user-id, --since/--until", strings.Join(asked, " and "))
	case given["ref"] && strings.TrimSpace(ref) == "":
		return eq, errors.New("--ref is empty")
	case eq.byUser && userID == "":
		return eq, errors.New("--external-user-id is empty")
	case !period:
		return eq, nil
	case asJSON:
		return eq, errors.New("--json applies to --ref and --external-user-id; --since/--until always prints JSON Lines")
	case !given["since"]:
		return eq, errors.New("--until needs --since, the start of the period")
	}
	var err error
	if eq.since, err = parseEvidenceTime("since", since); err != nil {
		return eq, err
	}
	eq.until = now
	if given["until"] {
		if eq.until, err = parseEvidenceTime("until", until); err != nil {
			return eq, err
		}
	}
	if !eq.until.After(eq.since) {
		return eq, fmt.Errorf("--until %s is not after --since %s", eq.until.UTC().Format(time.RFC3339), eq.since.UTC().Format(time.RFC3339))
	}
	return eq, nil
}

// parseEvidenceTime reads a date (midnight UTC) or an RFC 3339 time.
func parseEvidenceTime(name, v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	if t, ok := settings.ParseTimeOrDate(v); ok {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--%s %q is not a date (2026-01-31, midnight UTC) or an RFC 3339 time (2026-01-31T09:30:00Z)", name, v)
}

// readUserID reads the id from the first line of r, without its line ending.
func readUserID(r io.Reader) (string, error) {
	line, err := bufio.NewReaderSize(r, 4096).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	id := strings.TrimRight(line, "\r\n")
	if id == "" {
		return "", errors.New("standard input holds no id on its first line")
	}
	return id, nil
}

func evidenceByRef(ctx context.Context, env *environment, q *queue.Queue, eq evidenceQuery) int {
	rec, err := q.Lookup(ctx, eq.ref)
	if errors.Is(err, queue.ErrNotFound) {
		return evidenceOfDenial(ctx, env, q, eq)
	}
	if err != nil {
		env.errorf("evidence: %v", err)
		return exitFailure
	}
	if eq.asJSON {
		return printJSON(env, worker.RecordOf(rec))
	}
	printRecord(env.stdout, rec)
	return exitOK
}

// evidenceOfDenial prints the record of a request that a door denied without carrying it out,
// when no request has the ref.
func evidenceOfDenial(ctx context.Context, env *environment, q *queue.Queue, eq evidenceQuery) int {
	d, err := q.LookupDenial(ctx, eq.ref)
	if errors.Is(err, queue.ErrNotFound) {
		env.errorf("evidence: no request has request_ref %q", eq.ref)
		return exitFailure
	}
	if err != nil {
		env.errorf("evidence: %v", err)
		return exitFailure
	}
	if eq.asJSON {
		return printJSON(env, struct {
			RequestRef string    `json:"request_ref"`
			Status     string    `json:"status"`
			Door       string    `json:"door"`
			Reason     string    `json:"reason"`
			Field      string    `json:"field,omitempty"`
			FirstAt    time.Time `json:"first_denied_at"`
			LastAt     time.Time `json:"last_denied_at"`
			Times      int       `json:"times"`
		}{d.RequestRef, "denied", d.Door, d.Reason, d.Field, d.FirstAt.UTC(), d.LastAt.UTC(), d.Times})
	}
	field := ""
	if d.Field != "" {
		field = " (" + d.Field + ")"
	}
	fmt.Fprintf(env.stdout, "request_ref  %s\nstatus       denied at the %s door, not carried out: %s%s\ndenied       %s, %d time(s), last %s\n",
		d.RequestRef, d.Door, d.Reason, field, stamp(d.FirstAt), d.Times, stamp(d.LastAt))
	return exitOK
}

// unkeyedNote says why a person's pseudonymised requests may be missing.
const unkeyedNote = "matched by the raw external_user_id only: a request whose id was pseudonymised " +
	"(IDENTIFIER_RETENTION after it finished) cannot be matched without IDENTIFIER_KEY_FILE"

func evidenceByUser(ctx context.Context, env *environment, q *queue.Queue, eq evidenceQuery, keys worker.IdentifierKeys) int {
	candidates := []string{eq.userID}
	how := unkeyedNote
	if keys.Len() > 0 {
		candidates = append(candidates, keys.Pseudonyms(eq.userID)...)
		how = fmt.Sprintf("matched by the raw external_user_id and by its pseudonym under each of the %d key(s) of IDENTIFIER_KEY_FILE", keys.Len())
	}
	recs, err := q.LookupByExternalUserID(ctx, candidates)
	if err != nil {
		env.errorf("evidence: %v", err)
		return exitFailure
	}
	if len(recs) == 0 {
		env.errorf("evidence: no request for this external_user_id (%s)", how)
		return exitFailure
	}
	if eq.asJSON {
		docs := make([]connector.Record, len(recs))
		for i, rec := range recs {
			docs[i] = worker.RecordOf(rec)
		}
		if keys.Len() == 0 {
			env.errorf("evidence: %s", how)
		}
		return printJSON(env, docs)
	}
	fmt.Fprintf(env.stdout, "%d request(s) for this external_user_id, oldest first; %s.\n", len(recs), how)
	for i, rec := range recs {
		fmt.Fprintf(env.stdout, "\nREQUEST %d OF %d\n", i+1, len(recs))
		printRecord(env.stdout, rec)
	}
	return exitOK
}

func printJSON(env *environment, v any) int {
	enc := json.NewEncoder(env.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		env.errorf("evidence: %v", err)
		return exitFailure
	}
	return exitOK
}

// auditRecord is one line of the export: the CCPA §7101 record of a request (when it was
// received, what was asked, when and how it was answered, why it failed), which is the API's
// document with what was asked and the door it came by. It holds no external_user_id.
type auditRecord struct {
	RequestType string `json:"request_type"` // always erasure
	System      string `json:"system"`       // where the erasure is carried out: always knot
	Door        string `json:"door,omitempty"`
	connector.Record
}

func exportEvidence(ctx context.Context, env *environment, q *queue.Queue, since, until time.Time) int {
	out := bufio.NewWriter(env.stdout)
	enc := json.NewEncoder(out)
	n := 0
	err := q.ExportRecords(ctx, since, until, func(rec queue.Record) error {
		n++
		return enc.Encode(auditRecord{RequestType: "erasure", System: "knot", Door: doorOf(rec), Record: worker.RecordOf(rec)})
	})
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	period := since.UTC().Format(time.RFC3339) + " until " + until.UTC().Format(time.RFC3339) + " (exclusive)"
	if err != nil {
		env.errorf("evidence: the export of requests received from %s stopped after %d record(s): %v", period, n, err)
		return exitFailure
	}
	fmt.Fprintf(env.stderr, "erasure-worker: evidence: %d request(s) received from %s\n", n, period)
	return exitOK
}

// doorOf is the door a request came in by, where its reports or its ref tell: a connector's
// report, or the prefix of a connector's ref; "" for the table, enqueue, or a door that reports
// nothing back, which leave no mark.
func doorOf(rec queue.Record) string {
	for _, p := range rec.Reports {
		if c, ok := connectors.Lookup(p.Connector); ok {
			return c.DoorName()
		}
	}
	if c, ok := connectors.ByRef(rec.RequestRef); ok {
		return c.DoorName()
	}
	return ""
}

const stampLayout = "2006-01-02T15:04:05.000Z07:00"

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(stampLayout)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printRecord prints one request's record for a person: the request, every call to Knot and
// every report to the privacy request system.
func printRecord(w io.Writer, rec queue.Record) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	door := doorOf(rec)
	if door == "" {
		door = "not recorded (the table, enqueue, or a door that reports nothing back)"
	}
	outcome := orDash(rec.Outcome)
	if m := queue.OutcomeMeaning(rec.Outcome); m != "" {
		outcome += " (" + m + ")"
	}
	completed := stamp(rec.CompletedAt)
	if rec.CompletedAt.IsZero() {
		completed = "not yet"
	}
	for _, kv := range [][2]string{
		{"request_ref", rec.RequestRef},
		{"asked", "erasure at Knot (POST /user/delete)"},
		{"door", door},
		{"received", stamp(rec.ReceivedAt)},
		{"due", stamp(rec.DueAt)},
		{"status", rec.Status},
		{"outcome", outcome},
		{"completed", completed},
		{"attempts", fmt.Sprint(rec.Attempts)},
		{"last error code", orDash(rec.LastErrorCode)},
		{"last error", orDash(oneLine(rec.LastError, 200))},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", kv[0], kv[1])
	}
	tw.Flush()

	var calls []string
	for _, c := range rec.Calls {
		status := "-"
		if c.HTTPStatus != 0 {
			status = fmt.Sprint(c.HTTPStatus)
		}
		calls = append(calls, fmt.Sprintf("%d\t%s\t%s\t%s\t%s\t%s\t%s", c.Attempt, stamp(c.StartedAt), c.Worker, status,
			orDash(c.ErrorCode), c.Result, c.Duration))
	}
	printTable(w, "CALLS TO KNOT", "ATTEMPT\tTIME\tWORKER\tHTTP\tERROR CODE\tRESULT\tDURATION", calls)
	var reports []string
	for _, p := range rec.Reports {
		reports = append(reports, fmt.Sprintf("%s\t%s\t%d\t%s\t%s", p.Connector, p.Status, p.Attempts, stamp(p.DeliveredAt), orDash(p.LastResult)))
	}
	printTable(w, "REPORTS TO THE PRIVACY REQUEST SYSTEM", "CONNECTOR\tSTATUS\tATTEMPTS\tDELIVERED\tLAST RESULT", reports)
}

// printTable prints a titled table of tab-separated rows, or the title alone when it has none.
func printTable(w io.Writer, title, header string, rows []string) {
	fmt.Fprintf(w, "\n%s (%d)\n", title, len(rows))
	if len(rows) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	tw.Flush()
}
