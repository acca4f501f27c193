package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const (
	readmeURL = "https://github.com/erasure-worker/erasure-worker/blob/main/README.md"
	// Every alert's runbook_url is this followed by its name in lower case: a heading of README.md.
	runbookURL = readmeURL + "#runbook-"
)

// The runbook links of the alerts and the dashboard land on README headings. It never skips: a
// runbook heading renamed, moved out of README.md or missing leaves the on-call with a dead link.
func TestRunbookLinksResolve(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(readme), -1) {
		anchors[githubAnchor(m[1])] = true
	}
	var links []string
	for _, g := range readRuleFile(t).Groups {
		for _, r := range g.Rules {
			links = append(links, r.Annotations["runbook_url"])
		}
	}
	for _, l := range readDashboard(t).Links {
		links = append(links, l.URL)
	}
	for _, l := range links {
		anchor, ok := strings.CutPrefix(l, readmeURL+"#")
		if !ok {
			t.Errorf("%q does not link to a heading of %s", l, readmeURL)
			continue
		}
		if !anchors[anchor] {
			t.Errorf("%s: README.md has no heading with anchor #%s", l, anchor)
		}
	}
}

// githubAnchor is the id GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}
