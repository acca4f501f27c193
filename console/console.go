// Package console is the read-only web console for DPOs and on-call: server-rendered pages of
// the queue's state, one request's whole story, a person's requests and the auditor's export.
// It reads through queue and changes nothing. Authentication (exporter-toolkit's web config)
// is the command's: the console only names the user that passed it in its logs.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// Door is one registered connector's door: the requests whose request_ref starts with Prefix
// came in by it.
type Door struct {
	Name      string // the door's name in the evidence ("ketch")
	Connector string // the connector's name, as its reports name it
	Prefix    string // its request_ref prefix; "" when it has none
}

// Config is what the console needs, as plain values from the command.
type Config struct {
	Queue *queue.Queue
	// Doors are the registered connectors; a request whose ref has none of their prefixes came
	// by the API or the table.
	Doors []Door
	// Candidates returns what a person's requests may hold as external_user_id: the raw id and
	// its pseudonym under every identifier key.
	Candidates func(externalUserID string) []string
	// Keys is how many identifier keys Candidates hashes with; 0: pseudonymised requests cannot
	// be found by person.
	Keys int
	// EvidenceRetention is how long after it finished a request is deleted.
	EvidenceRetention time.Duration
	Logger            *slog.Logger
	// Counted counts one accountable look-up: kind is "person" or "export". May be nil.
	Counted func(kind string)
	// Metrics serves /metrics; nil: none.
	Metrics http.Handler
	// Authenticated says that every request reaching the console passed basic authentication,
	// so its user name is the person's; otherwise every request's user is "-".
	Authenticated bool
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

//go:embed templates/*.html style.css
var files embed.FS

// Console serves the pages.
type Console struct {
	cfg   Config
	mux   *http.ServeMux
	pages map[string]*template.Template
	csrf  *http.CrossOriginProtection

	charts *charts // the overview's daily figures, computed in the background
}

// Close ends the console's work in the background (the chart's computation), so that its
// database pool can close at once. Call it once the server has stopped.
func (c *Console) Close() { c.charts.close() }

// New returns the console's handler; Close ends what it started.
func New(cfg Config) (*Console, error) {
	if cfg.Queue == nil {
		return nil, errors.New("console: no queue")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Candidates == nil {
		cfg.Candidates = func(id string) []string { return []string{id} }
	}
	base, cancel := context.WithCancel(context.Background())
	c := &Console{cfg: cfg, mux: http.NewServeMux(), pages: map[string]*template.Template{}, csrf: http.NewCrossOriginProtection(),
		charts: &charts{queue: cfg.Queue, now: cfg.Now, logger: cfg.Logger, base: base, cancel: cancel}}
	for _, p := range []string{"overview", "requests", "request", "people", "evidence", "notfound", "error", "denied"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", p, err)
		}
		c.pages[p] = t
	}
	c.mux.HandleFunc("GET /{$}", c.overview)
	c.mux.HandleFunc("GET /requests", c.requests)
	c.mux.HandleFunc("GET /requests/{ref...}", c.request)
	c.mux.HandleFunc("GET /people", c.peopleForm)
	c.mux.HandleFunc("POST /people", c.people)
	c.mux.HandleFunc("GET /evidence", c.evidenceForm)
	c.mux.HandleFunc("GET /evidence.csv", c.evidenceCSV)
	c.mux.HandleFunc("GET /style.css", serveStyle)
	if cfg.Metrics != nil {
		c.mux.Handle("GET /metrics", cfg.Metrics)
	}
	// The chart's first figures, so that the first overview has them.
	c.charts.mu.Lock()
	c.charts.refresh()
	c.charts.mu.Unlock()
	c.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, http.StatusNotFound, "notfound", page{Title: "Not found"})
	})
	return c, nil
}

// ServeHTTP sets the security headers on every answer, refuses every method that could change
// something (only /people takes a POST, which reads), and logs each request with its user.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	began := c.cfg.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	switch {
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		c.mux.ServeHTTP(rec, r)
	case r.Method == http.MethodPost && r.URL.Path == "/people":
		c.mux.ServeHTTP(rec, r)
	default:
		allow := "GET, HEAD"
		if r.URL.Path == "/people" {
			allow += ", POST"
		}
		h.Set("Allow", allow)
		http.Error(rec, "405 method not allowed: the console changes nothing", http.StatusMethodNotAllowed)
	}
	// The path names at most a request_ref; the query string is never logged.
	c.cfg.Logger.Info("console request", "user", c.user(r), "method", r.Method, "path", r.URL.Path,
		"status", rec.status, "duration_ms", c.cfg.Now().Sub(began).Milliseconds())
}

type statusRecorder struct {
	http.ResponseWriter
	status  int
	written bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.written {
		s.status, s.written = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.written = true
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// user is the name the accountable logs give the person behind r.
func (c *Console) user(r *http.Request) string {
	if !c.cfg.Authenticated {
		return "-"
	}
	if u, _, ok := r.BasicAuth(); ok && u != "" {
		return u
	}
	return "-"
}

func (c *Console) count(kind string) {
	if c.cfg.Counted != nil {
		c.cfg.Counted(kind)
	}
}

// page is what every template gets: the title, the nav's current item, and the page's data.
type page struct {
	Title   string
	Current string
	Data    any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	var b strings.Builder
	if err := c.pages[name].Execute(&b, p); err != nil {
		c.cfg.Logger.Error("console: render", "page", name, "err", err)
		http.Error(w, "500 internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(b.String()))
	}
}

// fail answers a page whose reads failed: the error goes to the log, not to the page.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	c.cfg.Logger.Error("console: "+what, "user", c.user(r), "path", r.URL.Path, "err", err)
	c.render(w, r, http.StatusInternalServerError, "error", page{Title: "Error", Data: what})
}

func serveStyle(w http.ResponseWriter, r *http.Request) {
	b, err := fs.ReadFile(files, "style.css")
	if err != nil {
		http.Error(w, "no stylesheet", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "max-age=3600")
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

const stampLayout = "2006-01-02 15:04:05 UTC"

var funcs = template.FuncMap{
	"stamp": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(stampLayout)
	},
	"day": func(t time.Time) string { return t.UTC().Format("2006-01-02") },
	// refURL is the path of a request's page: the ref, whatever its characters, as one segment.
	"refURL": func(ref string) string { return "/requests/" + url.PathEscape(ref) },
	"ms":     func(d time.Duration) int64 { return d.Milliseconds() },
	"orDash": func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	},
	"age": func(d time.Duration) string { return d.Round(time.Second).String() },
	"perSecond": func(rc queue.RecentCalls) float64 {
		if rc.Window <= 0 {
			return 0
		}
		return float64(rc.Calls) / rc.Window.Seconds()
	},
	"percent": func(part, whole float64) float64 { return 100 * part / whole },
	// period is a retention as its setting is written: whole days as "730d".
	"period": func(d time.Duration) string {
		if d > 0 && d%(24*time.Hour) == 0 {
			return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
		}
		return d.String()
	},
}
