// Package deploy holds what runs erasure-worker outside a developer's machine: the container
// image (Dockerfile), the Kubernetes manifests (kubernetes/), the alert rules (prometheus/) and
// the Grafana dashboard (grafana/). It has no Go code: these tests render and check those files
// with the tools that will read them (kustomize, the Kubernetes API types, promtool).
package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite kubernetes/base/prometheusrule.yaml from prometheus/alerts.yml")

// The overlays and what each promises.
var overlays = []struct {
	name, namespace, knotURL string
	replicas                 int32
}{
	{"development", "erasure-worker-dev", "https://development.knotapi.com", 1},
	{"production", "erasure-worker", "https://production.knotapi.com", 3},
}

const (
	metricsPort = 9090
	runbookURL  = "https://github.com/erasure-worker/erasure-worker/blob/main/README.md#runbook-"
	// The scrape job the rules and the dashboard expect: the ServiceMonitor's Service name.
	job = "erasure-worker"
)

// Settings that are secret: never in a ConfigMap.
var secretSettings = []string{"DATABASE_URL", "KNOT_CLIENT_ID", "KNOT_SECRET"}

// --- rendering ---------------------------------------------------------------------------------

// rendered is one overlay rendered by kustomize and decoded strictly into its API types.
type rendered struct {
	namespaces      []*corev1.Namespace
	serviceAccounts []*corev1.ServiceAccount
	configMaps      []*corev1.ConfigMap
	secrets         []*corev1.Secret
	services        []*corev1.Service
	deployments     []*appsv1.Deployment
	pdbs            []*policyv1.PodDisruptionBudget
	netpols         []*networkingv1.NetworkPolicy
	serviceMonitors []*serviceMonitor
	prometheusRules []*prometheusRule
	yaml            []byte
}

// serviceMonitor and prometheusRule are the fields of the Prometheus Operator's CRDs
// (monitoring.coreos.com/v1) that these manifests may use; a field the operator does not know,
// or a misspelt one, fails the strict decode. (The operator's Go module drags in
// controller-runtime, so it is not used here.)
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port,omitempty"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ruleFile `json:"spec"`
}

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

func overlayDir(name string) string { return filepath.Join("kubernetes", "overlays", name) }

// render builds an overlay with the kustomize library (what `kubectl kustomize` runs) and decodes
// every object strictly.
func render(t *testing.T, overlay string) *rendered {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), overlayDir(overlay))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", overlayDir(overlay), err)
	}
	out := &rendered{}
	if out.yaml, err = m.AsYaml(); err != nil {
		t.Fatal(err)
	}
	for _, res := range m.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Namespace":
			obj = appendNew(&out.namespaces)
		case "v1 ServiceAccount":
			obj = appendNew(&out.serviceAccounts)
		case "v1 ConfigMap":
			obj = appendNew(&out.configMaps)
		case "v1 Secret":
			obj = appendNew(&out.secrets)
		case "v1 Service":
			obj = appendNew(&out.services)
		case "apps/v1 Deployment":
			obj = appendNew(&out.deployments)
		case "policy/v1 PodDisruptionBudget":
			obj = appendNew(&out.pdbs)
		case "networking.k8s.io/v1 NetworkPolicy":
			obj = appendNew(&out.netpols)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			obj = appendNew(&out.serviceMonitors)
		case "monitoring.coreos.com/v1 PrometheusRule":
			obj = appendNew(&out.prometheusRules)
		default:
			t.Errorf("%s renders %s %s %q, which this test does not know: add its type", overlay, tm.APIVersion, tm.Kind, res.GetName())
			continue
		}
		if err := decodeStrict(doc, obj); err != nil {
			t.Errorf("%s: %s %q: %v", overlay, tm.Kind, res.GetName(), err)
		}
	}
	return out
}

func appendNew[T any](s *[]*T) *T {
	v := new(T)
	*s = append(*s, v)
	return v
}

func one[T any](t *testing.T, what string, s []*T) *T {
	t.Helper()
	if len(s) != 1 {
		t.Fatalf("want exactly one %s, rendered %d", what, len(s))
	}
	return s[0]
}

// --- the overlays ------------------------------------------------------------------------------

