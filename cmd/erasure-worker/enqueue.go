package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/queue"
)

const (
	// maxLineBytes bounds one input line; a longer line is rejected alone and skipped.
	maxLineBytes = 64 << 10
	// enqueueBatch is how many lines go to the database in one statement.
	enqueueBatch = 1000
	// maxRequestRefBytes matches the table's constraint.
	maxRequestRefBytes = 255
)

func runEnqueue(ctx context.Context, env *environment, args []string) int {
	s := newSettingSet("enqueue", env)
	s.SetOperand(" [FILE]")
	dbURL := s.RequireDatabaseURL()
	var format string
	s.Flags().StringVar(&format, "format", "jsonl", "")
	s.FlagExtra("format jsonl|csv",
		`input format (default jsonl). JSON Lines: {"request_ref":"...","external_user_id":"...","due_at":"2026-12-24T00:00:00Z"}
      (due_at optional: RFC 3339 or YYYY-MM-DD; default received + 30 days). CSV: request_ref,external_user_id[,due_at],
      with or without that header line. Reads FILE, or standard input when FILE is - or absent.`)
	rest, err := s.Parse(args)
	if errors.Is(err, errHelp) {
		return exitOK
	}
	if err != nil {
		env.errorf("%v", err)
		return exitUsage
	}
	if format != "jsonl" && format != "csv" {
		env.errorf("enqueue: --format %q is not jsonl or csv", format)
		return exitUsage
	}
	if len(rest) > 1 {
		env.errorf("enqueue: takes at most one FILE, got %d arguments", len(rest))
		return exitUsage
	}
	in, name := env.stdin, "standard input"
	if len(rest) == 1 && rest[0] != "-" {
		f, err := os.Open(rest[0])
		if err != nil {
			env.errorf("enqueue: %v", err)
			return exitUsage
		}
		defer f.Close()
		in, name = f, rest[0]
	}

	q, closeDB, code := connectQueue(ctx, env, s, dbURL)
	if q == nil {
		return code
	}
	defer closeDB()

	var counts struct{ inserted, duplicate, rejected int }
	reject := func(line int, err error) {
		counts.rejected++
		fmt.Fprintf(env.stderr, "enqueue: line %d: %v\n", line, err)
	}
	var batch []queue.NewRequest
	var lines []int
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		results, err := q.Enqueue(ctx, batch)
		if err != nil {
			return err
		}
		for i, r := range results {
			switch r.Admission {
			case queue.Inserted:
				counts.inserted++
			case queue.Duplicate:
				counts.duplicate++
			default:
				reject(lines[i], r.Err)
			}
		}
		batch, lines = batch[:0], lines[:0]
		return nil
	}

	p := lineParser{format: format, now: time.Now()}
	err = eachLine(skipBOM(in), func(n int, line []byte, tooLong bool) error {
		if tooLong {
			reject(n, fmt.Errorf("line is longer than %d bytes", maxLineBytes))
			return nil
		}
		req, skip, err := p.parse(line)
		switch {
		case err != nil:
			reject(n, err)
		case skip:
		default:
			if !req.DueAt.IsZero() && req.DueAt.Before(p.now) {
				fmt.Fprintf(env.stderr, "enqueue: line %d: warning: due_at %s is in the past; the request is accepted and counts as overdue\n",
					n, req.DueAt.Format(time.RFC3339))
			}
			batch, lines = append(batch, req), append(lines, n)
			if len(batch) >= enqueueBatch {
				return flush()
			}
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	// What was written stays written: report it even when the rest could not be.
	fmt.Fprintf(env.stdout, "inserted %d, duplicate %d, rejected %d\n", counts.inserted, counts.duplicate, counts.rejected)
	if err != nil {
		env.errorf("enqueue: reading %s stopped: %v; lines after the last reported batch were not enqueued (enqueue is idempotent: run it again)", name, err)
		return exitFailure
	}
	if counts.rejected > 0 {
		return exitFailure
	}
	return exitOK
}

// skipBOM drops a UTF-8 byte order mark at the start of r: Excel's "CSV UTF-8" begins with
// one, and it is not part of the first line (left in, a CSV header line would not be recognised
// and would be enqueued as a request to erase the user "external_user_id").
func skipBOM(r io.Reader) io.Reader {
	br := bufio.NewReader(r)
	if b, err := br.Peek(3); err == nil && bytes.Equal(b, []byte("\xef\xbb\xbf")) {
		_, _ = br.Discard(3)
	}
	return br
}

// eachLine calls f for every line of r with its 1-based number, without the line ending. A
// line longer than maxLineBytes is reported with tooLong and skipped, not held in memory.
func eachLine(r io.Reader, f func(n int, line []byte, tooLong bool) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	for n := 1; ; n++ {
		buf = buf[:0]
		tooLong := false
		for {
			chunk, err := br.ReadSlice('\n')
			if !tooLong {
				if len(buf)+len(chunk) > maxLineBytes+2 { // +2: the line ending
					tooLong, buf = true, buf[:0]
				} else {
					buf = append(buf, chunk...)
				}
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if err == io.EOF {
				if len(buf) == 0 && !tooLong {
					return nil
				}
				return f(n, bytes.TrimRight(buf, "\r\n"), tooLong)
			}
			if err != nil {
				return err
			}
			break
		}
		if err := f(n, bytes.TrimRight(buf, "\r\n"), tooLong); err != nil {
			return err
		}
	}
}

// lineParser turns one input line into a request. It checks everything the worker would
// refuse, so that a bad line is reported at intake, by its number, not found failed a day later.
type lineParser struct {
	format  string
	now     time.Time
	started bool // a non-blank line has been seen (the CSV header may only be first)
}

// parse returns the request on line, or skip for blank lines and a CSV header.
func (p *lineParser) parse(line []byte) (req queue.NewRequest, skip bool, err error) {
	if len(bytes.TrimSpace(line)) == 0 {
		return req, true, nil
	}
	first := !p.started
	p.started = true
	// Invalid UTF-8 is refused before decoding: encoding/json would silently replace it and
	// the request would name a different user.
	if !utf8.Valid(line) {
		return req, false, errors.New("not valid UTF-8")
	}
	var ref, user, due string
	if p.format == "csv" {
		fields, err := parseCSVLine(line)
		if err != nil {
			return req, false, err
		}
		if first && len(fields) > 0 && strings.TrimSpace(fields[0]) == "request_ref" {
			return req, true, nil
		}
		if len(fields) < 2 || len(fields) > 3 {
			return req, false, fmt.Errorf("want 2 or 3 fields (request_ref,external_user_id[,due_at]), got %d", len(fields))
		}
		ref, user = fields[0], fields[1]
		if len(fields) == 3 {
			due = fields[2]
		}
	} else {
		var rec struct {
			RequestRef     *string `json:"request_ref"`
			ExternalUserID *string `json:"external_user_id"`
			DueAt          *string `json:"due_at"`
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return req, false, fmt.Errorf("not a JSON object of request_ref, external_user_id and due_at: %v", jsonReason(err))
		}
		if dec.More() {
			return req, false, errors.New("more than one JSON value on the line")
		}
		if rec.RequestRef == nil {
			return req, false, errors.New("request_ref is missing")
		}
		if rec.ExternalUserID == nil {
			return req, false, errors.New("external_user_id is missing")
		}
		ref, user = *rec.RequestRef, *rec.ExternalUserID
		if rec.DueAt != nil {
			due = *rec.DueAt
			if strings.TrimSpace(due) == "" {
				return req, false, errors.New("due_at is empty: leave it out for the default deadline")
			}
		}
	}

	switch {
	case strings.TrimSpace(ref) == "":
		return req, false, errors.New("request_ref is empty")
	case len(ref) > maxRequestRefBytes:
		return req, false, fmt.Errorf("request_ref is longer than %d bytes", maxRequestRefBytes)
	case strings.ContainsRune(ref, 0):
		return req, false, errors.New("request_ref contains a NUL byte")
	}
	if err := knotclient.ValidateExternalUserID(user); err != nil {
		var kerr *knotclient.Error
		if errors.As(err, &kerr) && kerr.Message != "" {
			return req, false, errors.New(kerr.Message)
		}
		return req, false, err
	}
	req = queue.NewRequest{RequestRef: ref, ExternalUserID: user}
	if strings.TrimSpace(due) != "" {
		if req.DueAt, err = parseDue(due); err != nil {
			return queue.NewRequest{}, false, err
		}
	}
	return req, false, nil
}

func parseCSVLine(line []byte) ([]string, error) {
	r := csv.NewReader(bytes.NewReader(line))
	r.FieldsPerRecord = -1
	fields, err := r.Read()
	if err != nil {
		var perr *csv.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("malformed CSV: %v", perr.Err)
		}
		return nil, fmt.Errorf("malformed CSV: %v", err)
	}
	return fields, nil
}

func parseDue(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, ok := parseTimeOrDate(s); ok {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("due_at %q is not a time: write it as RFC 3339 (2026-12-24T00:00:00Z) or a date (2026-12-24)", truncateForMessage(s))
}

// parseTimeOrDate reads an RFC 3339 time or a date, which is midnight UTC.
func parseTimeOrDate(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339, time.DateOnly} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// jsonReason shortens encoding/json's errors to what a person fixing the line needs.
func jsonReason(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return fmt.Sprintf("%s must be a string, not a %s", typeErr.Field, typeErr.Value)
	}
	return err.Error()
}

func truncateForMessage(s string) string {
	if len(s) <= 40 {
		return s
	}
	for i := 40; i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i] + "..."
		}
	}
	return "..."
}
