// Package deploy holds what runs erasure-worker outside a developer's machine: the container
// image (Dockerfile), the Kubernetes manifests (kubernetes/), the alert rules (prometheus/) and
// the Grafana dashboard (grafana/). It has no Go code: these tests render and check those files
// with the tools that will read them (kustomize, the Kubernetes API types, promtool).
package deploy

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"

	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The scrape job the rules and the dashboard expect: the ServiceMonitor's Service name.
const job = "erasure-worker"

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

// decodeStrict decodes YAML the way the API server decodes a request: duplicate keys, unknown
// fields and fields in the wrong case are errors.
func decodeStrict(doc []byte, into any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(j, into, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func one[T any](t *testing.T, what string, s []*T) *T {
	t.Helper()
	if len(s) != 1 {
		t.Fatalf("want exactly one %s, rendered %d", what, len(s))
	}
	return s[0]
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
