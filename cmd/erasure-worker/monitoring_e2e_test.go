package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The monitoring end to end: a real Prometheus scrapes two running workers that carry out
// requests against knotfake, with deploy/prometheus/alerts.yml loaded. Every query of the Grafana
// dashboard (deploy/grafana) must return data, every alert rule must evaluate without error and
// stay quiet in this healthy run, and `promtool check metrics` must find nothing to lint in the
// workers' /metrics.

const (
	monJob       = "erasure-worker" // the job the rules and the dashboard select
	monNamespace = "e2e"            // a target label, as the Prometheus Operator adds
	// $__rate_interval in Grafana is at least four scrape intervals; scrapes here are 1s apart.
	monRateInterval = "10s"
)

func TestMonitoringEndToEnd(t *testing.T) {
	promBin, promtoolBin := monTools(t)
	t.Parallel()
	const rps = 80
	r := newRig(t, withFake("-error-rate", "0.05", "-latency", "5ms", "-latency-jitter", "20ms"), withRequests(3000))
	workerEnv := []string{fmt.Sprintf("RATE_LIMIT_RPS=%d", rps), "STATS_INTERVAL=1s", "POLL_INTERVAL=200ms",
		"RETRY_MIN_BACKOFF=100ms", "RETRY_MAX_BACKOFF=1s"}
	addr1 := r.startWorker(t, "replica 1", workerEnv...).addr
	addr2 := r.startWorker(t, "replica 2", workerEnv...).addr
	prom := monStartPrometheus(t, promBin, addr1, addr2)

	// Wait for a dozen scrapes of both replicas, so that every rate() has samples to work on.
	monWait(t, prom, 45*time.Second, fmt.Sprintf(`min(count_over_time(up{job=%q}[1m])) >= 12 and min(up{job=%q}) == 1`, monJob, monJob))

	// Grafana's template variables, as the dashboard would set them.
	instances := regexp.QuoteMeta(addr1) + "|" + regexp.QuoteMeta(addr2)
	vars := strings.NewReplacer(
		"$__rate_interval", monRateInterval,
		"${job}", monJob, "$job", monJob,
		"${namespace}", monNamespace, "$namespace", monNamespace,
		"${instance}", monPromString(instances), "$instance", monPromString(instances),
	)

	dash := monReadDashboard(t)
	for _, v := range dash.Templating.List {
		q, ok := v.Query.(map[string]any)
		if v.Type != "query" || !ok {
			continue
		}
		// label_values(selector, label) lists the values of label on the selected series.
		m := regexp.MustCompile(`^label_values\((.+), (\w+)\)$`).FindStringSubmatch(fmt.Sprint(q["query"]))
		if m == nil {
			t.Errorf("variable %s: query %v is not label_values(selector, label)", v.Name, q["query"])
			continue
		}
		res := monQuery(t, prom, fmt.Sprintf("group by (%s) (%s)", m[2], vars.Replace(m[1])))
		if len(res) == 0 || res[0].Metric[m[2]] == "" {
			t.Errorf("variable %s: %s finds no values", v.Name, q["query"])
		}
	}

	values := map[string]float64{} // panel / legend -> first value, for the checks below
	for _, p := range dash.panels() {
		for _, q := range p.Targets {
			expr := vars.Replace(q.Expr)
			res := monQuery(t, prom, expr)
			if len(res) == 0 {
				t.Errorf("panel %q, query %s: no data\n%s", p.Title, q.RefID, expr)
				continue
			}
			numbers := 0
			for _, s := range res {
				if !math.IsNaN(s.value(t)) {
					numbers++
				}
			}
			if numbers == 0 {
				t.Errorf("panel %q, query %s: only NaN\n%s", p.Title, q.RefID, expr)
			}
			values[p.Title+" / "+q.LegendFormat] = res[0].value(t)
		}
	}

	// What a user reads off the dashboard in this run.
	for _, c := range []struct {
		panel    string
		min, max float64
	}{
		{"Live replicas / sharing the limit", 2, 2},
		{"Live replicas / scraped up", 2, 2},
		{"Rate limit in force and achieved / deployment limit", rps, rps},
		{"Rate limit in force and achieved / sum of replicas' shares", rps * 0.99, rps * 1.01},
		{"Rate limit in force and achieved / achieved", 1, rps * 1.5},
		{"Paused replicas / paused", 0, 0},
		{"Overdue requests / overdue", 0, 0},
		{"Pending / pending", 1, 3000},
		{"Retries: Knot 5xx, 429, timeouts, connection errors / 429", 0, 0},
	} {
		got, ok := values[c.panel]
		if !ok {
			t.Errorf("no panel query %q", c.panel)
		} else if got < c.min || got > c.max {
			t.Errorf("%s shows %v, want %v to %v", c.panel, got, c.min, c.max)
		}
	}

	// The alert rules: Prometheus loaded them and evaluates them without error, and none fires
	// (nor would fire after its `for`) while everything is healthy.
	rules := monReadRules(t)
	for _, r := range rules {
		if res := monQuery(t, prom, r.Expr); len(res) != 0 {
			t.Errorf("alert %s would fire in a healthy run: %v\n%s", r.Alert, res, r.Expr)
		}
	}
	// A misspelt metric name would keep an alert quiet for ever, and unit tests fed the same
	// misspelling would not notice: every series the rules and their tests name must exist.
	for _, name := range monRuleMetrics(t, rules) {
		if res := monQuery(t, prom, fmt.Sprintf(`group({__name__=%q, job=%q})`, name, monJob)); len(res) == 0 {
			t.Errorf("the alert rules or their unit tests use %s, which the workers do not export", name)
		}
	}
	time.Sleep(2 * time.Second) // two more rule evaluations (evaluation_interval is 1s)
	var rulesResp struct {
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	monAPI(t, prom+"/api/v1/rules", &rulesResp)
	loaded := 0
	for _, g := range rulesResp.Groups {
		for _, r := range g.Rules {
			loaded++
			if r.Health != "ok" || r.LastError != "" {
				t.Errorf("Prometheus evaluates rule %s: health %q, %s", r.Name, r.Health, r.LastError)
			}
			if r.State != "inactive" {
				t.Errorf("alert %s is %s in a healthy run", r.Name, r.State)
			}
		}
	}
	if loaded != len(rules) {
		t.Errorf("Prometheus loaded %d rules, alerts.yml has %d", loaded, len(rules))
	}

	// The exposition format passes promtool's lint (names, units, _total on counters, help).
	for _, addr := range []string{addr1, addr2} {
		cmd := exec.Command(promtoolBin, "check", "metrics")
		cmd.Stdin = strings.NewReader(httpGet(t, "http://"+addr+"/metrics"))
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("promtool check metrics on %s: %v\n%s", addr, err, out)
		}
	}
}

