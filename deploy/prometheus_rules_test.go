package deploy

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite kubernetes/base/prometheusrule.yaml from prometheus/alerts.yml")

// ruleFile is a Prometheus rules file, which is also a PrometheusRule's spec.
type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Alert         string            `json:"alert,omitempty"`
	Record        string            `json:"record,omitempty"`
	Expr          string            `json:"expr"`
	For           string            `json:"for,omitempty"`
	KeepFiringFor string            `json:"keep_firing_for,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

func readRuleFile(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := decodeStrict(b, &rf); err != nil {
		t.Fatalf("prometheus/alerts.yml: %v", err)
	}
	return rf
}

const prometheusRulePath = "kubernetes/base/prometheusrule.yaml"

// prometheusRuleYAML is the PrometheusRule generated from alerts.yml: the same text, indented
// under spec, so that comments and layout survive.
func prometheusRuleYAML(t *testing.T) []byte {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString(`# Generated from deploy/prometheus/alerts.yml by
#   go -C deploy test -run TestPrometheusRuleMatchesAlerts -update
# Do not edit: edit alerts.yml. For the Prometheus Operator; its Prometheus selects rules by
# label (ruleSelector; kube-prometheus-stack wants release: <its release name>): add that label
# in your overlay if the selector is not empty.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: erasure-worker
  labels:
    app.kubernetes.io/name: erasure-worker
spec:
`)
	body := false
	for line := range strings.SplitSeq(strings.TrimRight(string(src), "\n"), "\n") {
		if !body && (strings.HasPrefix(line, "#") || line == "") {
			continue // alerts.yml's header comment
		}
		body = true
		if line != "" {
			b.WriteString("  ")
		}
		b.WriteString(line + "\n")
	}
	return b.Bytes()
}

func TestPrometheusRuleMatchesAlerts(t *testing.T) {
	want := prometheusRuleYAML(t)
	if *update {
		if err := os.WriteFile(prometheusRulePath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(prometheusRulePath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not generated from prometheus/alerts.yml; run: go -C deploy test -run TestPrometheusRuleMatchesAlerts -update", prometheusRulePath)
	}
	var pr prometheusRule
	if err := decodeStrict(got, &pr); err != nil {
		t.Fatalf("%s: %v", prometheusRulePath, err)
	}
	if !reflect.DeepEqual(pr.Spec, readRuleFile(t)) {
		t.Errorf("%s's rules differ from prometheus/alerts.yml", prometheusRulePath)
	}
}

func TestAlertRulesPromtool(t *testing.T) {
	bin := requireTool(t, "promtool", "apt-get install prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// unitTests is the part of promtool's unit test file this test reads.
type unitTests struct {
	Tests []struct {
		Name           string `json:"name"`
		AlertRuleTests []struct {
			AlertName string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// Every alert can be acted on (severity, summary, description, a runbook link) and has unit tests
// that see it fire and stay quiet.
func TestAlertRulesAreComplete(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("prometheus", "alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var ut unitTests
	if err := yaml.Unmarshal(b, &ut); err != nil {
		t.Fatal(err)
	}
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range ut.Tests {
		for _, a := range tc.AlertRuleTests {
			if len(a.ExpAlerts) > 0 {
				firing[a.AlertName] = true
			} else {
				quiet[a.AlertName] = true
			}
		}
	}
	seen := map[string]bool{}
	for _, g := range readRuleFile(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			seen[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s has no %s", r.Alert, a)
				}
			}
			if want := runbookURL + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !strings.Contains(r.Expr, `job="`+job+`"`) {
				t.Errorf("%s: expr does not select job=%q: it would read other services' series", r.Alert, job)
			}
			if !firing[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: alerts_test.yml must see it fire (%v) and stay quiet (%v)", r.Alert, firing[r.Alert], quiet[r.Alert])
			}
		}
	}
	for _, want := range []string{"ErasureRequestsOverdue", "ErasureRequestsDueSoon", "ErasureOldestPendingAgeGrowing",
		"ErasureWorkerPaused", "ErasureRequestsFailing", "ErasureKnotServerErrors", "ErasureKnotRateLimited",
		"ErasureWorkerDown", "ErasureQueueNotDraining",
		"ErasureReportsUndelivered", "ErasureReportsPaused", "ErasureReportsFailed", "ErasureReportsGivenUp", "ErasureDoorMostlyRefused", "ErasureRetentionBehind"} {
		if !seen[want] {
			t.Errorf("alert %s is missing", want)
		}
	}
}
