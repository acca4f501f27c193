package console

import (
	"encoding/csv"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// chartDays is how many days the overview's chart covers.
const chartDays = 60

type doorIntake struct {
	Door   string
	Prefix string
	Count  int64
}

type reportLine struct {
	queue.ReportBacklog
	OldestAge time.Duration // zero when none is undelivered
}

type overviewData struct {
	Stats    queue.Stats
	Rate     queue.RateLimit
	Held     bool
	Calls    queue.RecentCalls
	Replicas int
	// Paused are the live replicas paused on Knot's rejection of their credentials;
	// PauseUnknown counts the live replicas of a release that does not tell.
	Paused       []string
	PauseUnknown int
	Intake       []doorIntake
	Reports      []reportLine
	Chart        chart
	ChartDays    int
	// ChartReady is false until the chart's figures were first computed; ChartAt is when they
	// were read.
	ChartReady bool
	ChartAt    time.Time
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var d overviewData
	prefixes := c.prefixes()
	// The figures come from statements that each read their own index: read at once, the page
	// waits for the slowest of them rather than for their sum.
	var (
		intake             []queue.IntakeCount
		reports            []queue.ReportBacklog
		wg                 sync.WaitGroup
		statsErr, rateErr  error
		intakeErr, repsErr error
	)
	wg.Go(func() { d.Stats, statsErr = c.cfg.Queue.Stats(ctx) })
	wg.Go(func() {
		if d.Rate, rateErr = c.cfg.Queue.ReadRateLimit(ctx); rateErr != nil {
			return
		}
		d.Calls, rateErr = c.cfg.Queue.ReadRecentCalls(ctx, recentCallsWindow, recentCallsRows(d.Rate.CeilingRPS))
	})
	wg.Go(func() { intake, intakeErr = c.cfg.Queue.IntakeSince(ctx, c.cfg.Now().Add(-24*time.Hour), prefixes) })
	wg.Go(func() { reports, repsErr = c.cfg.Queue.ReportBacklogs(ctx) })
	wg.Wait()
	for _, f := range []struct {
		what string
		err  error
	}{{"reading the queue's figures", statsErr}, {"reading the rate limit", rateErr},
		{"counting the last day's intake", intakeErr}, {"reading the reports not delivered", repsErr}} {
		if f.err != nil {
			c.fail(w, r, f.what, f.err)
			return
		}
	}
	for _, rep := range d.Rate.Replicas {
		if !rep.Alive {
			continue
		}
		d.Replicas++
		switch {
		case !rep.PausedKnown:
			d.PauseUnknown++
		case rep.Paused:
			d.Paused = append(d.Paused, rep.ID)
		}
	}
	d.Held = d.Rate.HoldUntil.After(d.Rate.Now)
	for _, in := range intake {
		name := "API or table (no connector prefix)"
		for _, door := range c.cfg.Doors {
			if in.Prefix != "" && door.Prefix == in.Prefix {
				name = door.Name
			}
		}
		d.Intake = append(d.Intake, doorIntake{Door: name, Prefix: in.Prefix, Count: in.Count})
	}
	for _, rb := range reports {
		l := reportLine{ReportBacklog: rb}
		if !rb.OldestPending.IsZero() {
			l.OldestAge = d.Stats.Now.Sub(rb.OldestPending)
		}
		d.Reports = append(d.Reports, l)
	}
	days, at := c.charts.get()
	d.ChartDays = chartDays
	if days != nil {
		d.Chart, d.ChartReady, d.ChartAt = newChart(days), true, at
	}
	c.render(w, r, http.StatusOK, "overview", page{Title: "Overview", Current: "overview", Data: d})
}

// recentCallsWindow is how far back the overview counts the calls to Knot, for the rate used.
const recentCallsWindow = time.Minute

// recentCallsRows is how many of the newest calls the overview reads to count the last window's:
// half as many again as the limit allows in the window, so that the count is whole, but never
// more than maxRecentCallsRows, so that the page stays fast however high the limit.
func recentCallsRows(ceilingRPS float64) int {
	return min(int(ceilingRPS*recentCallsWindow.Seconds()*1.5)+1000, maxRecentCallsRows)
}

const maxRecentCallsRows = 120_000

// pageSize is how many requests one page of /requests lists.
const pageSize = 50

type option struct {
	Value, Label string
	Selected     bool
}

type requestsData struct {
	Statuses, Outcomes, Sources, Dues []option
	Rows                              []queue.RequestRow
	Next                              string // the next page's query; "" on the last page
	// SearchedTo is where the page's window of ids ended when it found less than a page: the
	// requests below it are on the next pages.
	SearchedTo int64
	Filtered   bool
	First      bool
	Bad        string // the parameters whose values were refused
}

func options(selected string, pairs ...string) []option {
	var out []option
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, option{Value: pairs[i], Label: pairs[i+1], Selected: pairs[i] == selected})
	}
	return out
}

