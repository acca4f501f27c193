package connector

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/settings"
)

// MaxLineBytes bounds one line of a file of requests; a longer line is refused alone and
// skipped.
const MaxLineBytes = 64 << 10

// EachLine calls f for every line of a file of requests with its 1-based number, without the
// line ending and without a UTF-8 byte order mark at the start. A line longer than MaxLineBytes
// is reported with tooLong and skipped, not held in memory.
func EachLine(r io.Reader, f func(n int, line []byte, tooLong bool) error) error {
	return eachLine(skipBOM(r), f)
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
// line longer than MaxLineBytes is reported with tooLong and skipped, not held in memory.
func eachLine(r io.Reader, f func(n int, line []byte, tooLong bool) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	for n := 1; ; n++ {
		buf = buf[:0]
		tooLong := false
		for {
			chunk, err := br.ReadSlice('\n')
			if !tooLong {
				if len(buf)+len(chunk) > MaxLineBytes+2 { // +2: the line ending
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

// LineParser reads the requests of a file, one a line, for `enqueue`: JSON Lines as strict as
// the HTTP API's body (no unknown or repeated field, no trailing data), or CSV. It checks
// everything the worker would refuse, so that a bad line is reported at intake, by its number,
// not found failed a day later; the ids' lengths are intake's to check.
type LineParser struct {
	CSV     bool
	started bool // a non-blank line has been seen (the CSV header may only be first)
}

// Parse returns the request on line, or skip for blank lines and a CSV header.
func (p *LineParser) Parse(line []byte) (req Submission, skip bool, err error) {
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
	if p.CSV {
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
		if ref, user, due, err = jsonLine(line); err != nil {
			return req, false, err
		}
	}

	switch {
	case strings.TrimSpace(ref) == "":
		return req, false, errors.New("request_ref is empty")
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
	req = Submission{RequestRef: ref, ExternalUserID: user}
	if strings.TrimSpace(due) != "" {
		if req.DueAt, err = parseDue(due); err != nil {
			return Submission{}, false, err
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
	if t, ok := settings.ParseTimeOrDate(s); ok {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("due_at %q is not a time: write it as RFC 3339 (2026-12-24T00:00:00Z) or a date (2026-12-24)", truncateForMessage(s))
}

const notALine = "not a JSON object of request_ref, external_user_id and due_at: "

// jsonLine reads a JSON line's fields with the HTTP API's walk of the object, so that a
// repeated field is refused, not silently the last one kept.
func jsonLine(line []byte) (ref, user, due string, err error) {
	raw, err := splitObject(line)
	if err != nil {
		var fe *FieldError
		switch {
		case errors.As(err, &fe) && fe.Reason == "unknown field":
			return "", "", "", fmt.Errorf(notALine+"json: unknown field %q", fe.Field)
		case errors.As(err, &fe) && fe.Field != "":
			return "", "", "", errors.New(notALine + fe.Error())
		}
		return "", "", "", errors.New(notALine + strings.TrimPrefix(err.Error(), "body "))
	}
	str := func(name string) (*string, error) {
		v, ok := raw[name]
		if !ok || string(v) == "null" {
			return nil, nil
		}
		var s string
		if v[0] != '"' || json.Unmarshal(v, &s) != nil {
			return nil, fmt.Errorf(notALine+"%s must be a string, not a%s", name, jsonKind(v))
		}
		// encoding/json makes U+FFFD of a lone surrogate escape: the id would name someone else.
		if loneSurrogate(v) {
			return nil, fmt.Errorf("%s holds a lone UTF-16 surrogate escape", name)
		}
		return &s, nil
	}
	var r, u, d *string
	if r, err = str(fieldRequestRef); err == nil {
		if u, err = str(fieldExternalUserID); err == nil {
			d, err = str(fieldDueAt)
		}
	}
	switch {
	case err != nil:
		return "", "", "", err
	case r == nil:
		return "", "", "", errors.New("request_ref is missing")
	case u == nil:
		return "", "", "", errors.New("external_user_id is missing")
	case d != nil && strings.TrimSpace(*d) == "":
		return "", "", "", errors.New("due_at is empty: leave it out for the default deadline")
	case d != nil:
		due = *d
	}
	return *r, *u, due, nil
}

// jsonKind names the kind of a JSON value that is not a string, with its article.
func jsonKind(v json.RawMessage) string {
	switch v[0] {
	case '{':
		return "n object"
	case '[':
		return "n array"
	case 't', 'f':
		return " bool"
	}
	return " number"
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
