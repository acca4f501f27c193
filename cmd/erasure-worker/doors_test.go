package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erasure-worker/erasure-worker/connector"
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

// A door's refusal closes the connection at once through the counter's wrapper too, though the
// sender announced a body it never sends (connector.CloseAfter reaches the connection through
// Unwrap): else each such sender holds one of API_MAX_CONNECTIONS until ReadTimeout.
func TestACountedRefusalClosesWithoutWaitingForTheBody(t *testing.T) {
	t.Parallel()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "erasure_api_requests_total"}, []string{"door", "code"})
	refuse := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		connector.CloseAfter(w)
		connector.WriteRaw(w, http.StatusUnauthorized, []byte("{}\n"))
	})
	srv := httptest.NewUnstartedServer(counted(requests.MustCurryWith(prometheus.Labels{"door": "api"}), refuse))
	srv.Config.ReadTimeout = time.Minute
	srv.Start()
	t.Cleanup(srv.Close)

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "POST /v1/erasure-requests HTTP/1.1\r\nHost: door\r\nContent-Length: 102400\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("answer %v, %v: want 401", resp, err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("the connection was not closed after the refusal: %v", err)
	}
}
