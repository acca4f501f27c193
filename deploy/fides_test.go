package deploy

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The types below mirror Fides' schema of a custom SaaS integration, field for field, so that
// decodeStrict refuses a key Fides does not know (its SaaSRequest forbids extra fields):
// src/fides/api/schemas/saas/saas_config.py (SaaSConfig, ConnectorParam, ClientConfig, Strategy,
// Endpoint, SaaSRequestMap, SaaSRequest, ReadSaaSRequest, Header, QueryParam, ParamValue),
// src/fides/api/schemas/saas/async_polling_configuration.py (PollingStatusRequest), and
// fideslang's Dataset for erasure_worker_dataset.yml. Fields Fides requires carry no omitempty
// and are checked by name in requiredSaaSConfig.

type fidesFile struct {
	SaaSConfig fidesSaaSConfig `json:"saas_config"`
}

type fidesSaaSConfig struct {
	FidesKey              string             `json:"fides_key"`
	Name                  string             `json:"name"`
	Type                  string             `json:"type"`
	Description           string             `json:"description"`
	Version               string             `json:"version"`
	ConnectorParams       []fidesParam       `json:"connector_params"`
	ExternalReferences    []map[string]any   `json:"external_references,omitempty"`
	ClientConfig          *fidesClientConfig `json:"client_config"`
	Endpoints             []fidesEndpoint    `json:"endpoints"`
	TestRequest           *fidesRequest      `json:"test_request"`
	DataProtectionRequest *fidesRequest      `json:"data_protection_request,omitempty"`
	RateLimitConfig       map[string]any     `json:"rate_limit_config,omitempty"`
	ConsentRequests       map[string]any     `json:"consent_requests,omitempty"`
	UserGuide             string             `json:"user_guide,omitempty"`
	DisplayInfo           map[string]any     `json:"display_info,omitempty"`
}

type fidesParam struct {
	Name          string   `json:"name"`
	Label         string   `json:"label,omitempty"`
	Options       []string `json:"options,omitempty"`
	DefaultValue  any      `json:"default_value,omitempty"`
	Multiselect   bool     `json:"multiselect,omitempty"`
	Description   string   `json:"description,omitempty"`
	Sensitive     bool     `json:"sensitive,omitempty"`
	Type          string   `json:"type,omitempty"`
	AllowedValues []string `json:"allowed_values,omitempty"`
}

type fidesClientConfig struct {
	Protocol       string         `json:"protocol"`
	Host           string         `json:"host"`
	Authentication *fidesStrategy `json:"authentication,omitempty"`
}

type fidesStrategy struct {
	Strategy      string         `json:"strategy"`
	Configuration map[string]any `json:"configuration,omitempty"`
}

type fidesEndpoint struct {
	Name     string `json:"name"`
	Requests struct {
		Read   *fidesRequest `json:"read"`
		Update *fidesRequest `json:"update,omitempty"`
		Delete *fidesRequest `json:"delete,omitempty"`
	} `json:"requests"`
	SkipProcessing bool     `json:"skip_processing,omitempty"`
	After          []string `json:"after,omitempty"`
	EraseAfter     []string `json:"erase_after,omitempty"`
}

// fidesRequest is SaaSRequest, with ReadSaaSRequest's output and PollingStatusRequest's status
// fields (the only differences of those subclasses).
type fidesRequest struct {
	RequestOverride        string             `json:"request_override,omitempty"`
	Path                   string             `json:"path,omitempty"`
	Method                 string             `json:"method,omitempty"`
	Headers                []fidesNameValue   `json:"headers,omitempty"`
	QueryParams            []fidesNameValue   `json:"query_params,omitempty"`
	Body                   string             `json:"body,omitempty"`
	ParamValues            []fidesParamValue  `json:"param_values,omitempty"`
	ClientConfig           *fidesClientConfig `json:"client_config,omitempty"`
	DataPath               string             `json:"data_path,omitempty"`
	Postprocessors         []fidesStrategy    `json:"postprocessors,omitempty"`
	Pagination             *fidesStrategy     `json:"pagination,omitempty"`
	GroupedInputs          []string           `json:"grouped_inputs,omitempty"`
	IgnoreErrors           any                `json:"ignore_errors,omitempty"`
	RateLimitConfig        map[string]any     `json:"rate_limit_config,omitempty"`
	AsyncConfig            *fidesStrategy     `json:"async_config,omitempty"`
	SkipMissingParamValues bool               `json:"skip_missing_param_values,omitempty"`
	CorrelationIDPath      string             `json:"correlation_id_path,omitempty"`
	Output                 string             `json:"output,omitempty"`
	StatusPath             string             `json:"status_path,omitempty"`
	StatusCompletedValue   any                `json:"status_completed_value,omitempty"`
}