func TestOverlaysRenderWithKubectl(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed; TestOverlays renders with the kustomize library instead")
	}
	for _, o := range overlays {
		t.Run(o.name, func(t *testing.T) {
			cmd := exec.Command(kubectl, "kustomize", overlayDir(o.name))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("kubectl kustomize %s: %v\n%s", overlayDir(o.name), err, stderr.String())
			}
			// kubectl carries its own kustomize: the objects must be the same as the library's.
			got, want := objects(t, out), objects(t, render(t, o.name).yaml)
			if !reflect.DeepEqual(got, want) {
				for k := range want {
					if !reflect.DeepEqual(got[k], want[k]) {
						t.Errorf("kubectl kustomize renders %s differently:\nkubectl: %v\nlibrary: %v", k, got[k], want[k])
					}
				}
				for k := range got {
					if _, ok := want[k]; !ok {
						t.Errorf("kubectl kustomize renders %s, the library does not", k)
					}
				}
			}
		})
	}
}

func objects(t *testing.T, stream []byte) map[string]any {
	t.Helper()
	out := map[string]any{}
	for doc := range strings.SplitSeq(string(stream), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		md, _ := obj["metadata"].(map[string]any)
		out[fmt.Sprintf("%v/%v/%v", obj["kind"], md["namespace"], md["name"])] = obj
	}
	return out
}

func TestOverlays(t *testing.T) {
	settings := knownSettings(t)
	for _, o := range overlays {
		t.Run(o.name, func(t *testing.T) {
			r := render(t, o.name)
			if t.Failed() {
				t.FailNow()
			}
			checkObjects(t, r, o.namespace)
			d := one(t, "Deployment", r.deployments)
			cm := settingsConfigMap(t, r, d)
			checkDeployment(t, d, cm, settings)
			checkConfigMap(t, cm, settings, o.knotURL)
			checkService(t, r, d)
			checkNetworkPolicy(t, one(t, "NetworkPolicy", r.netpols), d)
			checkDisruptionBudget(t, one(t, "PodDisruptionBudget", r.pdbs), d)
			checkRulesAndDashboard(t, r)
			if got := *d.Spec.Replicas; got != o.replicas {
				t.Errorf("replicas %d, want %d", got, o.replicas)
			}
		})
	}
}

func checkObjects(t *testing.T, r *rendered, namespace string) {
	t.Helper()
	if len(r.secrets) != 0 {
		t.Errorf("%d Secret objects rendered: secrets are created outside the repository (README: Deploying)", len(r.secrets))
	}
	ns := one(t, "Namespace", r.namespaces)
	if ns.Name != namespace || ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace %q with labels %v: want %q enforcing the restricted pod security standard", ns.Name, ns.Labels, namespace)
	}
	var all []metav1.Object
	for _, s := range r.serviceAccounts {
		all = append(all, s)
	}
	for _, s := range r.configMaps {
		all = append(all, s)
	}
	for _, s := range r.services {
		all = append(all, s)
	}
	for _, s := range r.deployments {
		all = append(all, s)
	}
	for _, s := range r.pdbs {
		all = append(all, s)
	}
	for _, s := range r.netpols {
		all = append(all, s)
	}
	for _, s := range r.serviceMonitors {
		all = append(all, s)
	}
	for _, s := range r.prometheusRules {
		all = append(all, s)
	}
	for _, o := range all {
		if o.GetNamespace() != namespace {
			t.Errorf("%s is in namespace %q, want %q", o.GetName(), o.GetNamespace(), namespace)
		}
	}
}

