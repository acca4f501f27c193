package deploy

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// The console is off in every overlay as shipped; turned on in production as the overlay's comment
// says, it is a Deployment of its own that runs `console` read-only: its database URL and web
// configuration from a Secret of its own, nothing of the worker's Secret, no Knot credential; a
// Service on its port http; a NetworkPolicy that lets it reach PostgreSQL and DNS only; pods
// that neither the worker's nor its own selector confuse.
func TestTheConsoleIsOffUnlessTurnedOnAndThenReadsThroughItsOwnSecret(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o.name)
		for _, d := range r.deployments {
			if d.Name == "erasure-worker-console" {
				t.Errorf("overlay %s runs the console: it is off until an overlay turns it on", o.name)
			}
		}
	}

	r := renderProductionWith(t, "the console", [][2]string{
		{componentsCommented, componentsOn},
		{"#   - ../../components/console\n", "  - ../../components/console\n"},
	})
	worker, console := deploymentNamed(t, r, "erasure-worker"), deploymentNamed(t, r, "erasure-worker-console")
	c := container(t, console.Spec.Template.Spec.Containers, "console")
	if !slices.Equal(c.Args, []string{"console"}) {
		t.Errorf("the console runs %v, want [console]", c.Args)
	}
	if ref := envFrom(t, console, "console", "DATABASE_URL"); ref == nil || ref.Name != "erasure-worker-console" {
		t.Errorf("the console's DATABASE_URL comes from %+v, want the Secret erasure-worker-console (its read-only role)", ref)
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name != "erasure-worker-console" {
			t.Errorf("the console takes %s from the Secret %s: it must read nothing of the worker's", e.Name, e.ValueFrom.SecretKeyRef.Name)
		}
		if e.Name == "KNOT_SECRET" || e.Name == "KNOT_SECRET_FILE" || e.Name == "KNOT_CLIENT_ID" {
			t.Errorf("the console is given %s: it never calls Knot", e.Name)
		}
	}
	for _, v := range console.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName != "erasure-worker-console" {
			t.Errorf("the console mounts the Secret %s: it must read nothing of the worker's", v.Secret.SecretName)
		}
	}
	for _, ef := range c.EnvFrom {
		t.Errorf("the console takes its environment from %+v: it needs none of the worker's settings", ef)
	}
	webConfig, _ := envSet(c, "CONSOLE_WEB_CONFIG_FILE")
	if s := secretFileMounted(console.Spec.Template.Spec, c, webConfig, "web.yml"); s == nil || s.Optional != nil && *s.Optional {
		t.Errorf("CONSOLE_WEB_CONFIG_FILE %q is not mounted from the Secret's web.yml, required: the console would serve nothing, or start without a password", webConfig)
	}
	keys, _ := envSet(c, "IDENTIFIER_KEY_FILE")
	if secretFileMounted(console.Spec.Template.Spec, c, keys, "IDENTIFIER_KEY") == nil {
		t.Errorf("IDENTIFIER_KEY_FILE %q is not mounted: /people could not find pseudonymised people", keys)
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("the console's container security context %+v: want a read-only root and no privilege escalation", sc)
	}
	if lim := c.Resources.Limits.Memory(); lim.IsZero() {
		t.Error("the console has no memory limit")
	}
	if selects(t, worker.Spec.Selector, console) || selects(t, console.Spec.Selector, worker) {
		t.Error("the worker's and the console's Deployments select each other's pods")
	}

	var svc, np bool
	for _, s := range r.services {
		if s.Name != "erasure-worker-console" {
			continue
		}
		svc = true
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].TargetPort.String() != "http" || !selectsLabels(s.Spec.Selector, console) {
			t.Errorf("Service %s: ports %+v selector %v; want one port to the console's http", s.Name, s.Spec.Ports, s.Spec.Selector)
		}
	}
	for _, n := range r.netpols {
		if n.Name != "erasure-worker-console" {
			continue
		}
		np = true
		for _, e := range n.Spec.Egress {
			for _, p := range e.Ports {
				if port := p.Port.IntValue(); port != 5432 && port != 53 {
					t.Errorf("the console may reach port %d: it needs PostgreSQL and DNS only", port)
				}
			}
			if len(e.Ports) == 0 {
				t.Error("the console's NetworkPolicy lets it out on every port")
			}
		}
	}
	if !svc || !np {
		t.Errorf("Service rendered %v, NetworkPolicy rendered %v: want both for the console", svc, np)
	}
}

// selectsLabels tells whether a Service's selector matches the pods of d.
func selectsLabels(sel map[string]string, d *appsv1.Deployment) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(d.Spec.Template.Labels))
}