// monTools finds Prometheus and promtool (both in Debian's prometheus package).
func monTools(t *testing.T) (prometheus, promtool string) {
	t.Helper()
	return requireTool(t, "prometheus", "apt-get install prometheus"), requireTool(t, "promtool", "apt-get install prometheus")
}

// requireTool returns the path of the program name, or ends the test when it is not installed:
// on a developer's machine it skips, but under CI (CI set to anything but a false value) it
// fails, because there a skipped check would pass without checking anything. installHint says
// how to install the program.
func requireTool(t *testing.T, name, installHint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if v := os.Getenv("CI"); v != "" {
		if ci, err := strconv.ParseBool(v); err != nil || ci {
			t.Fatalf("%s is not installed (CI=%s: a missing tool fails the test): %s", name, v, installHint)
		}
	}
	t.Skipf("%s is not installed (skipped; under CI this fails): %s", name, installHint)
	return ""
}

// monStartPrometheus runs Prometheus on loopback, scraping targets every second with the alert
// rules loaded, and returns its base URL once it is ready.
func monStartPrometheus(t *testing.T, bin string, targets ...string) string {
	t.Helper()
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join("..", "..", "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: %s
    static_configs:
      - targets: ["%s"]
        labels:
          namespace: %s
`, rules, monJob, strings.Join(targets, `", "`), monNamespace)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	start(t, "prometheus", []string{"PATH=" + os.Getenv("PATH")}, bin,
		"--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	base := "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus not ready after 20s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// monSample is one element of an instant vector.
type monSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s monSample) value(t *testing.T) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
	if err != nil {
		t.Fatalf("sample %v: %v", s, err)
	}
	return v
}

// monQuery evaluates expr now through the HTTP API; an error from Prometheus fails the test.
func monQuery(t *testing.T, base, expr string) []monSample {
	t.Helper()
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if !monAPI(t, base+"/api/v1/query?query="+url.QueryEscape(expr), &data) {
		t.Errorf("query failed:\n%s", expr)
		return nil
	}
	switch data.ResultType {
	case "vector":
		var v []monSample
		if err := json.Unmarshal(data.Result, &v); err != nil {
			t.Fatal(err)
		}
		return v
	case "scalar":
		var s [2]any
		if err := json.Unmarshal(data.Result, &s); err != nil {
			t.Fatal(err)
		}
		return []monSample{{Value: s}}
	default:
		t.Errorf("query returned a %s, not an instant vector:\n%s", data.ResultType, expr)
		return nil
	}
}

// monAPI GETs a Prometheus API URL and decodes its data; false (with the error logged) when
// Prometheus answers with an error.
func monAPI(t *testing.T, u string, data any) bool {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Warnings  []string        `json:"warnings"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("%s: %v", u, err)
	}
	if body.Status != "success" || len(body.Warnings) > 0 {
		t.Logf("Prometheus: %s %s %s %v", body.Status, body.ErrorType, body.Error, body.Warnings)
		return false
	}
	if err := json.Unmarshal(body.Data, data); err != nil {
		t.Fatal(err)
	}
	return true
}