// settingsConfigMap is the ConfigMap the worker takes its settings from.
func settingsConfigMap(t *testing.T, r *rendered, d *appsv1.Deployment) *corev1.ConfigMap {
	t.Helper()
	c := container(t, d.Spec.Template.Spec.Containers, "worker")
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil {
		t.Fatalf("worker container's envFrom %v: want one ConfigMap", c.EnvFrom)
	}
	name := c.EnvFrom[0].ConfigMapRef.Name
	for _, cm := range r.configMaps {
		if cm.Name == name {
			return cm
		}
	}
	t.Fatalf("the worker takes its settings from ConfigMap %q, which is not rendered", name)
	return nil
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func checkDeployment(t *testing.T, d *appsv1.Deployment, cm *corev1.ConfigMap, settings map[string]bool) {
	t.Helper()
	pod := d.Spec.Template.Spec
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("the Deployment's selector %v does not match its pods' labels %v", d.Spec.Selector, d.Spec.Template.Labels)
	}

	// Security: what the restricted pod security standard asks, on every container.
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod securityContext.seccompProfile is not RuntimeDefault")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token; the worker never calls the Kubernetes API")
	}
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("container %s has no securityContext", c.Name)
			continue
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("container %s: capabilities %v, want drop [ALL] and no add", c.Name, sc.Capabilities)
		case sc.Privileged != nil && *sc.Privileged:
			t.Errorf("container %s is privileged", c.Name)
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("container %s: resources %v: want cpu and memory requests and a memory limit", c.Name, c.Resources)
		}
		// A pinned tag: with a moving one (latest) a restart may run a different version than
		// its neighbours, and a rollback rolls back nothing.
		if name, tag := imageTag(c.Image); !strings.Contains(name, "/") || tag == "" || tag == "latest" {
			t.Errorf("container %s: image %q: the overlay must name a registry and a pinned tag", c.Name, c.Image)
		}
		for _, e := range c.Env {
			if !settings[e.Name] && e.Name != "GOMEMLIMIT" {
				t.Errorf("container %s: env %s is not a setting erasure-worker knows (run --help)", c.Name, e.Name)
			}
			if slices.Contains(secretSettings, e.Name) && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
				t.Errorf("container %s: %s is not taken from a Secret", c.Name, e.Name)
			}
		}
	}

	// Migration: an init container running `migrate` from the same image as the worker.
	worker := container(t, pod.Containers, "worker")
	migrate := container(t, pod.InitContainers, "migrate")
	if !slices.Equal(migrate.Args, []string{"migrate"}) || migrate.Image != worker.Image {
		t.Errorf("init container %s %v: want `migrate` from the worker's image %s", migrate.Image, migrate.Args, worker.Image)
	}
	if !slices.Equal(worker.Args, []string{"run"}) {
		t.Errorf("worker args %v, want [run]", worker.Args)
	}

	// Probes on the metrics port.
	port := -1
	for _, p := range worker.Ports {
		if p.Name == "metrics" {
			port = int(p.ContainerPort)
		}
	}
	if port != metricsPort {
		t.Errorf("worker's port named metrics is %d, want %d", port, metricsPort)
	}
	if addr := cm.Data["LISTEN_ADDR"]; addr != fmt.Sprintf(":%d", metricsPort) {
		t.Errorf("LISTEN_ADDR %q, but the probes and Prometheus use port %d", addr, metricsPort)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", worker.LivenessProbe, "/healthz"}, {"readiness", worker.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("worker has no HTTP %s probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || !portIs(p.probe.HTTPGet.Port, worker.Ports, metricsPort) {
			t.Errorf("%s probe GET %s on port %s, want %s on %d", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, metricsPort)
		}
	}

	// SIGTERM: Kubernetes must not kill the worker before its own shutdown timeout ends.
	shutdown := 30 * time.Second // erasure-worker's default
	if s, ok := cm.Data["SHUTDOWN_TIMEOUT"]; ok {
		if shutdown, _ = time.ParseDuration(s); shutdown <= 0 {
			t.Errorf("SHUTDOWN_TIMEOUT %q is not a positive duration", s)
		}
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= shutdown {
		t.Errorf("terminationGracePeriodSeconds %v is not above SHUTDOWN_TIMEOUT %v: calls in flight would be killed", deref(g), shutdown)
	}

	// The Knot secret is a file the worker re-reads while paused on a 401.
	file := cm.Data["KNOT_SECRET_FILE"]
	if !secretFileMounted(pod, worker, file) {
		t.Errorf("KNOT_SECRET_FILE %q is not a key of a Secret volume mounted (as a whole, without subPath) into the worker", file)
	}
}

// imageTag splits an image reference into its name and its tag or digest.
func imageTag(ref string) (name, tag string) {
	if name, digest, ok := strings.Cut(ref, "@"); ok {
		return name, digest
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:]
	}
	return ref, ""
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func portIs(p intstr.IntOrString, ports []corev1.ContainerPort, want int) bool {
	if p.Type == intstr.Int {
		return p.IntValue() == want
	}
	for _, cp := range ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort) == want
		}
	}
	return false
}

