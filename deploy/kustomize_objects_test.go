package deploy

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The properties TestOverlays checks on each rendered object: security, probes, shutdown grace,
// settings, the Service and ServiceMonitor, the NetworkPolicy and the PodDisruptionBudget.

// settingsConfigMap is the ConfigMap the Deployment's container (the worker, or the doors when
// they run apart) takes its settings from.
func settingsConfigMap(t *testing.T, r *rendered, d *appsv1.Deployment) *corev1.ConfigMap {
	t.Helper()
	c := &d.Spec.Template.Spec.Containers[0]
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil {
		t.Fatalf("%s container's envFrom %v: want one ConfigMap", c.Name, c.EnvFrom)
	}
	name := c.EnvFrom[0].ConfigMapRef.Name
	for _, cm := range r.configMaps {
		if cm.Name == name {
			return cm
		}
	}
	t.Fatalf("%s takes its settings from ConfigMap %q, which is not rendered", c.Name, name)
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
	checkPod(t, d, "worker", cm, settings, "metrics", "api")
	checkKnotSecret(t, d, cm)
}

// The ports erasure-worker's containers name, and the settings that choose them.
var namedPorts = map[string]struct {
	port    int
	setting string
}{"metrics": {metricsPort, "LISTEN_ADDR"}, "api": {apiPort, "API_LISTEN_ADDR"}}

// checkPod checks what every pod that runs `erasure-worker run` promises, its container named
// name and declaring the ports named: security, resources, a pinned image, known settings, the
// migration, probes, shutdown grace, and the doors' and connectors' secrets.
func checkPod(t *testing.T, d *appsv1.Deployment, name string, cm *corev1.ConfigMap, settings map[string]bool, ports ...string) {
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
	worker := container(t, pod.Containers, name)
	migrate := container(t, pod.InitContainers, "migrate")
	if !slices.Equal(migrate.Args, []string{"migrate"}) || migrate.Image != worker.Image {
		t.Errorf("init container %s %v: want `migrate` from the worker's image %s", migrate.Image, migrate.Args, worker.Image)
	}
	if !slices.Equal(worker.Args, []string{"run"}) {
		t.Errorf("worker args %v, want [run]", worker.Args)
	}

	// Probes on the metrics port; the HTTP doors on a port of their own.
	var declared []string
	for _, p := range worker.Ports {
		declared = append(declared, p.Name)
	}
	if !slices.Equal(declared, ports) {
		t.Errorf("%s's ports are named %v, want %v", name, declared, ports)
	}
	for _, p := range ports {
		want := namedPorts[p]
		if !portIs(intstr.FromString(p), worker.Ports, want.port) {
			t.Errorf("%s's port named %s is not %d", name, p, want.port)
		}
		if addr := cm.Data[want.setting]; addr != fmt.Sprintf(":%d", want.port) {
			t.Errorf("%s %q, but the port named %s is %d", want.setting, addr, p, want.port)
		}
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

	// The doors' and connectors' secrets: each key mounted from an optional Secret volume, so
	// that the pod starts without it, and a NAME_FILE set in the ConfigMap names its file.
	mounted := map[string]string{} // key -> file in the worker
	for _, m := range worker.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.Secret == nil || m.SubPath != "" {
				continue
			}
			for _, it := range v.Secret.Items {
				if slices.Contains(optionalSecrets, it.Key) {
					if v.Secret.Optional == nil || !*v.Secret.Optional {
						t.Errorf("Secret volume %s holds %s but is not optional: the pods would not start without it", v.Name, it.Key)
					}
					mounted[it.Key] = filepath.Join(m.MountPath, it.Path)
				}
			}
		}
	}
	for _, key := range optionalSecrets {
		file, ok := mounted[key]
		if !ok {
			t.Errorf("%s is not mounted into %s from the Secret: %s_FILE cannot name it", key, name, key)
		}
		if set, isSet := cm.Data[key+"_FILE"]; isSet && set != file {
			t.Errorf("%s_FILE %q, but %s is mounted at %q", key, set, key, file)
		}
	}
}

// checkKnotSecret checks that the worker's Knot secret is a file it re-reads while paused on a
// 401.
func checkKnotSecret(t *testing.T, d *appsv1.Deployment, cm *corev1.ConfigMap) {
	t.Helper()
	file := cm.Data["KNOT_SECRET_FILE"]
	if v := secretFileMounted(d.Spec.Template.Spec, container(t, d.Spec.Template.Spec.Containers, "worker"), file, "KNOT_SECRET"); v == nil {
		t.Errorf("KNOT_SECRET_FILE %q is not a key of a Secret volume mounted (as a whole, without subPath) into the worker", file)
	} else if v.Optional != nil && *v.Optional {
		t.Errorf("the Secret volume %q holding KNOT_SECRET is optional: a pod without it would start and fail every call", v.SecretName)
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

// secretFileMounted returns the Secret volume that puts key at file in container c, or nil.
func secretFileMounted(pod corev1.PodSpec, c *corev1.Container, file, key string) *corev1.SecretVolumeSource {
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
				if it.Path == rel && it.Key == key {
					return v.Secret
				}
			}
		}
	}
	return nil
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

// runHelp is what `erasure-worker run --help` prints, built once for every test that needs it.
var runHelp = sync.OnceValues(func() ([]byte, error) {
	// Built in the service's own module, the repository root: deploy/ is a module apart.
	cmd := exec.Command("go", "run", "./cmd/erasure-worker", "run", "--help")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go run ./cmd/erasure-worker run --help (in ..): %v\n%s", err, stderr.String())
	}
	return out, nil
})