// monWait polls until expr returns data.
func monWait(t *testing.T, base string, within time.Duration, expr string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for len(monQuery(t, base, expr)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still no data for %s", within, expr)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// monPromString escapes s for a PromQL double-quoted string, as Grafana does with a regex.
func monPromString(s string) string { return strings.ReplaceAll(s, `\`, `\\`) }

type monDashboard struct {
	Panels     []monPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type monPanel struct {
	Title   string     `json:"title"`
	Type    string     `json:"type"`
	Panels  []monPanel `json:"panels"` // inside a collapsed row
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
		RefID        string `json:"refId"`
	} `json:"targets"`
}

// panels lists the panels that query, rows' contents included.
func (d monDashboard) panels() []monPanel {
	var out []monPanel
	var walk func([]monPanel)
	walk = func(ps []monPanel) {
		for _, p := range ps {
			if len(p.Targets) > 0 {
				out = append(out, p)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

func monReadDashboard(t *testing.T) monDashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "erasure-worker.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d monDashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.panels()) < 10 {
		t.Fatalf("the dashboard has only %d panels with queries", len(d.panels()))
	}
	return d
}

// monRuleMetrics lists the metric names in the rules' expressions and in the input series of
// their unit tests (deploy/prometheus/alerts_test.yml).
func monRuleMetrics(t *testing.T, rules []monRule) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var ut struct {
		Tests []struct {
			InputSeries []struct {
				Series string `yaml:"series"`
			} `yaml:"input_series"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &ut); err != nil {
		t.Fatal(err)
	}
	selector := regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\{`)
	seen := map[string]bool{}
	var names []string
	add := func(text string) {
		for _, m := range selector.FindAllStringSubmatch(text, -1) {
			if !seen[m[1]] {
				seen[m[1]] = true
				names = append(names, m[1])
			}
		}
	}
	for _, r := range rules {
		add(r.Expr)
	}
	for _, tc := range ut.Tests {
		for _, s := range tc.InputSeries {
			add(s.Series)
		}
	}
	if len(names) < 5 {
		t.Fatalf("found only %v in the rules and their tests", names)
	}
	return names
}

type monRule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

func monReadRules(t *testing.T) []monRule {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []monRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var out []monRule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatal("alerts.yml has no rules")
	}
	return out
}