func secretFileMounted(pod corev1.PodSpec, c *corev1.Container, file string) bool {
	for _, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, file)
		if err != nil || strings.HasPrefix(rel, "..") || m.SubPath != "" {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			for _, it := range v.Secret.Items {
				if it.Path == rel && it.Key == "KNOT_SECRET" {
					return true
				}
			}
		}
	}
	return false
}

func checkConfigMap(t *testing.T, cm *corev1.ConfigMap, settings map[string]bool, knotURL string) {
	t.Helper()
	for k := range cm.Data {
		if !settings[k] {
			t.Errorf("ConfigMap key %s is not a setting erasure-worker knows (run --help): it would be ignored", k)
		}
		if slices.Contains(secretSettings, k) {
			t.Errorf("ConfigMap holds %s, a secret", k)
		}
	}
	if got := cm.Data["KNOT_BASE_URL"]; got != knotURL {
		t.Errorf("KNOT_BASE_URL %q, want %q", got, knotURL)
	}
	if len(cm.BinaryData) > 0 {
		t.Error("the settings ConfigMap has binaryData")
	}
}

// knownSettings are the environment variables `erasure-worker run --help` lists.
func knownSettings(t *testing.T) map[string]bool {
	t.Helper()
	cmd := exec.Command("go", "run", "../cmd/erasure-worker", "run", "--help")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go run ../cmd/erasure-worker run --help: %v\n%s", err, stderr.String())
	}
	m := map[string]bool{}
	for _, sm := range regexp.MustCompile(`(?m)^\s+--[a-z0-9-]+, ([A-Z0-9_]+) \(`).FindAllSubmatch(out, -1) {
		m[string(sm[1])] = true
	}
	for _, s := range append(slices.Clone(secretSettings), "KNOT_BASE_URL", "SHUTDOWN_TIMEOUT", "LISTEN_ADDR", "KNOT_SECRET_FILE") {
		if !m[s] {
			t.Fatalf("run --help does not list %s; the help text changed shape:\n%s", s, out)
		}
	}
	return m
}

func checkService(t *testing.T, r *rendered, d *appsv1.Deployment) {
	t.Helper()
	svc := one(t, "Service", r.services)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the worker pods %v", svc.Spec.Selector, d.Spec.Template.Labels)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" ||
		!portIs(svc.Spec.Ports[0].TargetPort, container(t, d.Spec.Template.Spec.Containers, "worker").Ports, metricsPort) {
		t.Errorf("Service ports %v: want one named metrics targeting %d", svc.Spec.Ports, metricsPort)
	}
	if svc.Name != job {
		t.Errorf("Service %q: the scrape job is named after it, and the rules and dashboard expect job=%q", svc.Name, job)
	}
	sm := one(t, "ServiceMonitor", r.serviceMonitors)
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not select the Service (labels %v)", sm.Spec.Selector, svc.Labels)
	}
	if sm.Spec.JobLabel != "" {
		t.Errorf("ServiceMonitor jobLabel %q would rename the job the rules expect", sm.Spec.JobLabel)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v: want port metrics, path /metrics", sm.Spec.Endpoints)
	}
	sa := one(t, "ServiceAccount", r.serviceAccounts)
	if d.Spec.Template.Spec.ServiceAccountName != sa.Name || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("ServiceAccount %q (automount %v), pod uses %q: want the pod to use it, without a token", sa.Name,
			deref(sa.AutomountServiceAccountToken), d.Spec.Template.Spec.ServiceAccountName)
	}
}

func checkNetworkPolicy(t *testing.T, np *networkingv1.NetworkPolicy, d *appsv1.Deployment) {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("NetworkPolicy podSelector %v does not select the worker pods", np.Spec.PodSelector)
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Errorf("NetworkPolicy policyTypes %v, want [Ingress Egress]", np.Spec.PolicyTypes)
	}
	worker := container(t, d.Spec.Template.Spec.Containers, "worker")
	ports := func(ps []networkingv1.NetworkPolicyPort) []string {
		var out []string
		for _, p := range ps {
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			port := "all"
			if p.Port != nil {
				port = p.Port.String()
				if portIs(*p.Port, worker.Ports, metricsPort) {
					port = fmt.Sprint(metricsPort)
				}
			}
			out = append(out, fmt.Sprintf("%s/%s", proto, port))
		}
		if len(ps) == 0 {
			out = append(out, "any port")
		}
		return out
	}
	var in, out []string
	for _, r := range np.Spec.Ingress {
		in = append(in, ports(r.Ports)...)
	}
	for _, r := range np.Spec.Egress {
		out = append(out, ports(r.Ports)...)
	}
	sort.Strings(in)
	sort.Strings(out)
	if want := []string{"TCP/9090"}; !slices.Equal(in, want) {
		t.Errorf("NetworkPolicy lets in %v, want only %v (metrics and probes)", in, want)
	}
	if want := []string{"TCP/443", "TCP/53", "TCP/5432", "UDP/53"}; !slices.Equal(out, want) {
		t.Errorf("NetworkPolicy lets out %v, want only %v (Knot, DNS, PostgreSQL)", out, want)
	}
}