// prefixes are the request_ref prefixes of the connectors' doors.
func (c *Console) prefixes() []string {
	var out []string
	for _, door := range c.cfg.Doors {
		if door.Prefix != "" {
			out = append(out, door.Prefix)
		}
	}
	return out
}

// apiSource is the source filter's value for the requests with no connector's prefix.
const apiSource = "-api"

func (c *Console) requests(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := queue.RequestFilter{Status: q.Get("status"), Outcome: q.Get("outcome"), Due: q.Get("due"), Limit: pageSize + 1}
	source := q.Get("source")
	var bad []string
	switch source {
	case "":
	case apiSource:
		f.NoPrefix = c.prefixes() // none: every ref is the API's or the table's
	default:
		for _, door := range c.cfg.Doors {
			if door.Prefix != "" && door.Name == source {
				f.Prefix = door.Prefix
			}
		}
		if f.Prefix == "" {
			bad = append(bad, "source")
		}
	}
	if after := q.Get("after"); after != "" {
		n, err := strconv.ParseInt(after, 10, 64)
		if err != nil || n <= 0 {
			bad = append(bad, "after")
		}
		f.Before = n
	}
	if len(bad) == 0 {
		got, err := c.cfg.Queue.ListRequests(r.Context(), f)
		switch {
		case errors.Is(err, queue.ErrBadFilter):
			bad = append(bad, "status, outcome or due")
		case err != nil:
			c.fail(w, r, "listing the requests", err)
			return
		default:
			c.render(w, r, http.StatusOK, "requests", page{Title: "Requests", Current: "requests", Data: c.requestsPage(f, source, q, got)})
			return
		}
	}
	d := c.requestsForm(queue.RequestFilter{}, "")
	d.Bad = strings.Join(bad, ", ")
	c.render(w, r, http.StatusBadRequest, "requests", page{Title: "Requests: bad filter", Current: "requests", Data: d})
}

// requestsPage is the data of a page of requests: the form as asked, the rows and the link to
// the next page, which reads the query asked with the next cursor.
func (c *Console) requestsPage(f queue.RequestFilter, source string, q url.Values, got queue.RequestPage) requestsData {
	d := c.requestsForm(f, source)
	d.First = f.Before == 0
	rows, next := got.Rows, int64(0)
	switch {
	case len(rows) > pageSize:
		rows = rows[:pageSize]
		next = rows[len(rows)-1].ID
	case got.SearchedTo > 0:
		// The page's window of ids ended before a whole page matched.
		next, d.SearchedTo = got.SearchedTo, got.SearchedTo
	}
	if next > 0 {
		q.Set("after", strconv.FormatInt(next, 10))
		d.Next = "/requests?" + q.Encode()
	}
	d.Rows = rows
	return d
}

func (c *Console) requestsForm(f queue.RequestFilter, source string) requestsData {
	d := requestsData{
		Statuses: options(f.Status, "", "any", queue.StatusPending, "pending", queue.StatusRunning, "running",
			queue.StatusSucceeded, "succeeded", queue.StatusFailed, "failed"),
		Outcomes: options(f.Outcome, "", "any", queue.OutcomeDeleted, "deleted", queue.OutcomeNotFound, "not found",
			queue.OutcomeRejected, "rejected", queue.OutcomeInvalid, "invalid", queue.OutcomeExhausted, "exhausted"),
		Dues:     options(f.Due, "", "any", queue.DueOverdue, "overdue", queue.DueSoon, "due within 7 days (overdue included)"),
		Sources:  options(source, "", "any", apiSource, "API or table (no connector prefix)"),
		Filtered: f.Status != "" || f.Outcome != "" || f.Due != "" || source != "",
	}
	for _, door := range c.cfg.Doors {
		if door.Prefix != "" {
			d.Sources = append(d.Sources, option{Value: door.Name, Label: door.Name + " (" + door.Prefix + ")", Selected: source == door.Name})
		}
	}
	return d
}

type requestData struct {
	queue.Story
	Door      string
	Meaning   string
	DeleteAt  time.Time // zero while unfinished
	Retention time.Duration
	// ReportAttempts are the delivery attempts of each report, by connector#target.
	ReportAttempts map[string][]queue.ReportAttempt
	Overdue        bool
	Unfinished     bool
}

