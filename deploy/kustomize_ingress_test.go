package deploy

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// The lines of overlays/production/kustomization.yaml that an operator uncomments to expose the
// HTTP doors through components/api-ingress.
const (
	apiIngressCommented = "# components:\n#   - ../../components/api-ingress\n"
	apiIngressOn        = "components:\n  - ../../components/api-ingress\n"
)

// The paths the Ingress forwards: the generic API and Ketch's forwarder. Nothing else of the
// worker is meant for the outside.
var apiIngressPaths = []string{"/v1/erasure-requests", "/v1/fides", "/v1/ketch", "/v1/onetrust"} // sorted

// The production overlay with components/api-ingress turned on as its comment says: every promise
// of the overlay still holds, and an Ingress sends the doors' paths, and only those, to the
// Service's api port over TLS.
func TestProductionWithAPIIngress(t *testing.T) {
	settings := knownSettings(t)
	r := renderProductionWith(t, "the Ingress", [][2]string{{apiIngressCommented, apiIngressOn}})
	i := slices.IndexFunc(overlays, func(o overlay) bool { return o.name == "production" })
	checkOverlay(t, r, overlays[i], settings)
	checkAPIIngress(t, one(t, "Ingress", r.ingresses), one(t, "Service", r.services), one(t, "Deployment", r.deployments))
}

func checkAPIIngress(t *testing.T, ing *networkingv1.Ingress, svc *corev1.Service, d *appsv1.Deployment) {
	t.Helper()
	if ing.Spec.DefaultBackend != nil {
		t.Errorf("Ingress has a default backend %+v: every path would reach it", ing.Spec.DefaultBackend)
	}
	if len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].Host == "" || ing.Spec.Rules[0].HTTP == nil {
		t.Fatalf("Ingress rules %+v: want one, for one host", ing.Spec.Rules)
	}
	rule := ing.Spec.Rules[0]
	tls := false
	for _, e := range ing.Spec.TLS {
		if slices.Contains(e.Hosts, rule.Host) && e.SecretName != "" {
			tls = true
		}
	}
	if !tls {
		t.Errorf("Ingress TLS %+v does not cover host %s with a Secret: the bearer token would cross the network in clear", ing.Spec.TLS, rule.Host)
	}
	worker := &d.Spec.Template.Spec.Containers[0] // the worker's, or the doors' when they run apart
	var paths []string
	for _, p := range rule.HTTP.Paths {
		paths = append(paths, p.Path)
		// Prefix matches whole segments (/v1/ketch and /v1/ketch/..., never /v1/ketchup); an
		// ImplementationSpecific path means whatever the controller makes of it.
		if p.PathType == nil || *p.PathType != networkingv1.PathTypePrefix {
			t.Errorf("Ingress path %s: pathType %v, want Prefix", p.Path, deref(p.PathType))
		}
		b := p.Backend.Service
		if b == nil || b.Name != svc.Name {
			t.Errorf("Ingress path %s goes to %+v, want the Service %s", p.Path, p.Backend, svc.Name)
			continue
		}
		var target *corev1.ServicePort
		for j, sp := range svc.Spec.Ports {
			if b.Port.Name != "" && sp.Name == b.Port.Name || b.Port.Name == "" && sp.Port == b.Port.Number {
				target = &svc.Spec.Ports[j]
			}
		}
		if target == nil || !portIs(target.TargetPort, worker.Ports, apiPort) {
			t.Errorf("Ingress path %s goes to Service port %+v, which does not reach %s's api port %d", p.Path, b.Port, d.Name, apiPort)
		}
	}
	slices.Sort(paths)
	if !slices.Equal(paths, apiIngressPaths) {
		t.Errorf("Ingress forwards %v, want only %v", paths, apiIngressPaths)
	}
}

// copyInto copies the directory dir (relative to deploy/) into mem under /deploy.
func copyInto(t *testing.T, mem filesys.FileSystem, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dst := filepath.Join("/deploy", path)
		if err := mem.MkdirAll(filepath.Dir(dst)); err != nil {
			return err
		}
		return mem.WriteFile(dst, b)
	})
	if err != nil {
		t.Fatalf("copying %s: %v", strings.TrimSuffix(dir, "/"), err)
	}
}
