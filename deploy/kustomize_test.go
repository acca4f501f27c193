package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The overlays and what each promises.
type overlay struct {
	name, namespace, knotURL string
	replicas                 int32
}

var overlays = []overlay{
	{"development", "erasure-worker-dev", "https://development.knotapi.com", 1},
	{"production", "erasure-worker", "https://production.knotapi.com", 3},
}

const (
	metricsPort = 9090
	apiPort     = 8080 // API_LISTEN_ADDR: the HTTP doors the privacy request system calls
)

// Settings that are secret: never in a ConfigMap.
var secretSettings = []string{"DATABASE_URL", "KNOT_CLIENT_ID", "KNOT_SECRET",
	"API_TOKEN", "REPORT_WEBHOOK_SECRET", "KETCH_AUTH_VALUE", "TRANSCEND_API_KEY", "TRANSCEND_SOMBRA_KEY",
	"FIDES_AUTH_TOKEN", "ONETRUST_INBOUND_TOKEN", "ONETRUST_CLIENT_SECRET"}

// The secrets of the doors and connectors (issue 11): each off while its key is missing from the
// Secret, so the base must apply without them.
var optionalSecrets = []string{"API_TOKEN", "REPORT_WEBHOOK_SECRET", "KETCH_AUTH_VALUE", "TRANSCEND_API_KEY", "TRANSCEND_SOMBRA_KEY",
	"FIDES_AUTH_TOKEN", "ONETRUST_INBOUND_TOKEN", "ONETRUST_CLIENT_SECRET"}

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
	ingresses       []*networkingv1.Ingress
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

func overlayDir(name string) string { return filepath.Join("kubernetes", "overlays", name) }

// render builds an overlay with the kustomize library (what `kubectl kustomize` runs) and decodes
// every object strictly.
func render(t *testing.T, overlay string) *rendered {
	t.Helper()
	return renderFS(t, filesys.MakeFsOnDisk(), overlayDir(overlay))
}

// renderProductionWith renders the production overlay with lines of its kustomization turned
// on as its comments say (each pair: the commented line, the line on), and checks its objects.
// It fails when a commented line is no longer there: what names what they turn on.
func renderProductionWith(t *testing.T, what string, on [][2]string) *rendered {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	for _, dir := range []string{"kubernetes", "grafana"} { // the base includes ../../grafana
		copyInto(t, mem, dir)
	}
	k := filepath.Join("/deploy", overlayDir("production"), "kustomization.yaml")
	b, err := mem.ReadFile(k)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range on {
		if !bytes.Contains(b, []byte(line[0])) {
			t.Fatalf("%s no longer holds the line that turns on %s, commented: %q", overlayDir("production"), what, line[0])
		}
		b = bytes.Replace(b, []byte(line[0]), []byte(line[1]), 1)
	}
	if err := mem.WriteFile(k, b); err != nil {
		t.Fatal(err)
	}
	r := renderFS(t, mem, filepath.Join("/deploy", overlayDir("production")))
	if t.Failed() {
		t.FailNow()
	}
	checkObjects(t, r, "erasure-worker")
	return r
}

// renderFS builds the kustomization in dir of fs.
func renderFS(t *testing.T, fs filesys.FileSystem, dir string) *rendered {
	t.Helper()
	overlay := dir
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
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
		case "networking.k8s.io/v1 Ingress":
			obj = appendNew(&out.ingresses)
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

// --- the overlays ------------------------------------------------------------------------------

func TestOverlaysRenderWithKubectl(t *testing.T) {
	// kubectl is optional, under CI too: TestOverlays renders with the kustomize library that
	// kubectl carries, and this only checks that kubectl's copy renders the same objects.
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
			checkOverlay(t, r, o, settings)
			// The Ingress is the operator's choice (components/api-ingress), never the default.
			if len(r.ingresses) != 0 {
				t.Errorf("%d Ingress objects rendered: the api port is exposed only by components/api-ingress, when an overlay turns it on", len(r.ingresses))
			}
		})
	}
}

// checkOverlay checks what every rendering of an overlay promises.
func checkOverlay(t *testing.T, r *rendered, o overlay, settings map[string]bool) {
	t.Helper()
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
	for _, s := range r.ingresses {
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
