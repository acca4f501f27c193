package deploy

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The lines of overlays/production/kustomization.yaml that an operator uncomments to run the
// doors apart (components/doors-apart), beside api-ingress's.
const (
	componentsCommented = "# components:\n"
	componentsOn        = "components:\n"
	doorsApartCommented = "#   - ../../components/doors-apart\n"
	doorsApartOn        = "  - ../../components/doors-apart\n"
)

// The production overlay with components/doors-apart turned on as its comment says, alone and
// with api-ingress: two Deployments, the worker's (ROLE=worker, holding the Knot secret) and the
// doors' (ROLE=doors, holding none, with a memory limit well under the worker's); the Service's
// api port reaching the doors' pods only and its metrics port both; a budget for each with no
// pod under two; the doors' pods let in on the api port and out to PostgreSQL and DNS only.
func TestProductionWithDoorsApart(t *testing.T) {
	settings := knownSettings(t)
	for _, c := range []struct {
		name    string
		ingress bool
	}{{"doors-apart", false}, {"doors-apart and api-ingress", true}} {
		t.Run(c.name, func(t *testing.T) {
			on := [][2]string{{componentsCommented, componentsOn}, {doorsApartCommented, doorsApartOn}}
			if c.ingress {
				on = append(on, [2]string{"#   - ../../components/api-ingress\n", "  - ../../components/api-ingress\n"})
			}
			r := renderProductionWith(t, "the doors apart", on)
			checkRulesAndDashboard(t, r)
			worker, doors := deploymentNamed(t, r, "erasure-worker"), deploymentNamed(t, r, "erasure-worker-doors")
			if len(r.deployments) != 2 {
				t.Fatalf("%d Deployments rendered, want the worker's and the doors'", len(r.deployments))
			}
			cm := settingsConfigMap(t, r, worker)
			checkConfigMap(t, cm, settings, "https://production.knotapi.com")
			checkSplit(t, r, worker, doors, cm, settings)
			if c.ingress {
				checkAPIIngress(t, one(t, "Ingress", r.ingresses), one(t, "Service", r.services), doors)
			} else if len(r.ingresses) != 0 {
				t.Errorf("%d Ingress objects rendered without api-ingress", len(r.ingresses))
			}
		})
	}
}

