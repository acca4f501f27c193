package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A request whose sender went away before it was answered is counted as abandoned, not as a
// 200 that reads like success.
func TestAnAbandonedDoorRequestIsNotCountedAsSuccess(t *testing.T) {
	t.Parallel()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "erasure_api_requests_total"}, []string{"door", "code"})
	door := requests.MustCurryWith(prometheus.Labels{"door": "api"})
	silent := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}) // as a door does once its sender is gone
	answered := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	counted(door, silent).ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, "POST", "/v1/erasure-requests", nil))
	counted(door, answered).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/v1/erasure-requests", nil))

	for code, want := range map[string]float64{"abandoned": 1, "202": 1, "200": 0} {
		if got := testutil.ToFloat64(requests.WithLabelValues("api", code)); got != want {
			t.Errorf("code %s counted %v, want %v", code, got, want)
		}
	}
}