func (c *Console) request(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	if ref == "" {
		c.render(w, r, http.StatusNotFound, "notfound", page{Title: "Not found"})
		return
	}
	story, err := c.cfg.Queue.LookupStory(r.Context(), ref)
	if errors.Is(err, queue.ErrNotFound) {
		denial, derr := c.cfg.Queue.LookupDenial(r.Context(), ref)
		switch {
		case errors.Is(derr, queue.ErrNotFound):
			c.render(w, r, http.StatusNotFound, "notfound", page{Title: "Not found", Data: ref})
		case derr != nil:
			c.fail(w, r, "looking up the request", derr)
		default:
			c.render(w, r, http.StatusOK, "denied", page{Title: "Request " + ref + " (denied)", Current: "requests",
				Data: struct {
					queue.Denial
					DeleteAt  time.Time
					Retention time.Duration
				}{denial, denial.LastAt.Add(c.cfg.EvidenceRetention), c.cfg.EvidenceRetention}})
		}
		return
	}
	if err != nil {
		c.fail(w, r, "looking up the request", err)
		return
	}
	d := requestData{Story: story, Door: c.doorOf(story.Record), Meaning: queue.OutcomeMeaning(story.Outcome),
		Retention: c.cfg.EvidenceRetention, ReportAttempts: map[string][]queue.ReportAttempt{},
		Unfinished: story.CompletedAt.IsZero()}
	if !story.CompletedAt.IsZero() {
		d.DeleteAt = story.CompletedAt.Add(c.cfg.EvidenceRetention)
	} else {
		d.Overdue = c.cfg.Now().After(story.DueAt)
	}
	for _, a := range story.ReportAttempts {
		k := reportKey(a.Connector, a.Target)
		d.ReportAttempts[k] = append(d.ReportAttempts[k], a)
	}
	c.render(w, r, http.StatusOK, "request", page{Title: "Request " + ref, Current: "requests", Data: d})
}

func reportKey(connector string, target int) string { return connector + "#" + strconv.Itoa(target) }

// doorOf is the door a request came by, as `evidence` tells it: its reports' connector, else
// its ref's prefix; "" for the API, the table or enqueue, which leave no mark.
func (c *Console) doorOf(rec queue.Record) string {
	for _, p := range rec.Reports {
		for _, door := range c.cfg.Doors {
			if door.Connector == p.Connector {
				return door.Name
			}
		}
	}
	for _, door := range c.cfg.Doors {
		if door.Prefix != "" && strings.HasPrefix(rec.RequestRef, door.Prefix) {
			return door.Name
		}
	}
	return ""
}

type peopleData struct {
	Keys    int
	Asked   bool
	Records []queue.Record
	Error   string
}

// peopleForm is the empty form: whatever the query string holds is neither read nor shown,
// since an id in a URL would reach histories and logs.
func (c *Console) peopleForm(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "people", page{Title: "Find a person's requests", Current: "people", Data: peopleData{Keys: c.cfg.Keys}})
}

// maxIDBytes bounds the form's body: an external_user_id is at most 1024 bytes.
const maxIDBytes = 8 << 10

func (c *Console) people(w http.ResponseWriter, r *http.Request) {
	d := peopleData{Keys: c.cfg.Keys}
	if err := c.csrf.Check(r); err != nil {
		c.cfg.Logger.Warn("console: person look-up refused: not from the console's own page", "user", c.user(r))
		d.Error = "This look-up did not come from the console's own form and was refused."
		c.render(w, r, http.StatusForbidden, "people", page{Title: "Find a person's requests", Current: "people", Data: d})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxIDBytes)
	if err := r.ParseForm(); err != nil {
		d.Error = "The form could not be read."
		c.render(w, r, http.StatusBadRequest, "people", page{Title: "Find a person's requests", Current: "people", Data: d})
		return
	}
	id := r.PostForm.Get("external_user_id")
	if strings.TrimSpace(id) == "" {
		d.Error = "Enter an external_user_id."
		c.render(w, r, http.StatusBadRequest, "people", page{Title: "Find a person's requests", Current: "people", Data: d})
		return
	}
	recs, err := c.cfg.Queue.LookupByExternalUserID(r.Context(), c.cfg.Candidates(id))
	if err != nil {
		c.fail(w, r, "looking up the person's requests", err)
		return
	}
	c.count("person")
	// The accountable record of the look-up: who, when (the log's time) and how much it found;
	// never the id.
	c.cfg.Logger.Info("console: person look-up", "user", c.user(r), "matched", len(recs), "identifier_keys", c.cfg.Keys)
	d.Asked, d.Records = true, recs
	c.render(w, r, http.StatusOK, "people", page{Title: "Find a person's requests", Current: "people", Data: d})
}