type fidesNameValue struct {
	Name  string `json:"name"`
	Value any    `json:"value"`
}

type fidesParamValue struct {
	Name           string `json:"name"`
	Identity       string `json:"identity,omitempty"`
	References     []any  `json:"references,omitempty"`
	ConnectorParam string `json:"connector_param,omitempty"`
	Unpack         bool   `json:"unpack,omitempty"`
}

type fidesDatasetFile struct {
	Dataset []struct {
		FidesKey    string `json:"fides_key"`
		Name        string `json:"name,omitempty"`
		Description string `json:"description,omitempty"`
		Collections []struct {
			Name   string       `json:"name"`
			Fields []fidesField `json:"fields"`
		} `json:"collections"`
	} `json:"dataset"`
}

type fidesField struct {
	Name           string   `json:"name"`
	DataCategories []string `json:"data_categories,omitempty"`
	FidesopsMeta   *struct {
		PrimaryKey bool   `json:"primary_key,omitempty"`
		DataType   string `json:"data_type,omitempty"`
		ReadOnly   bool   `json:"read_only,omitempty"`
		Identity   string `json:"identity,omitempty"`
	} `json:"fidesops_meta,omitempty"`
	Fields []fidesField `json:"fields,omitempty"`
}

// readFides decodes one of deploy/fides's files strictly.
func readFides(t *testing.T, name string, into any) string {
	t.Helper()
	b, err := os.ReadFile("fides/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if err := decodeStrict(b, into); err != nil {
		t.Fatalf("%s is not what Fides' schema takes: %v", name, err)
	}
	return string(b)
}

// The uploaded zip must hold one file ending in config.yml and one in dataset.yml
// (connector_registry_service.py, save_template).
func TestFidesIntegrationFilesAreNamedAsFidesLooksForThem(t *testing.T) {
	for _, name := range []string{"erasure_worker_config.yml", "erasure_worker_dataset.yml"} {
		if _, err := os.Stat("fides/" + name); err != nil {
			t.Error(err)
		}
	}
}

