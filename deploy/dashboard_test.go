package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboard is the part of a Grafana dashboard's JSON model these tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Links []struct {
		URL string `json:"url"`
	} `json:"links"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
		RefID        string `json:"refId"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("grafana", "erasure-worker.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/erasure-worker.json: %v", err)
	}
	return d
}

// The metrics a dashboard user must see (DESIGN.md's contract, the shared rate limit's and the
// reports' of issue 11).
var dashboardMetrics = []string{
	"erasure_requests_completed_total", "erasure_knot_requests_total", "erasure_knot_request_duration_seconds_bucket",
	"erasure_queue_depth", "erasure_oldest_pending_age_seconds", "erasure_overdue_requests", "erasure_due_soon_requests",
	"erasure_worker_paused", "erasure_rate_limit_wait_seconds_bucket", "erasure_inflight_requests",
	"erasure_rate_limit_rps", "erasure_rate_limit_global_rps", "erasure_replicas",
	"erasure_reports_pending", "erasure_reports_delivered_total", "erasure_report_oldest_pending_age_seconds",
	"erasure_reports_paused", "erasure_reports_failed",
}

var templateVar = regexp.MustCompile(`\$(?:\{(\w+)(?::\w+)?\}|(\w+))`)

func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q: both are needed to provision it", d.UID, d.Title)
	}
	vars := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	hasDatasourceVar := false
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type == "datasource" && v.Query == "prometheus" && v.Name == "datasource" {
			hasDatasourceVar = true
		}
	}
	if !hasDatasourceVar {
		t.Error("no datasource template variable named datasource (type prometheus)")
	}
	used := map[string]bool{}
	ids := map[int]bool{}
	var cells [][24]bool
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		// No two panels overlap in the 24-column grid.
		if p.GridPos.X < 0 || p.GridPos.W < 1 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H < 1 {
			t.Errorf("panel %q: gridPos %+v is off the grid", p.Title, p.GridPos)
			continue
		}
		for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
			for len(cells) <= y {
				cells = append(cells, [24]bool{})
			}
			for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
				if cells[y][x] {
					t.Errorf("panel %q overlaps another at row %d column %d", p.Title, y, x)
				}
				cells[y][x] = true
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if strings.TrimSpace(q.Expr) == "" || q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: query %q refId %q: want an expression and a unique refId", p.Title, q.Expr, q.RefID)
			}
			refs[q.RefID] = true
			for _, m := range templateVar.FindAllStringSubmatch(q.Expr, -1) {
				name := m[1] + m[2]
				if !vars[name] {
					t.Errorf("panel %q uses $%s, which the dashboard does not define", p.Title, name)
				}
			}
			for _, m := range regexp.MustCompile(`\b(?:erasure|process|go)_[a-z_]+`).FindAllString(q.Expr, -1) {
				used[m] = true
			}
		}
	}
	for _, m := range dashboardMetrics {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
	for m := range used {
		if strings.HasPrefix(m, "erasure_") && !slices.Contains(dashboardMetrics, m) {
			t.Errorf("a panel queries %s, which erasure-worker does not export", m)
		}
	}
}