func checkSplit(t *testing.T, r *rendered, worker, doors *appsv1.Deployment, cm *corev1.ConfigMap, settings map[string]bool) {
	t.Helper()
	// The worker: as before, but ROLE=worker and no api port.
	checkPod(t, worker, "worker", cm, settings, "metrics")
	checkKnotSecret(t, worker, cm)
	if got := envValue(t, worker, "worker", "ROLE"); got != "worker" {
		t.Errorf("the worker's ROLE is %q, want worker: it would serve doors that no Service reaches", got)
	}
	if got := *worker.Spec.Replicas; got != 3 {
		t.Errorf("the worker's replicas %d, want the overlay's 3", got)
	}

	// The doors: ROLE=doors, the same settings, DATABASE_URL and identifier keys, and no Knot
	// credential at all.
	checkPod(t, doors, "doors", cm, settings, "metrics", "api")
	if got := envValue(t, doors, "doors", "ROLE"); got != "doors" {
		t.Errorf("the doors' ROLE is %q, want doors", got)
	}
	dc := container(t, doors.Spec.Template.Spec.Containers, "doors")
	if got := settingsConfigMap(t, r, doors); got.Name != cm.Name {
		t.Errorf("the doors take their settings from %s, the worker from %s: want the same", got.Name, cm.Name)
	}
	for _, e := range dc.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Key != "DATABASE_URL" {
			t.Errorf("the doors take %s from the Secret: they need only DATABASE_URL from it besides mounted files", e.Name)
		}
	}
	if ref := envFrom(t, doors, "doors", "DATABASE_URL"); ref == nil || ref.Name != "erasure-worker" || ref.Key != "DATABASE_URL" {
		t.Errorf("the doors' DATABASE_URL comes from %+v, want the Secret erasure-worker's DATABASE_URL", ref)
	}
	if v := secretFileMounted(doors.Spec.Template.Spec, dc, cm.Data["IDENTIFIER_KEY_FILE"], "IDENTIFIER_KEY"); v == nil {
		t.Errorf("IDENTIFIER_KEY_FILE %q is not mounted into the doors: `run` would not start", cm.Data["IDENTIFIER_KEY_FILE"])
	}
	for _, v := range doors.Spec.Template.Spec.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, it := range v.Secret.Items {
			if it.Key == "KNOT_SECRET" || it.Key == "KNOT_CLIENT_ID" {
				t.Errorf("the doors' pod mounts %s (volume %s): the doors never call Knot", it.Key, v.Name)
			}
		}
	}
	if _, set := cm.Data["KNOT_SECRET_FILE"]; set {
		// The shared ConfigMap names the worker's Knot secret file; `run` reads a _FILE that is
		// set, and stops when it is missing.
		if got, ok := envSet(dc, "KNOT_SECRET_FILE"); !ok || got != "" {
			t.Errorf("the doors' KNOT_SECRET_FILE is %q (cleared: %v), but no Knot secret is mounted: `run` would not start", got, ok)
		}
	}
	wl, dl := container(t, worker.Spec.Template.Spec.Containers, "worker").Resources.Limits.Memory(), dc.Resources.Limits.Memory()
	if dl.Value()*2 > wl.Value() || dl.Value() >= 160<<20 {
		t.Errorf("the doors' memory limit %v, the worker's %v: want the doors' at most half the worker's and under 160 MiB", dl, wl)
	}

	// Two Deployments that never select each other's pods.
	for _, p := range [][2]*appsv1.Deployment{{worker, doors}, {doors, worker}} {
		if selects(t, p[0].Spec.Selector, p[1]) {
			t.Errorf("the Deployment %s's selector %v matches the pods of %s: the two would fight over them", p[0].Name, p[0].Spec.Selector, p[1].Name)
		}
	}

	// The Service: metrics from both, api to the doors only (by name: a pod that declares no
	// port named api gets none of its traffic).
	svc := one(t, "Service", r.services)
	for _, d := range []*appsv1.Deployment{worker, doors} {
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
			t.Errorf("Service selector %v does not select %s's pods %v: Prometheus would not scrape them", svc.Spec.Selector, d.Name, d.Spec.Template.Labels)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort.Type != intstr.String {
			t.Errorf("Service port %s targets %s: want a named port, so that it reaches only the pods that declare it", p.Name, p.TargetPort.String())
			continue
		}
		reaches := func(d *appsv1.Deployment, c string) bool {
			return slices.ContainsFunc(container(t, d.Spec.Template.Spec.Containers, c).Ports, func(cp corev1.ContainerPort) bool {
				return cp.Name == p.TargetPort.StrVal
			})
		}
		w, dd := reaches(worker, "worker"), reaches(doors, "doors")
		switch p.Name {
		case "api":
			if w || !dd {
				t.Errorf("Service port api reaches the worker: %v, the doors: %v; want the doors only", w, dd)
			}
		case "metrics":
			if !w || !dd {
				t.Errorf("Service port metrics reaches the worker: %v, the doors: %v; want both", w, dd)
			}
		default:
			t.Errorf("Service port %s: want only metrics and api", p.Name)
		}
	}
	sm := one(t, "ServiceMonitor", r.serviceMonitors)
	if sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector); err != nil || !sel.Matches(labels.Set(svc.Labels)) || svc.Name != job {
		t.Errorf("ServiceMonitor selector %v, Service %s %v: want the Service %s scraped", sm.Spec.Selector, svc.Name, svc.Labels, job)
	}

	// A budget for each Deployment, and no pod under two (an eviction refuses such a pod).
	if len(r.pdbs) != 2 {
		t.Errorf("%d PodDisruptionBudgets, want the worker's and the doors'", len(r.pdbs))
	}
	for _, d := range []*appsv1.Deployment{worker, doors} {
		var under []*policyv1.PodDisruptionBudget
		for _, pdb := range r.pdbs {
			if selects(t, pdb.Spec.Selector, d) {
				under = append(under, pdb)
			}
		}
		if len(under) != 1 {
			t.Errorf("%s's pods are under %d PodDisruptionBudgets, want 1", d.Name, len(under))
			continue
		}
		checkDisruptionBudget(t, under[0], d)
	}

	// NetworkPolicies: the worker's as before; the doors' let the api port in from anywhere, and
	// only PostgreSQL and DNS out.
	for _, c := range []struct {
		d   *appsv1.Deployment
		out []string
	}{{worker, []string{"TCP/443", "TCP/53", "TCP/5432", "UDP/53"}}, {doors, []string{"TCP/53", "TCP/5432", "UDP/53"}}} {
		var policies []*networkingv1.NetworkPolicy
		for _, np := range r.netpols {
			if selects(t, &np.Spec.PodSelector, c.d) {
				policies = append(policies, np)
			}
		}
		if len(policies) != 1 {
			t.Errorf("%s's pods are under %d NetworkPolicies, want 1", c.d.Name, len(policies))
			continue
		}
		checkPolicy(t, policies[0], c.d, c.out)
	}
}

func deploymentNamed(t *testing.T, r *rendered, name string) *appsv1.Deployment {
	t.Helper()
	for _, d := range r.deployments {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no Deployment %s rendered", name)
	return nil
}

// selects tells whether sel matches the pods of d.
func selects(t *testing.T, sel *metav1.LabelSelector, d *appsv1.Deployment) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(labels.Set(d.Spec.Template.Labels))
}

// envSet returns the value of the variable name set in c's env, and whether it is set there.
func envSet(c *corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func envValue(t *testing.T, d *appsv1.Deployment, c, name string) string {
	t.Helper()
	v, _ := envSet(container(t, d.Spec.Template.Spec.Containers, c), name)
	return v
}

func envFrom(t *testing.T, d *appsv1.Deployment, c, name string) *corev1.SecretKeySelector {
	t.Helper()
	for _, e := range container(t, d.Spec.Template.Spec.Containers, c).Env {
		if e.Name == name && e.ValueFrom != nil {
			return e.ValueFrom.SecretKeyRef
		}
	}
	return nil
}