func TestFidesSaaSConfigHasWhatFidesRequires(t *testing.T) {
	var f fidesFile
	text := readFides(t, "erasure_worker_config.yml", &f)
	c := f.SaaSConfig
	// SaaSConfig's required fields (saas_config.py; compare the fixture
	// tests/fixtures/saas/test_data/saas_async_callback_config.yml).
	requiredSaaSConfig := map[string]bool{
		"fides_key": c.FidesKey != "", "name": c.Name != "", "type": c.Type != "", "description": c.Description != "",
		"version": c.Version != "", "connector_params": len(c.ConnectorParams) > 0, "client_config": c.ClientConfig != nil,
		"endpoints": len(c.Endpoints) > 0, "test_request": c.TestRequest != nil,
	}
	for field, present := range requiredSaaSConfig {
		if !present {
			t.Errorf("saas_config.%s is required by Fides", field)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if c.FidesKey != "<instance_fides_key>" || c.Type != strings.ToLower(c.Type) {
		t.Errorf("fides_key %q and type %q: an uploaded template uses <instance_fides_key>, and Fides lowercases the type", c.FidesKey, c.Type)
	}
	params := map[string]fidesParam{}
	for _, p := range c.ConnectorParams {
		params[p.Name] = p
	}
	cc := c.ClientConfig
	if cc.Protocol != "https" || cc.Host != "<domain>" || params["domain"].Name == "" {
		t.Errorf("client_config %+v: want https to the domain connector param", cc)
	}
	if a := cc.Authentication; a == nil || a.Strategy != "bearer" || a.Configuration["token"] != "<token>" || !params["token"].Sensitive {
		t.Errorf("authentication %+v: want bearer with the token connector param, marked sensitive", a)
	}
	if tr := c.TestRequest; tr.Method != "GET" || !strings.HasPrefix(tr.Path, "/v1/fides/erasures/") {
		t.Errorf("test_request %+v: want a GET of the status route", tr)
	}

	if len(c.Endpoints) != 1 {
		t.Fatalf("%d endpoints, want one", len(c.Endpoints))
	}
	e := c.Endpoints[0]
	read, update := e.Requests.Read, e.Requests.Update
	// ReadSaaSRequest.validate_request: a path or an output; ours makes no call.
	if read == nil || read.Output == "" || read.Path != "" || !identityParam(read, "external_id") {
		t.Errorf("read %+v: want an output template bound to the external_id identity, and no path", read)
	}
	if update == nil || update.Method != "POST" || update.Path != "/v1/fides/erasures" || !identityParam(update, "external_id") {
		t.Fatalf("update %+v: want POST /v1/fides/erasures bound to the external_id identity", update)
	}
	body := regexp.MustCompile(`\s+`).ReplaceAllString(update.Body, "")
	if body != `{"privacy_request_id":"<privacy_request_id>","external_user_id":"<external_id>"}` {
		t.Errorf("update body %s: want the door's two fields", update.Body)
	}
	headers := map[string]any{}
	for _, h := range update.Headers {
		headers[h.Name] = h.Value
	}
	if headers["reply-to"] != "<reply_to>" || headers["reply-to-token"] != "<reply_to_token>" || len(headers) != 2 {
		t.Errorf("update headers %v: want reply-to and reply-to-token templated as saas_async_callback_config.yml does", headers)
	}
	if a := update.AsyncConfig; a == nil || a.Strategy != "callback" {
		t.Errorf("update async_config %+v: want the callback strategy", a)
	}

	// The commented polling alternative is valid too, once uncommented in place of the callback.
	block := regexp.MustCompile(`(?s)# BEGIN POLLING ALTERNATIVE\n(.*?)\n\s*# END POLLING ALTERNATIVE`).FindStringSubmatch(text)
	if block == nil {
		t.Fatal("the polling alternative is missing")
	}
	uncommented := regexp.MustCompile(`(?m)^\s*# ?`).ReplaceAllString(block[1], "")
	var polling struct {
		AsyncConfig struct {
			Strategy      string `json:"strategy"`
			Configuration struct {
				StatusRequest fidesRequest  `json:"status_request"`
				ResultRequest *fidesRequest `json:"result_request,omitempty"`
			} `json:"configuration"`
		} `json:"async_config"`
		CorrelationIDPath string `json:"correlation_id_path"`
	}
	if err := decodeStrict([]byte(uncommented), &polling); err != nil {
		t.Fatalf("the polling alternative: %v\n%s", err, uncommented)
	}
	sr := polling.AsyncConfig.Configuration.StatusRequest
	if polling.AsyncConfig.Strategy != "polling" || polling.CorrelationIDPath != "correlation_id" || sr.Method != "GET" ||
		sr.Path != "/v1/fides/erasures/<correlation_id>" || sr.StatusPath != "status" || sr.StatusCompletedValue != "completed" {
		t.Errorf("the polling alternative %+v: want the status route, status_path status, completed", polling)
	}
}

func identityParam(r *fidesRequest, identity string) bool {
	for _, p := range r.ParamValues {
		if p.Identity == identity && strings.Contains(r.Output+r.Body, "<"+p.Name+">") {
			return true
		}
	}
	return false
}

func TestFidesDatasetHasTheEndpointsCollectionWithAPrimaryKey(t *testing.T) {
	var cfg fidesFile
	readFides(t, "erasure_worker_config.yml", &cfg)
	var d fidesDatasetFile
	readFides(t, "erasure_worker_dataset.yml", &d)
	if len(d.Dataset) != 1 || d.Dataset[0].FidesKey != cfg.SaaSConfig.FidesKey {
		t.Fatalf("want one dataset with the config's fides_key, got %+v", d.Dataset)
	}
	cols := d.Dataset[0].Collections
	if len(cols) != 1 || cols[0].Name != cfg.SaaSConfig.Endpoints[0].Name {
		t.Fatalf("want one collection named as the endpoint %q, got %+v", cfg.SaaSConfig.Endpoints[0].Name, cols)
	}
	var pk bool
	for _, f := range cols[0].Fields {
		if f.FidesopsMeta != nil && f.FidesopsMeta.PrimaryKey {
			pk = pk || (f.Name == "external_id" && len(f.DataCategories) > 0 && !f.FidesopsMeta.ReadOnly)
		}
	}
	if !pk {
		t.Error("an erasure needs a primary key: external_id, with a data category, not read-only (Fides masks only what it may)")
	}
}