func (c *Console) evidenceForm(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "evidence", page{Title: "Evidence export", Current: "evidence"})
}

// csvHeader is the export's columns: the fields of `evidence --since` (JSON Lines), with each
// request's calls and reports flattened.
var csvHeader = []string{"request_type", "system", "door", "request_ref", "status", "outcome", "attempts",
	"received_at", "due_at", "completed_at", "last_error_code", "last_error",
	"calls", "last_call_at", "last_call_http_status", "last_call_error_code", "last_call_result", "reports"}

// evidenceCSV streams the period's records: from and to are dates, to included.
func (c *Console) evidenceCSV(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from, err := parseDate(q.Get("from"))
	if err != nil {
		c.badParam(w, r, "from", err)
		return
	}
	to, err := parseDate(q.Get("to"))
	if err != nil {
		c.badParam(w, r, "to", err)
		return
	}
	if to.Before(from) {
		c.badParam(w, r, "to", fmt.Errorf("%s is before from (%s)", to.Format(time.DateOnly), from.Format(time.DateOnly)))
		return
	}
	until := to.AddDate(0, 0, 1)
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="erasure-evidence-%s-to-%s.csv"`,
		from.Format(time.DateOnly), to.Format(time.DateOnly)))
	c.count("export")
	if r.Method == http.MethodHead {
		return
	}
	out := csv.NewWriter(w)
	_ = out.Write(csvHeader)
	rows := 0
	err = c.cfg.Queue.ExportRecords(r.Context(), from, until, func(rec queue.Record) error {
		rows++
		if err := out.Write(c.csvRow(rec)); err != nil {
			return err
		}
		if rows%500 == 0 {
			out.Flush()
		}
		return out.Error()
	})
	out.Flush()
	period := []any{"user", c.user(r), "from", from.Format(time.DateOnly), "to", to.Format(time.DateOnly), "rows", rows}
	if err == nil {
		err = out.Error()
	}
	if err != nil {
		c.cfg.Logger.Error("console: evidence export stopped", append(period, "err", err)...)
		// Cut the connection: a file that ends cleanly must be the whole period.
		panic(http.ErrAbortHandler)
	}
	c.cfg.Logger.Info("console: evidence export", period...)
}

func (c *Console) badParam(w http.ResponseWriter, r *http.Request, name string, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, "400 bad request: parameter %s: %v; write dates as YYYY-MM-DD, e.g. /evidence.csv?from=2026-01-01&to=2026-01-31 (to included)\n", name, err)
}

func parseDate(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, errors.New("is missing")
	}
	t, err := time.Parse(time.DateOnly, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a date", v)
	}
	return t, nil
}

func (c *Console) csvRow(rec queue.Record) []string {
	csvTime := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	}
	var lastAt, lastHTTP, lastCode, lastResult string
	if n := len(rec.Calls); n > 0 {
		last := rec.Calls[n-1]
		lastAt, lastCode, lastResult = csvTime(last.StartedAt), last.ErrorCode, last.Result
		if last.HTTPStatus != 0 {
			lastHTTP = strconv.Itoa(last.HTTPStatus)
		}
	}
	var reports []string
	for _, p := range rec.Reports {
		s := p.Connector + " " + p.Status
		if !p.DeliveredAt.IsZero() {
			s += " " + csvTime(p.DeliveredAt)
		}
		reports = append(reports, s)
	}
	row := []string{"erasure", "knot", c.doorOf(rec), rec.RequestRef, rec.Status, rec.Outcome, strconv.Itoa(rec.Attempts),
		csvTime(rec.ReceivedAt), csvTime(rec.DueAt), csvTime(rec.CompletedAt), rec.LastErrorCode, rec.LastError,
		strconv.Itoa(len(rec.Calls)), lastAt, lastHTTP, lastCode, lastResult, strings.Join(reports, "; ")}
	for i, v := range row {
		row[i] = defuse(v)
	}
	return row
}

// defuse keeps a spreadsheet from taking a cell for a formula (a ref or an error that starts
// with =, +, -, @): it is prefixed with a quote, as OWASP advises for CSV exports.
func defuse(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}
