// Package deploy holds what runs erasure-worker outside a developer's machine: the container
// image (Dockerfile), the Kubernetes manifests (kubernetes/), the alert rules (prometheus/) and
// the Grafana dashboard (grafana/). It has no Go code: these tests render and check those files
// with the tools that will read them (kustomize, the Kubernetes API types, promtool).
package deploy

import (
	"errors"
	"testing"

	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The scrape job the rules and the dashboard expect: the ServiceMonitor's Service name.
const job = "erasure-worker"

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
