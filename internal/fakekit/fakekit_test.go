package fakekit

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type testFaults struct {
	ErrorRate   float64   `json:"error_rate"`
	RetryAfter  Duration  `json:"retry_after"`
	OutageUntil time.Time `json:"outage_until,omitzero"`
}

func (f testFaults) Validate() error { return Validate("", f) }

func TestValidateNamesTheField(t *testing.T) {
	t.Parallel()
	type faults struct {
		ErrorRate    float64  `json:"error_rate"`
		HangRate     float64  `json:"hang_rate"`
		ConflictRate float64  `json:"conflict_rate"`
		Latency      Duration `json:"latency"`
	}
	tests := []struct {
		door   string
		faults faults
		want   string
	}{
		{"", faults{ErrorRate: 1.5}, "error_rate must be between 0 and 1"},
		{"pull", faults{HangRate: -0.1}, "pull.hang_rate must be between 0 and 1"},
		{"report", faults{ErrorRate: 0.7, ConflictRate: 0.7}, "report: fault rates add up to"},
		{"", faults{Latency: Duration(-time.Second)}, "latency must not be negative"},
		{"", faults{ErrorRate: 0.5, HangRate: 0.5}, ""},
	}
	for _, tt := range tests {
		err := Validate(tt.door, tt.faults)
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%q, %+v) = %v, want %q", tt.door, tt.faults, err, tt.want)
		}
	}
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	resets := 0
	wire := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	a := NewAdmin(testFaults{}, AdminOptions{Wire: wire, Stats: func() any { return map[string]int{"calls": 1} },
		Reset: func() { resets++ }, Now: func() time.Time { return now }})
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	do := func(method, path, body string) (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}

	if code, _, body := do("PUT", "/_fake/faults", `{"error_rate":0.5,"retry_after":"2s","outage_for":"30s"}`); code != 200 {
		t.Fatalf("PUT faults: %d %s", code, body)
	}
	if f := a.Faults(); f != (testFaults{ErrorRate: 0.5, RetryAfter: Duration(2 * time.Second), OutageUntil: now.Add(30 * time.Second)}) {
		t.Errorf("faults %+v", f)
	}
	for body, want := range map[string]string{
		`{"eror_rate":1}`:       `unknown field \"eror_rate\"`,
		`{"error_rate":2}`:      "error_rate must be between 0 and 1",
		`{"retry_after":5}`:     "retry_after: duration must be a string",
		`{"outage_for":"-1s"}`:  "outage_for must not be negative",
		`{"error_rate":0.1} {}`: "trailing data",
		`{"error_rate":`:        "body",
	} {
		if code, _, got := do("PUT", "/_fake/faults", body); code != 400 || !strings.Contains(got, want) || !strings.HasPrefix(got, `{"message":`) {
			t.Errorf("PUT %s: %d %s, want 400 with %q", body, code, got, want)
		}
	}
	if a.Faults().ErrorRate != 0.5 {
		t.Errorf("a refused PUT changed the faults: %+v", a.Faults())
	}
	if code, _, body := do("GET", "/_fake/stats", ""); code != 200 || body != `{"calls":1}` {
		t.Errorf("stats: %d %s", code, body)
	}
	if code, _, body := do("POST", "/_fake/reset", ""); code != 200 || body != `{"message":"reset"}` || resets != 1 {
		t.Errorf("reset: %d %s, %d resets", code, body, resets)
	}
	if code, h, body := do("PUT", "/_fake/stats", ""); code != 405 || h.Get("Allow") != "GET" || body != `{"message":"Method Not Allowed"}` {
		t.Errorf("PUT stats: %d Allow %q %s", code, h.Get("Allow"), body)
	}
	if code, h, body := do("GET", "/_fake/nope", ""); code != 404 || body != `{"message":"Not Found"}` || h.Get("Content-Type") != "application/json" {
		t.Errorf("unknown admin path: %d %s", code, body)
	}
	if code, _, _ := do("GET", "/anything", ""); code != http.StatusTeapot {
		t.Errorf("a call outside /_fake/ did not reach the wire: %d", code)
	}
}

func TestRollGivesEachKindItsShare(t *testing.T) {
	t.Parallel()
	rates := Rates{"hang": 0.1, "rate_limit": 0.2, "error": 0.3}
	counts := map[string]int{}
	const n = 1000
	for i := range n {
		counts[Roll(rates, (float64(i)+0.5)/n)]++
	}
	for k, want := range map[string]int{"hang": 100, "rate_limit": 200, "error": 300, "": 400} {
		if counts[k] != want {
			t.Errorf("%q: %d of %d, want %d", k, counts[k], n, want)
		}
	}
}