func checkDisruptionBudget(t *testing.T, pdb *policyv1.PodDisruptionBudget, d *appsv1.Deployment) {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("PodDisruptionBudget selector %v does not select the worker pods", pdb.Spec.Selector)
	}
	// minAvailable >= replicas would block every node drain.
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() < 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget maxUnavailable %v minAvailable %v: want maxUnavailable >= 1 so that drains proceed",
			pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}
}

func checkRulesAndDashboard(t *testing.T, r *rendered) {
	t.Helper()
	pr := one(t, "PrometheusRule", r.prometheusRules)
	if want := readRuleFile(t); !reflect.DeepEqual(pr.Spec, want) {
		t.Error("the rendered PrometheusRule's rules differ from prometheus/alerts.yml")
	}
	dashboard, err := os.ReadFile(filepath.Join("grafana", "erasure-worker.json"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, cm := range r.configMaps {
		if _, ok := cm.Data["erasure-worker.json"]; !ok {
			continue
		}
		found = true
		if cm.Labels["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap %s has labels %v: the Grafana sidecar looks for grafana_dashboard: \"1\"", cm.Name, cm.Labels)
		}
		if cm.Data["erasure-worker.json"] != string(dashboard) {
			t.Errorf("dashboard ConfigMap %s does not hold grafana/erasure-worker.json as it is", cm.Name)
		}
	}
	if !found {
		t.Error("no ConfigMap holds the Grafana dashboard")
	}
}

// --- alert rules -------------------------------------------------------------------------------

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
#   go test ./deploy -run TestPrometheusRuleMatchesAlerts -update
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
		t.Errorf("%s is not generated from prometheus/alerts.yml; run: go test ./deploy -run TestPrometheusRuleMatchesAlerts -update", prometheusRulePath)
	}
	var pr prometheusRule
	if err := decodeStrict(got, &pr); err != nil {
		t.Fatalf("%s: %v", prometheusRulePath, err)
	}
	if !reflect.DeepEqual(pr.Spec, readRuleFile(t)) {
		t.Errorf("%s's rules differ from prometheus/alerts.yml", prometheusRulePath)
	}
}

// promtool returns the path of promtool, or skips (fails under CI) when it is missing.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is not installed (CI is set): apt-get install prometheus")
		}
		t.Skip("promtool is not installed; to check the alert rules: apt-get install prometheus")
	}
	return p
}

func TestAlertRulesPromtool(t *testing.T) {
	bin := promtool(t)
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
		"ErasureWorkerDown", "ErasureQueueNotDraining"} {
		if !seen[want] {
			t.Errorf("alert %s is missing", want)
		}
	}
}

// The runbook links of the alerts and the dashboard land on README headings.
func TestRunbookLinksResolve(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte("\n## Monitoring\n")) {
		t.Skip("README.md has no Monitoring section yet")
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
		_, anchor, _ := strings.Cut(l, "README.md#")
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

// --- the dashboard -----------------------------------------------------------------------------

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

// The metrics a dashboard user must see (DESIGN.md's contract and the shared rate limit's).
var dashboardMetrics = []string{
	"erasure_requests_completed_total", "erasure_knot_requests_total", "erasure_knot_request_duration_seconds_bucket",
	"erasure_queue_depth", "erasure_oldest_pending_age_seconds", "erasure_overdue_requests", "erasure_due_soon_requests",
	"erasure_worker_paused", "erasure_rate_limit_wait_seconds_bucket", "erasure_inflight_requests",
	"erasure_rate_limit_rps", "erasure_rate_limit_global_rps", "erasure_replicas",
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