// The settings of issue 11 (the HTTP doors and the reports) that the manifests set or name.
// The manifests come with the service's work on it, and may land first: while `run --help`
// lists none of them they are taken as known (and the test says so); once it lists one, each
// must be listed, like every other setting.
var doorSettings = []string{"API_LISTEN_ADDR", "API_TOKEN_FILE", "REPORT_WEBHOOK_URL", "REPORT_WEBHOOK_SECRET_FILE",
	"KETCH_AUTH_HEADER", "KETCH_AUTH_VALUE_FILE", "KETCH_IDENTITY_SPACE", "TRANSCEND_URL", "TRANSCEND_API_KEY_FILE",
	"TRANSCEND_SOMBRA_KEY_FILE", "TRANSCEND_DATA_SILO_ID", "TRANSCEND_POLL_INTERVAL",
	"FIDES_AUTH_TOKEN_FILE", "FIDES_URL", "ONETRUST_INBOUND_TOKEN_FILE", "ONETRUST_URL", "ONETRUST_CLIENT_ID", "ONETRUST_CLIENT_SECRET_FILE"}

// knownSettings are the environment variables `erasure-worker run --help` lists.
func knownSettings(t *testing.T) map[string]bool {
	t.Helper()
	out, err := runHelp()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, sm := range regexp.MustCompile(`(?m)^\s+(?:--[a-z0-9-]+, )?([A-Z0-9_]+) \(`).FindAllSubmatch(out, -1) {
		m[string(sm[1])] = true
	}
	required := []string{"DATABASE_URL", "KNOT_CLIENT_ID", "KNOT_SECRET", "KNOT_BASE_URL", "SHUTDOWN_TIMEOUT", "LISTEN_ADDR", "KNOT_SECRET_FILE"}
	if slices.ContainsFunc(doorSettings, func(s string) bool { return m[s] }) {
		required = append(append(required, doorSettings...), optionalSecrets...)
	} else {
		t.Logf("run --help lists none of issue 11's settings yet (%s): the manifests' use of them is not checked against it", strings.Join(doorSettings, ", "))
		for _, s := range append(slices.Clone(doorSettings), optionalSecrets...) {
			m[s] = true
		}
	}
	for _, s := range required {
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
	// metrics for Prometheus, api for the privacy request system: apart, so that exposing one
	// never exposes the other.
	worker := container(t, d.Spec.Template.Spec.Containers, "worker")
	targets := map[string]int{}
	for _, p := range svc.Spec.Ports {
		for _, want := range []int{metricsPort, apiPort} {
			if portIs(p.TargetPort, worker.Ports, want) {
				targets[p.Name] = want
			}
		}
	}
	if len(svc.Spec.Ports) != 2 || targets["metrics"] != metricsPort || targets["api"] != apiPort {
		t.Errorf("Service ports %v: want two, metrics targeting %d and api targeting %d", svc.Spec.Ports, metricsPort, apiPort)
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
	checkPolicy(t, np, d, []string{"TCP/443", "TCP/53", "TCP/5432", "UDP/53"})
}

// checkPolicy checks a NetworkPolicy of the pods of d: the HTTP doors and metrics in, from
// anywhere, and only the ports out (protocol/port), HTTPS to public addresses only.
func checkPolicy(t *testing.T, np *networkingv1.NetworkPolicy, d *appsv1.Deployment, out []string) {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("NetworkPolicy podSelector %v does not select the worker pods", np.Spec.PodSelector)
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Errorf("NetworkPolicy policyTypes %v, want [Ingress Egress]", np.Spec.PolicyTypes)
	}
	// A named port is resolved by the names erasure-worker's containers give their ports.
	var named []corev1.ContainerPort
	for n, p := range namedPorts {
		named = append(named, corev1.ContainerPort{Name: n, ContainerPort: int32(p.port)})
	}
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
				for _, n := range []int{metricsPort, apiPort} {
					if portIs(*p.Port, named, n) {
						port = fmt.Sprint(n)
					}
				}
			}
			out = append(out, fmt.Sprintf("%s/%s", proto, port))
		}
		if len(ps) == 0 {
			out = append(out, "any port")
		}
		return out
	}
	var in, lets []string
	for _, r := range np.Spec.Ingress {
		in = append(in, ports(r.Ports)...)
	}
	for _, r := range np.Spec.Egress {
		lets = append(lets, ports(r.Ports)...)
	}
	sort.Strings(in)
	sort.Strings(lets)
	if want := []string{"TCP/8080", "TCP/9090"}; !slices.Equal(in, want) {
		t.Errorf("NetworkPolicy lets in %v, want only %v (the HTTP doors; metrics and probes)", in, want)
	}
	// The doors are called from outside the cluster: their rule admits any source. (The metrics
	// rule is whatever the base says: Prometheus and the kubelet may come from anywhere too.)
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port != nil && portIs(*p.Port, named, apiPort) && len(r.From) != 0 {
				t.Errorf("NetworkPolicy lets the api port in only from %v: the privacy request system calls from outside", r.From)
			}
		}
	}
	if !slices.Equal(lets, out) {
		t.Errorf("NetworkPolicy %s lets out %v, want only %v", np.Name, lets, out)
	}
	// HTTPS goes to public addresses only, as the worker lets a Ketch callback go: never to
	// loopback, private, link-local (the metadata service), CGNAT or multicast ones.
	for _, r := range np.Spec.Egress {
		if len(r.Ports) != 1 || r.Ports[0].Port == nil || r.Ports[0].Port.IntValue() != 443 {
			continue
		}
		var excepted []string
		for _, peer := range r.To {
			if peer.IPBlock != nil {
				excepted = append(excepted, peer.IPBlock.Except...)
			}
		}
		for _, private := range []string{"10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
			"100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10"} {
			if !slices.Contains(excepted, private) {
				t.Errorf("NetworkPolicy lets HTTPS out to %s", private)
			}
		}
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
